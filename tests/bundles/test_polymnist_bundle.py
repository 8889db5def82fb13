"""The polymnist bundle run as a user runs it, on a 100-subject slice of polymnist_real.

The networks and the MoPoE imputer train for a few epochs only, so the test checks the
outputs' structure and the MLflow run, not the accuracy.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import REPOSITORY_CONFIGS
from pipeline.data.cohort_masks import write_cohort_masks
from pipeline.data.cohorts import build_cohort
from pipeline.data.manifest import read_manifest
from pipeline.workflows.image_modalities import RESULT_COLUMNS

REPOSITORY = Path(__file__).resolve().parents[2]
METHODS = ["discard", "impute_all", "dymo_cosine", "dymo_euclidean", "positive_at_once", "greedy_no_calibration"]


def run_bundle(config: str, *overrides: str) -> None:
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    environment["OMP_NUM_THREADS"] = "1"
    completed = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"bundles/polymnist/{config}", *overrides],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("polymnist")
    cohort = folder / "cohort"
    manifest = build_cohort("polymnist_real", cohort, seed=0, limit=100)
    write_cohort_masks(read_manifest(manifest, REPOSITORY_CONFIGS / "polymnist_real.yaml"), cohort)
    common = ["--dataset_dir", str(cohort), "--models_dir", str(folder / "models"), "--output_dir", str(folder / "eval")]
    run_bundle("train.json", *common, "--trainer#max_epochs", "4", "--batch_size", "32", "--imputer#max_epochs", "2")
    run_bundle("inference.json", *common, "--etas", "[0.0,0.8]", "--n_bootstrap", "50", "--run_name", "polymnist-test")
    return folder


def test_skip_leaves_out_a_broken_digit_image(outputs, tmp_path):
    cohort = Path(shutil.copytree(outputs / "cohort", tmp_path / "cohort"))
    frame = pd.read_csv(cohort / "manifest.csv", dtype=str)
    broken = frame[frame["split"] == "test"].iloc[0]
    (cohort / broken["m2_path"]).write_bytes(b"not an image\n")

    run_bundle(
        "inference.json", "--dataset_dir", str(cohort), "--models_dir", str(outputs / "models"),
        "--output_dir", str(tmp_path / "eval"), "--etas", "[0.0]", "--n_bootstrap", "20", "--on_bad_subject", "skip",
    )

    excluded = pd.read_csv(tmp_path / "eval" / "excluded_subjects.csv")
    assert excluded[["subject_id", "field"]].values.tolist() == [[broken["subject_id"], "m2_path"]]
    subjects = pd.read_csv(tmp_path / "eval" / "subjects.csv")
    assert broken["subject_id"] not in set(subjects["subject_id"])


def test_training_writes_networks_prototypes_and_imputer(outputs):
    names = sorted(path.name for path in (outputs / "models").iterdir() if path.is_file())

    assert names == [
        "model_cosine.pt",
        "model_euclidean.pt",
        "mopoe_imputer.pt",
        "prototypes_cosine.pt",
        "prototypes_euclidean.pt",
        "training_summary.json",
    ]


def test_results_cover_every_method_and_rate(outputs):
    results = pd.read_csv(outputs / "eval" / "results.csv")

    assert list(results.columns) == RESULT_COLUMNS
    assert sorted(zip(results["method"], results["eta"])) == sorted((m, e) for m in METHODS for e in (0.0, 0.8))
    assert results["accuracy"].between(0, 1).all()
    assert (results["accuracy_low"] <= results["accuracy"]).all()
    by_method = results[results["eta"] == 0.8].set_index("method")
    assert by_method.at["discard", "mean_admitted"] == 0
    assert by_method.at["impute_all", "mean_used"] == 5
    assert by_method.at["dymo_cosine", "mean_used"] >= 1
    assert (outputs / "eval" / "selection_examples.png").stat().st_size > 0
    assert (outputs / "eval" / "accuracy_by_eta.png").stat().st_size > 0


def test_mlflow_run_holds_the_accuracies(outputs):
    results = pd.read_csv(outputs / "eval" / "results.csv")
    client = MlflowClient(tracking_uri=f"sqlite:///{outputs / 'eval' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("polymnist_dymo")
    (run,) = client.search_runs([experiment.experiment_id])

    assert run.info.status == "FINISHED"
    assert run.info.run_name == "polymnist-test"
    logged = {metric.step: metric.value for metric in client.get_metric_history(run.info.run_id, "accuracy.dymo_cosine")}
    expected = results[results["method"] == "dymo_cosine"].set_index("eta")["accuracy"]
    assert sorted(logged) == [0, 80]
    for eta, value in expected.items():
        assert math.isclose(logged[round(eta * 100)], value, rel_tol=1e-5)
