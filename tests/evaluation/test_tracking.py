"""Tests of MLflow run tracking against SQLite stores under the test's temporary folder.

Creating a SQLite store runs MLflow's migrations (about 1-2 s), so most tests share one store.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.evaluation import TrackedRun, resolve_tracking_uri
from pipeline.evaluation.tracking import ERROR_TAG, MAX_ERROR_TAG_LENGTH, RunTerminated


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, str]:
    """Return the path and URI of one SQLite store shared by this module's tests."""
    database = tmp_path_factory.mktemp("tracking") / "store" / "mlruns.db"
    return database, f"sqlite:///{database}"


@pytest.fixture(scope="module")
def client(store) -> MlflowClient:
    return MlflowClient(tracking_uri=store[1])


def test_run_finished_with_params_metrics_artifact(store, client, tmp_path) -> None:
    database, uri = store
    report = tmp_path / "report.txt"
    report.write_text("auc 0.8\n")

    with TrackedRun("finished", "run-a", uri, tags={"cohort": "toy"}) as run:
        run.log_params({"gamma": 0.3, "method": "dymo"})
        run.log_metric("auc", 0.7, step=0)
        run.log_metric("auc", 0.8, step=1)
        run.log_metrics({"accuracy": 0.6, "auc_low": 0.5}, step=1)
        run.log_artifact(report, artifact_path="reports")
        run.set_tag("stage", 2)

    stored = client.get_run(run.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.info.run_name == "run-a"
    assert stored.info.experiment_id == run.experiment_id
    assert stored.data.params == {"gamma": "0.3", "method": "dymo"}
    assert stored.data.tags["cohort"] == "toy"
    assert stored.data.tags["stage"] == "2"
    assert ERROR_TAG not in stored.data.tags
    assert stored.data.metrics == {"auc": 0.8, "accuracy": 0.6, "auc_low": 0.5}
    history = client.get_metric_history(run.run_id, "auc")
    assert sorted((metric.step, metric.value) for metric in history) == [(0, 0.7), (1, 0.8)]
    assert [artifact.path for artifact in client.list_artifacts(run.run_id, "reports")] == ["reports/report.txt"]
    assert run.tracking_uri == uri
    assert database.exists()


def test_artifacts_stored_next_to_database(store, client, tmp_path, monkeypatch) -> None:
    database, uri = store
    monkeypatch.chdir(tmp_path)
    (tmp_path / "figure.png").write_bytes(b"png")

    with TrackedRun("artifacts here/1", "run-b", uri) as run:
        run.log_artifact("figure.png")

    folder = database.parent / "mlartifacts" / "artifacts_here_1"
    assert client.get_experiment(run.experiment_id).artifact_location == folder.as_uri()
    assert (folder / run.run_id / "artifacts" / "figure.png").read_bytes() == b"png"
    assert not (tmp_path / "mlruns").exists()
    assert not (tmp_path / "mlartifacts").exists()


def test_artifact_folder_logged(store, client, tmp_path) -> None:
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.png").write_bytes(b"a")

    with TrackedRun("finished", "folder", store[1]) as run:
        run.log_artifact(tmp_path / "plots")

    assert [artifact.path for artifact in client.list_artifacts(run.run_id, "plots")] == ["plots/a.png"]


def test_exception_marks_run_failed(store, client) -> None:
    tracked = TrackedRun("failing", "run-c", store[1])

    with pytest.raises(RuntimeError, match="imputer diverged"):
        with tracked as run:
            run.log_metric("auc", 0.5, step=0)
            raise RuntimeError("imputer diverged")

    stored = client.get_run(tracked.run_id)
    assert stored.info.status == "FAILED"
    assert stored.data.tags[ERROR_TAG] == "RuntimeError: imputer diverged"
    assert stored.data.metrics == {"auc": 0.5}


def test_failed_run_tag_names_root_cause(store, client) -> None:
    tracked = TrackedRun("failing", "run-cause", store[1])

    with pytest.raises(RuntimeError):
        with tracked:
            try:
                raise OSError("/cohort/images/s1.nii.gz: cannot read the image data")
            except OSError as error:
                raise RuntimeError("applying transform LoadModalityImaged") from error

    tag = client.get_run(tracked.run_id).data.tags[ERROR_TAG]
    assert tag.startswith("RuntimeError: applying transform LoadModalityImaged")
    assert tag.endswith("(caused by OSError: /cohort/images/s1.nii.gz: cannot read the image data)")


def test_sigterm_marks_run_failed_and_restores_handler(store, client) -> None:
    tracked = TrackedRun("failing", "run-sigterm", store[1])
    before = signal.getsignal(signal.SIGTERM)

    with pytest.raises(RunTerminated, match="SIGTERM"):
        with tracked:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)

    stored = client.get_run(tracked.run_id)
    assert stored.info.status == "FAILED"
    assert "SIGTERM" in stored.data.tags[ERROR_TAG]
    assert signal.getsignal(signal.SIGTERM) == before


