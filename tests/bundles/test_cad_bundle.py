"""The CAD bundle run as a user runs it: `python -m monai.bundle run` in a subprocess.

On a 60-subject slice of cad_demo the tests train the bundle for a few epochs, run inference
with those files, and run inference with the committed trained files. They check results.csv,
the per-subject report and the MLflow SQLite store.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.workflows import RESULT_COLUMNS

REPOSITORY = Path(__file__).resolve().parents[2]
GAMMAS = [0.0, 0.5, 1.0]


def run_bundle(config: str, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    environment["OMP_NUM_THREADS"] = "1"
    completed = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"bundles/cad/{config}", *overrides],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    return completed


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("models")
    run_bundle(
        "train.json",
        "--dataset_dir", str(cohort),
        "--models_dir", str(models),
        "--output_dir", str(models / "eval"),
        "--trainer#max_epochs", "4",
        "--trainer#patience", "4",
        "--batch_size", "16",
        "--token_imputer#max_epochs", "5",
        "--table_imputer#max_epochs", "5",
    )
    return models


def sweep(cohort: Path, output: Path, *overrides: str, gammas: list[float] = GAMMAS) -> pd.DataFrame:
    run_bundle(
        "inference.json",
        "--dataset_dir", str(cohort),
        "--output_dir", str(output),
        "--gammas", json.dumps(gammas),
        "--n_bootstrap", "50",
        "--run_name", "bundle-test",
        *overrides,
    )
    return pd.read_csv(output / "results.csv")


def test_training_writes_every_file(trained):
    names = sorted(path.name for path in trained.iterdir() if path.is_file())
    assert names == [
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
    summary = json.loads((trained / "training_summary.json").read_text())
    assert summary["seed"] == 0
    assert summary["networks"]["cosine"]["best_epoch"] >= 3


def test_inference_writes_results_and_a_finished_mlflow_run(cohort, trained, tmp_path):
    output = tmp_path / "eval"
    results = sweep(cohort, output, "--models_dir", str(trained))

    assert list(results.columns) == RESULT_COLUMNS
    methods = ["discard", "impute_all", "dymo_cosine", "dymo_euclidean"]
    assert sorted(zip(results["method"], results["gamma"])) == sorted((m, g) for m in methods for g in GAMMAS)
    assert results["auc"].between(0, 1).all()
    assert (results["auc_low"] <= results["auc"]).all()
    assert (results["auc"] <= results["auc_high"]).all()
    impute_all = results[results["method"] == "impute_all"]
    assert (impute_all["selected_table"].dropna() == 1.0).all()

    subjects = pd.read_csv(output / "subjects.csv")
    assert len(subjects) == results["n"].sum()
    assert (output / "auc_by_gamma.png").stat().st_size > 0

    client = MlflowClient(tracking_uri=f"sqlite:///{output / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("cad_dymo")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "bundle-test"
    history = client.get_metric_history(run.info.run_id, "auc.dymo_cosine")
    logged = {metric.step: metric.value for metric in history}
    expected = results[results["method"] == "dymo_cosine"].set_index("gamma")["auc"]
    assert sorted(logged) == [0, 50, 100]
    for gamma, auc in expected.items():
        assert math.isclose(logged[round(gamma * 100)], auc, rel_tol=1e-5)
    artifacts = {entry.path for entry in client.list_artifacts(run.info.run_id)}
    assert {"results.csv", "subjects.csv", "auc_by_gamma.png", "config.json"} <= artifacts


def test_committed_trained_files_run_on_a_fresh_cohort(cohort, tmp_path):
    results = sweep(
        cohort,
        tmp_path / "eval",
        "--methods", '["discard","dymo_cosine"]',
        "--manifest", str(cohort / "manifest.csv"),
        "--schema", "configs/cad_demo.yaml",
        "--device", "cpu",
        gammas=[0.3],
    )

    assert sorted(results["method"]) == ["discard", "dymo_cosine"]
    assert results["gamma"].tolist() == [0.3, 0.3]
    assert results["auc"].between(0, 1).all()


def test_same_seeds_give_identical_results(cohort, tmp_path):
    first = tmp_path / "first"
    second = tmp_path / "second"
    for output in (first, second):
        sweep(cohort, output, "--methods", '["impute_all","dymo_cosine"]', gammas=[0.5])

    assert (first / "results.csv").read_bytes() == (second / "results.csv").read_bytes()
    assert (first / "subjects.csv").read_bytes() == (second / "subjects.csv").read_bytes()
