"""The CAD training bundle stopped with SIGTERM, then run again: it resumes and ends with the uninterrupted files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient


REPOSITORY = Path(__file__).resolve().parents[2]
MAX_EPOCHS = 6
OVERRIDES = (
    "--embeddings", '["cosine"]',
    "--trainer#max_epochs", str(MAX_EPOCHS),
    "--trainer#patience", str(MAX_EPOCHS),
    "--batch_size", "16",
    "--token_imputer#max_epochs", "5",
    "--table_imputer#max_epochs", "5",
)


def bundle_command(cohort: Path, models: Path) -> list[str]:
    return [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/cad/train.json",
        "--dataset_dir", str(cohort), "--models_dir", str(models), "--output_dir", str(models / "eval"),
        *OVERRIDES,
    ]


def bundle_environment() -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    environment["OMP_NUM_THREADS"] = "1"
    return environment


def run_to_end(cohort: Path, models: Path) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        bundle_command(cohort, models), cwd=REPOSITORY, env=bundle_environment(), capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    return completed


def run_until_first_state(cohort: Path, models: Path) -> int:
    """Start the bundle, send SIGTERM once the first training-state file exists, return the exit code."""
    state_path = models / "training_state_cosine.pt"
    process = subprocess.Popen(
        bundle_command(cohort, models), cwd=REPOSITORY, env=bundle_environment(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not state_path.exists():
            assert process.poll() is None, f"the bundle ended with code {process.returncode} before writing {state_path}"
            assert time.monotonic() < deadline, f"{state_path} did not appear within 240 s"
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def mlflow_runs(models: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{models / 'eval' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("cad_dymo_train")
    return sorted(client.search_runs([experiment.experiment_id]), key=lambda run: run.info.start_time)


def train_losses(models: Path, run) -> list[float]:
    client = MlflowClient(tracking_uri=f"sqlite:///{models / 'eval' / 'mlruns.db'}")
    history = client.get_metric_history(run.info.run_id, "train_loss.cosine")
    return [metric.value for metric in sorted(history, key=lambda metric: metric.step)]


def assert_same_contents(found, expected, where: str) -> None:
    """Assert that two loaded files hold the same values, tensors bit for bit, at any depth."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(found, torch.Tensor) and torch.equal(found, expected), where
    elif isinstance(expected, dict):
        assert isinstance(found, dict) and sorted(found) == sorted(expected), where
        for key, value in expected.items():
            assert_same_contents(found[key], value, f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(found, (list, tuple)) and len(found) == len(expected), where
        for index, value in enumerate(expected):
            assert_same_contents(found[index], value, f"{where}[{index}]")
    else:
        assert found == expected or (found != found and expected != expected), where  # NaN equals NaN here


def test_interrupted_training_resumes_to_uninterrupted_files(cohort, tmp_path):
    reference = tmp_path / "uninterrupted"
    resumed = tmp_path / "resumed"
    run_to_end(cohort, reference)

    exit_code = run_until_first_state(cohort, resumed)
    state = torch.load(resumed / "training_state_cosine.pt", weights_only=True)["state"]
    completed = run_to_end(cohort, resumed)

    assert exit_code != 0
    assert 1 <= state["next_epoch"] < MAX_EPOCHS
    assert f"resuming training from epoch {state['next_epoch']}" in completed.stdout + completed.stderr
    assert not (resumed / "training_state_cosine.pt").exists()
    for name in ("model_cosine.pt", "prototypes_cosine.pt", "image_token_imputer_cosine.pt"):
        assert_same_contents(
            torch.load(resumed / name, weights_only=True), torch.load(reference / name, weights_only=True), name
        )
    assert sorted(path.name for path in resumed.iterdir() if path.is_file()) == sorted(
        path.name for path in reference.iterdir() if path.is_file()
    )

    interrupted_run, resumed_run = mlflow_runs(resumed)
    (reference_run,) = mlflow_runs(reference)
    assert interrupted_run.info.status == "FAILED"
    assert "RunTerminated" in interrupted_run.data.tags["error"]
    assert resumed_run.info.status == "FINISHED"
    assert train_losses(resumed, resumed_run) == train_losses(reference, reference_run)
    assert len(train_losses(resumed, resumed_run)) == MAX_EPOCHS