def test_keyboard_interrupt_marks_run_failed(store, client) -> None:
    tracked = TrackedRun("failing", "run-d", store[1])

    with pytest.raises(KeyboardInterrupt):
        with tracked:
            raise KeyboardInterrupt

    stored = client.get_run(tracked.run_id)
    assert stored.info.status == "FAILED"
    assert stored.data.tags[ERROR_TAG] == "KeyboardInterrupt"


def test_long_error_message_truncated(store, client) -> None:
    tracked = TrackedRun("failing", "run-e", store[1])

    with pytest.raises(ValueError):
        with tracked:
            raise ValueError("x" * 20_000)

    tag = client.get_run(tracked.run_id).data.tags[ERROR_TAG]
    assert len(tag) == MAX_ERROR_TAG_LENGTH
    assert tag.startswith("ValueError: xxx")


def test_each_with_block_creates_new_run(store, client) -> None:
    tracked = TrackedRun("repeated", "same-name", store[1])

    with tracked as first:
        first_id = first.run_id
    with tracked as second:
        second_id = second.run_id
    with TrackedRun("repeated", "same-name", store[1]) as third:
        third_id = third.run_id

    assert len({first_id, second_id, third_id}) == 3
    runs = client.search_runs([third.experiment_id])
    assert {run.info.run_id for run in runs} == {first_id, second_id, third_id}
    assert {run.info.status for run in runs} == {"FINISHED"}


