"""Helpers shared by the bundle jobs: output-folder checks, atomic CSV tables, the code version, failure logs."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch

from pipeline.evaluation.tracking import RunTerminated, describe_error, resolve_tracking_uri

logger = logging.getLogger(__name__)


def check_config_path(path: str | os.PathLike[str], option: str) -> Path:
    """Raise when ``path`` does not exist and looks like a path whose ``#`` MONAI's config parser replaced.

    MONAI's bundle config parser (1.6) turns every ``#`` in a string value into ``::``, its id
    separator, so ``--dataset_dir site#2`` reaches the job as ``site::2``.

    Raises:
        FileNotFoundError: ``path`` contains ``::`` and does not exist; the message gives the fix.
    """
    path = Path(path)
    if "::" in str(path) and not path.exists():
        raise FileNotFoundError(
            f"--{option} {path} does not exist. MONAI's bundle config parser turns every '#' in an option into '::', "
            f"so a path given as {str(path).replace('::', '#')} arrives like this. Pass a path without '#': rename "
            "the folder, or make a link to it under a name without '#'."
        )
    return path


def check_writable_folder(path: str | os.PathLike[str], option: str) -> Path:
    """Create ``path`` if needed and check that files can be written in it, before any work starts.

    Raises:
        FileNotFoundError: ``path`` is a path whose ``#`` MONAI's config parser replaced, see
            :func:`check_config_path`.
        PermissionError: the folder cannot be created or written; the message names the option to change.
    """
    path = check_config_path(path, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as error:
        raise PermissionError(
            f"cannot write to the {option} folder {path} ({error.strerror or error}); pass a writable folder "
            f"with --{option}."
        ) from error
    return path


def check_device(device: str | torch.device) -> torch.device:
    """Return ``device`` as a torch device, or raise a ValueError when it does not exist on this machine."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was given but this machine has no CUDA GPU; pass --device cpu.")
    return device


@contextlib.contextmanager
def report_failure(job: str, on_stop: str = "") -> Iterator[None]:
    """Log one ERROR line with the cause when ``job`` fails, then let the exception propagate.

    Works as a context manager and as a decorator. ``job`` names what failed, for example
    ``"inference job"``.

    MONAI's bundle runner wraps every error in ``RuntimeError: Failed to evaluate ...``, so this
    line, printed just before the traceback, is where the user reads what went wrong. An error
    that MONAI's data loading wrapped (``RuntimeError: applying transform ...``) is reported by
    its cause alone, and a full disk gets the advice to free space. An interruption (Ctrl-C, or
    SIGTERM inside an MLflow run) is logged as a stop, followed by ``on_stop``: what to do next.
    """
    try:
        yield
    except Exception as error:
        logger.error("The %s failed: %s", job, _failure_message(error))
        raise
    except (KeyboardInterrupt, RunTerminated) as error:
        reason = str(error) or "Ctrl-C (SIGINT)"
        logger.error("The %s was stopped: %s. %s", job, reason, on_stop or "Run the same command again.")
        raise


# errno values of a write that found no room: disk full, quota exceeded, file size limit.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _failure_message(error: BaseException) -> str:
    chain = [error]
    while (chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 50:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    no_room = next((link for link in chain if isinstance(link, OSError) and link.errno in _NO_ROOM), None)
    if no_room is not None:
        where = f" while writing {no_room.filename}" if no_room.filename else ""
        return (
            f"no room left on the disk{where} ({no_room.strerror}). Free space on that disk or point the output options "
            "(--output_dir, --models_dir, --cache_dir) at another disk, then run again; files already written are "
            "complete, because every output is written to a temporary file and renamed."
        )
    wrapped = [link for link in chain if not (isinstance(link, RuntimeError) and str(link).startswith("applying transform"))]
    reported = wrapped[0] if wrapped else error
    return describe_error(type(reported), reported)


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` to ``path`` through a temporary file, so a reader never sees half a table.

    When the write fails (a full disk, for example) the temporary file is removed and an older
    ``path`` is left as it was.
    """
    partial = path.with_name(path.name + ".partial")
    try:
        frame.to_csv(partial, index=False, float_format="%.6g", lineterminator="\n")
        os.replace(partial, path)
    except BaseException as error:
        partial.unlink(missing_ok=True)
        _name_the_file(error, path)
        raise
    return path


def write_text(text: str, path: Path) -> Path:
    """Write UTF-8 ``text`` to ``path`` through a temporary file, like :func:`write_csv`."""
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    except BaseException as error:
        partial.unlink(missing_ok=True)
        _name_the_file(error, path)
        raise
    return path


def _name_the_file(error: BaseException, path: Path) -> None:
    """Record ``path`` on an OSError that does not name its file (a failed ``write`` does not)."""
    if isinstance(error, OSError) and error.filename is None:
        error.filename = str(path)


def code_version() -> str:
    """Return the git commit of the working tree (with ``+dirty`` when it has changes), or ``unknown``."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def tracking_uri_for(store: str | os.PathLike[str]) -> str:
    """Return the MLflow tracking URI: ``MLFLOW_TRACKING_URI`` when set, else the SQLite file ``store``.

    The store's folder is checked first, because MLflow retries a SQLite file it cannot create
    for about 100 s and then reports only "unable to open database file".
    """
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        check_writable_folder(Path(store).parent, "output_dir")
    return resolve_tracking_uri(store)
