"""The CAD training bundle under torchrun with two CPU processes (gloo), as `multi_gpu_train.json` runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient


REPOSITORY = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")
MAX_EPOCHS = 4


def torchrun_bundle(configs: str, cohort: Path, models: Path) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    environment["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [
            str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run", "--config_file", configs,
            "--dataset_dir", str(cohort), "--models_dir", str(models), "--output_dir", str(models / "eval"),
            "--trainer#max_epochs", str(MAX_EPOCHS), "--trainer#patience", str(MAX_EPOCHS), "--batch_size", "16",
            "--token_imputer#max_epochs", "5", "--table_imputer#max_epochs", "5",
        ],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_two_processes_write_files_and_run_once(cohort, tmp_path):
    models = tmp_path / "models"

    completed = torchrun_bundle("['bundles/cad/train.json','bundles/cad/multi_gpu_train.json']", cohort, models)

    log = completed.stdout + completed.stderr
    assert completed.returncode == 0, log[-8000:]
    assert "rank 0 of 2, backend gloo" in log
    assert "rank 1 of 2, backend gloo" in log
    assert sorted(path.name for path in models.iterdir() if path.is_file()) == [
        "image_token_imputer_cosine.pt",
        "image_token_imputer_euclidean.pt",
        "model_cosine.pt",
        "model_euclidean.pt",
        "prototypes_cosine.pt",
        "prototypes_euclidean.pt",
        "table_imputer.pt",
        "tabular_encoders.json",
        "training_summary.json",
    ]
    # Each file-writing step logs one line, so a second process writing too would log it twice.
    assert log.count("Fitting the learned table imputer") == 1
    assert log.count("saved the token imputer to") == 2
    assert log.count("epoch 3/3: train loss") == 2

    client = MlflowClient(tracking_uri=f"sqlite:///{models / 'eval' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("cad_dymo_train")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["processes"] == "2"
    history = client.get_metric_history(run.info.run_id, "train_loss.cosine")
    assert sorted(metric.step for metric in history) == list(range(MAX_EPOCHS))


def test_torchrun_without_multi_process_config_is_rejected(cohort, tmp_path):
    completed = torchrun_bundle("bundles/cad/train.json", cohort, tmp_path / "models")

    assert completed.returncode != 0
    assert "the process group is not initialised" in completed.stdout + completed.stderr
    assert "multi_gpu_train.json" in completed.stdout + completed.stderr