def test_long_param_truncated_with_warning(store, client, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.evaluation.tracking"):
        with TrackedRun("finished", "long", store[1]) as run:
            run.log_params({"paths": "p" * 7000, **{f"key{index}": index for index in range(150)}})

    params = client.get_run(run.run_id).data.params
    assert len(params["paths"]) == 6000
    assert len(params) == 151
    assert "parameter 'paths' has 7000 characters" in caplog.text


def test_nan_metric_logged_and_warned_once(store, client, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.evaluation.tracking"):
        with TrackedRun("finished", "nan", store[1]) as run:
            run.log_metric("auc", float("nan"), step=0)
            run.log_metric("auc", float("nan"), step=1)

    history = client.get_metric_history(run.run_id, "auc")
    assert len(history) == 2
    assert caplog.text.count("Metric 'auc' is NaN") == 1


def test_logs_start_and_viewing_hint(store, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="pipeline.evaluation.tracking"):
        with TrackedRun("finished", "hint", store[1]) as run:
            pass

    assert f"Started MLflow run {run.run_id}" in caplog.text
    assert f"mlflow ui --backend-store-uri {store[1]} --host 127.0.0.1" in caplog.text


def test_logging_outside_block_rejected(store) -> None:
    tracked = TrackedRun("finished", "outside", store[1])

    with pytest.raises(RuntimeError, match="has no run yet"):
        _ = tracked.run_id
    with pytest.raises(RuntimeError, match="not active"):
        tracked.log_metric("auc", 0.5, step=0)


def test_missing_artifact_rejected(store, tmp_path) -> None:
    with TrackedRun("finished", "missing", store[1]) as run:
        with pytest.raises(FileNotFoundError, match="absent.png"):
            run.log_artifact(tmp_path / "absent.png")


def test_deleted_experiment_rejected(store, client) -> None:
    client.delete_experiment(client.create_experiment("deleted"))

    with pytest.raises(ValueError, match="mlflow experiments restore"):
        with TrackedRun("deleted", "run", store[1]):
            pass


def test_resolve_uses_default_store(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)

    uri = resolve_tracking_uri(Path("eval") / "nested" / "mlruns.db")

    assert uri == f"sqlite:///{tmp_path / 'eval' / 'nested' / 'mlruns.db'}"
    assert (tmp_path / "eval" / "nested").is_dir()


def test_resolve_prefers_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")

    assert resolve_tracking_uri(tmp_path / "unused.db") == "http://127.0.0.1:5000"
    assert not (tmp_path / "unused.db").exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("file:///tmp/mlruns", "file store URI"),
        ("./mlruns", "bare path"),
        ("/tmp/mlruns", "bare path"),
    ],
)
def test_resolve_rejects_file_store_in_environment(value, message, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", value)

    with pytest.raises(ValueError, match=f"MLFLOW_TRACKING_URI is the {message}.*sqlite:///path/to/mlruns.db"):
        resolve_tracking_uri(tmp_path / "mlruns.db")


def test_resolve_rejects_file_store_default(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    with pytest.raises(ValueError, match="default_store is the file store URI"):
        resolve_tracking_uri((tmp_path / "mlruns").as_uri())
    with pytest.raises(ValueError, match="is a folder"):
        resolve_tracking_uri(tmp_path)


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "mlruns", ""])
def test_tracked_run_rejects_file_store(uri) -> None:
    with pytest.raises(ValueError, match="tracking_uri"):
        TrackedRun("experiment", "run", uri)


def test_nested_enter_rejected(store, client) -> None:
    tracked = TrackedRun("finished", "nested", store[1])

    with tracked:
        with pytest.raises(RuntimeError, match="already active"):
            tracked.__enter__()

    assert client.get_run(tracked.run_id).info.status == "FINISHED"


def test_spaces_and_non_ascii_paths_round_trip(tmp_path) -> None:
    database = tmp_path / "Klinik Daten" / "mlruns ü" / "mlruns.db"
    figure = tmp_path / "roc curve (val).png"
    figure.write_bytes(b"\x89PNG made-up bytes \xff")

    with TrackedRun("cad_dymo", "paths", resolve_tracking_uri(database)) as run:
        run.log_artifact(figure)

    client = MlflowClient(tracking_uri=resolve_tracking_uri(database))
    assert client.get_run(run.run_id).info.status == "FINISHED"
    downloaded = Path(client.download_artifacts(run.run_id, "roc curve (val).png", str(tmp_path / "download")))
    assert downloaded.read_bytes() == figure.read_bytes()
    assert not [path for path in database.parent.rglob("*") if "%20" in path.name or "%C3" in path.name]


def test_folds_inside_an_outer_mlflow_run(store, client) -> None:
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store[1])
    statuses = []
    try:
        with mlflow.start_run(run_name="notebook") as outer:
            for fold in range(3):
                try:
                    with TrackedRun("folds", f"fold-{fold}", store[1]) as run:
                        if fold == 1:
                            raise ValueError("fold 1 fails")
                except ValueError:
                    pass
                statuses.append(client.get_run(run.run_id).info.status)
            assert mlflow.active_run().info.run_id == outer.info.run_id
    finally:
        mlflow.set_tracking_uri(previous)

    assert statuses == ["FINISHED", "FAILED", "FINISHED"]
    assert client.get_run(outer.info.run_id).info.status == "FINISHED"
