"""Output files of the bundle jobs under faults: a full disk, an unusable output folder, wrapped errors.

A full disk is reproduced with the process's file size limit (``RLIMIT_FSIZE``, with ``SIGXFSZ``
ignored). A write past the limit then fails with ``EFBIG``, as it would with ``ENOSPC`` on a full
disk, and nothing outside the test's folder is touched.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import signal
from collections.abc import Iterator

import pandas as pd
import pytest

from pipeline.evaluation.tracking import TrackedRun, TrackingStoreError
from pipeline.workflows.cohort_data import SubjectDataError
from pipeline.workflows.run_files import check_writable_folder, report_failure, write_csv, write_text


@contextlib.contextmanager
def file_size_limit(size: int) -> Iterator[None]:
    """Make every write past ``size`` bytes fail with EFBIG in this process, until the block ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)


def big_table(rows: int = 20000) -> pd.DataFrame:
    return pd.DataFrame({"subject_id": [f"sub-{index:05d}" for index in range(rows)], "score": range(rows)})


def test_full_disk_keeps_previous_table(tmp_path):
    path = tmp_path / "results.csv"
    write_csv(pd.DataFrame({"method": ["discard"], "auc": [0.75]}), path)
    before = path.read_bytes()

    with file_size_limit(4096), pytest.raises(OSError) as raised:
        write_csv(big_table(), path)

    assert raised.value.errno == errno.EFBIG
    assert path.read_bytes() == before
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["results.csv"]


def test_full_disk_text_leaves_nothing(tmp_path):
    with file_size_limit(4096), pytest.raises(OSError):
        write_text("x" * 100_000, tmp_path / "config.json")
    assert list(tmp_path.iterdir()) == []


def test_full_disk_report_names_file(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="pipeline.workflows.run_files")

    with file_size_limit(4096), pytest.raises(OSError), report_failure("inference job"):
        write_csv(big_table(), tmp_path / "subjects.csv")

    (message,) = [record.getMessage() for record in caplog.records]
    assert message.startswith("The inference job failed: no room left on the disk while writing")
    assert str(tmp_path / "subjects.csv") in message
    assert "--output_dir" in message


def test_full_disk_names_mlflow_store(tmp_path):
    store = tmp_path / "mlruns.db"

    with file_size_limit(64 * 1024), pytest.raises(TrackingStoreError) as raised:
        with TrackedRun("cad_dymo", "full-disk", f"sqlite:///{store}"):
            pass

    message = str(raised.value)
    assert str(store) in message
    assert "free space" in message
    assert "--tracking_store" in message


def test_uncreatable_output_folder_named(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the output folder should go\n")

    with pytest.raises(PermissionError) as raised:
        check_writable_folder(blocker / "eval", "output_dir")

    assert str(blocker / "eval") in str(raised.value)
    assert "--output_dir" in str(raised.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_named(tmp_path):
    folder = tmp_path / "eval"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="--output_dir"):
            check_writable_folder(folder, "output_dir")
    finally:
        folder.chmod(0o700)


def test_monai_wrapped_error_reported_by_cause(caplog):
    caplog.set_level(logging.ERROR, logger="pipeline.workflows.run_files")
    cause = SubjectDataError("subject sub-001, column 'cine_path' of manifest.csv: cannot read the image data")

    with pytest.raises(RuntimeError), report_failure("training job"):
        raise RuntimeError("applying transform <bound method SplitLoader._load_subject>") from cause

    (message,) = [record.getMessage() for record in caplog.records]
    assert message == f"The training job failed: SubjectDataError: {cause}"


def test_stop_is_reported_with_advice(caplog):
    caplog.set_level(logging.ERROR, logger="pipeline.workflows.run_files")

    with pytest.raises(KeyboardInterrupt), report_failure("training job", on_stop="Run it again to resume."):
        raise KeyboardInterrupt

    (message,) = [record.getMessage() for record in caplog.records]
    assert message == "The training job was stopped: Ctrl-C (SIGINT). Run it again to resume."
