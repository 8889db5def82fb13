"""Faults met by the CAD inference bundle, run as a user runs it (`python -m monai.bundle run`).

Each test copies a 40-subject slice of cad_demo, breaks one thing, runs inference.json with the
committed trained files in a subprocess, and checks the one ERROR line, the files left behind
and the MLflow store.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
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

REPOSITORY = Path(__file__).resolve().parents[2]


def run_inference(cohort: Path, output: Path, *overrides: str, limit_file_size: int | None = None) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    environment["OMP_NUM_THREADS"] = "1"

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return subprocess.run(
        [
            sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/cad/inference.json",
            "--dataset_dir", str(cohort), "--output_dir", str(output), "--gammas", json.dumps([0.0, 0.5]),
            "--n_bootstrap", "20", "--methods", json.dumps(["discard", "dymo_cosine"]), *overrides,
        ],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limit if limit_file_size else None,
    )


def error_lines(completed: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (completed.stdout + completed.stderr).splitlines() if " ERROR " in line]


def runs(output: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{output / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("cad_dymo")
    return sorted(client.search_runs([experiment.experiment_id]), key=lambda run: run.info.start_time)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cad_slice")
    manifest = build_cohort("cad_demo", folder, seed=0, limit=40)
    write_cohort_masks(read_manifest(manifest, REPOSITORY_CONFIGS / "cad_demo.yaml"), folder)
    return folder


@pytest.fixture
def cohort(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "cohort"))


def test_test_subjects(pristine) -> None:
    """The slice has NIfTI test subjects to break and both classes in its test split."""
    frame = pd.read_csv(pristine / "manifest.csv", dtype=str)
    test = frame[frame["split"] == "test"]
    assert test["cine_path"].str.startswith("images/").sum() >= 2
    assert test["num"].astype(int).eq(0).any()
    assert test["num"].astype(int).gt(0).any()


def first_test_image(cohort: Path, position: int = 0) -> tuple[str, Path]:
    frame = pd.read_csv(cohort / "manifest.csv", dtype=str)
    rows = frame[(frame["split"] == "test") & frame["cine_path"].str.startswith("images/")]
    return rows.iloc[position]["subject_id"], cohort / rows.iloc[position]["cine_path"]


def test_broken_image_fails_then_rerun_completes(cohort, tmp_path):
    subject, path = first_test_image(cohort)
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 2])
    output = tmp_path / "eval"

    failed = run_inference(cohort, output)

    assert failed.returncode != 0
    (line,) = error_lines(failed)
    assert f"subject {subject}" in line
    assert "'cine_path'" in line
    assert str(path) in line
    assert "--on_bad_subject skip" in line
    assert not (output / "results.csv").exists()
    assert not (output / "subjects.csv").exists()
    assert not list(output.glob("*.partial"))
    (run,) = runs(output)
    assert run.info.status == "FAILED"
    assert subject in run.data.tags["error"]

    path.write_bytes(original)
    repeated = run_inference(cohort, output)

    assert repeated.returncode == 0, repeated.stderr[-3000:]
    first, second = runs(output)
    assert (first.info.status, second.info.status) == ("FAILED", "FINISHED")
    results = pd.read_csv(output / "results.csv")
    assert sorted(results["method"].unique()) == ["discard", "dymo_cosine"]


def test_skip_lists_excluded_subjects(cohort, tmp_path):
    broken_image, path = first_test_image(cohort)
    path.write_bytes(b"not an image\n")
    frame = pd.read_csv(cohort / "manifest.csv", dtype=str, keep_default_na=False)
    row = frame.index[(frame["split"] == "test") & (frame["subject_id"] != broken_image)][0]
    broken_value = frame.loc[row, "subject_id"]
    frame.loc[row, "trestbps"] = "one hundred"
    frame.to_csv(cohort / "manifest.csv", index=False)
    output = tmp_path / "eval"

    completed = run_inference(cohort, output, "--on_bad_subject", "skip")

    assert completed.returncode == 0, completed.stderr[-3000:]
    excluded = pd.read_csv(output / "excluded_subjects.csv")
    assert sorted(zip(excluded["subject_id"], excluded["field"])) == sorted(
        [(broken_image, "cine_path"), (broken_value, "trestbps")]
    )
    tested = int((frame["split"] == "test").sum())
    results = pd.read_csv(output / "results.csv")
    assert (results["n"] == tested - 2).all()
    subjects = pd.read_csv(output / "subjects.csv")
    assert not set(subjects["subject_id"]) & {broken_image, broken_value}
    (run,) = runs(output)
    assert run.data.params["excluded_subjects"] == "2"
    client = MlflowClient(tracking_uri=f"sqlite:///{output / 'mlruns.db'}")
    assert "excluded_subjects.csv" in {entry.path for entry in client.list_artifacts(run.info.run_id)}


def test_one_class_split_fails_early(cohort, tmp_path):
    frame = pd.read_csv(cohort / "manifest.csv", dtype=str, keep_default_na=False)
    frame.loc[frame["split"] == "test", "num"] = "0"
    frame.to_csv(cohort / "manifest.csv", index=False)

    completed = run_inference(cohort, tmp_path / "eval")

    assert completed.returncode != 0
    (line,) = error_lines(completed)
    assert "split 'test'" in line
    assert "AUC is undefined" in line
    assert "--split" in line
    assert not (tmp_path / "eval" / "mlruns.db").exists()


def test_full_disk_names_mlflow_store(cohort, tmp_path):
    output = tmp_path / "eval"

    completed = run_inference(cohort, output, limit_file_size=64 * 1024)

    assert completed.returncode != 0
    (line,) = error_lines(completed)
    assert str(output / "mlruns.db") in line
    assert "free space" in line
    assert "--tracking_store" in line
    assert not (output / "results.csv").exists()


@pytest.fixture
def models(tmp_path) -> Path:
    """A private copy of the committed trained files."""
    return Path(shutil.copytree(REPOSITORY / "bundles" / "cad" / "models", tmp_path / "models"))


def test_token_imputer_of_other_network_rejected(cohort, models, tmp_path):
    from pipeline.imputation import load_imputer, save_imputer
    from pipeline.networks import network_fingerprint
    from pipeline.training import load_checkpoint

    # The euclidean network's token imputer, saved under the cosine network's name.
    euclidean, _ = load_checkpoint(models / "model_euclidean.pt")
    imputer = load_imputer(models / "image_token_imputer_euclidean.pt")
    imputer.fitted_for_ = network_fingerprint(euclidean)
    save_imputer(imputer, models / "image_token_imputer_cosine.pt")

    completed = run_inference(cohort, tmp_path / "eval", "--models_dir", str(models))

    assert completed.returncode != 0
    (line,) = error_lines(completed)
    assert str(models / "image_token_imputer_cosine.pt") in line
    assert str(models / "model_cosine.pt") in line
    assert "different trainings" in line


def test_table_imputer_of_other_cohort_rejected(cohort, models, tmp_path):
    # Encoders of a cohort whose chest-pain column has one level more than the imputer saw.
    encoders = json.loads((models / "tabular_encoders.json").read_text())
    for key in ("levels", "categorical_levels"):
        encoders["clinical"][key]["cp"] = [*encoders["clinical"][key]["cp"], "post-infarction angina"]
    (models / "tabular_encoders.json").write_text(json.dumps(encoders))

    completed = run_inference(cohort, tmp_path / "eval", "--models_dir", str(models))

    assert completed.returncode != 0
    (line,) = error_lines(completed)
    assert str(models / "table_imputer.pt") in line
    assert "category counts" in line


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_fails_then_rerun_completes(cohort, tmp_path, signal_number):
    output = tmp_path / "eval"
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    environment["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/cad/inference.json",
        "--dataset_dir", str(cohort), "--output_dir", str(output), "--gammas", json.dumps([0.0, 0.5, 1.0]),
        "--n_bootstrap", "20",
    ]
    process = subprocess.Popen(
        command, cwd=REPOSITORY, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    # Interrupt once the MLflow run has started, while images are read and encoded.
    console = []
    for line in process.stdout:
        console.append(line)
        if "Started MLflow run" in line:
            process.send_signal(signal_number)
            break
    console.extend(process.stdout)
    assert process.wait(timeout=300) != 0, "".join(console)[-3000:]
    assert any("The inference job was stopped" in line for line in console)

    assert not (output / "results.csv").exists()
    assert not list(output.rglob("*.partial"))
    (interrupted,) = runs(output)
    assert interrupted.info.status == "FAILED"
    assert interrupted.data.tags["error"].startswith(("KeyboardInterrupt", "RunTerminated"))

    completed = run_inference(cohort, output)

    assert completed.returncode == 0, completed.stderr[-3000:]
    first, second = runs(output)
    assert first.info.run_id == interrupted.info.run_id
    assert second.info.status == "FINISHED"
    assert len(pd.read_csv(output / "results.csv")) == 4


def test_run_logs_plan_and_outputs(cohort, tmp_path):
    output = tmp_path / "eval"

    completed = run_inference(cohort, output)

    assert completed.returncode == 0, completed.stderr[-3000:]
    console = completed.stdout + completed.stderr
    (plan,) = [line for line in console.splitlines() if "DyMo sweep: cohort" in line]
    assert str(cohort / "manifest.csv") in plan
    assert "subjects: train " in plan
    assert "methods ['discard', 'dymo_cosine']" in plan
    assert "gammas [0.0, 0.5]" in plan
    assert f"output {output}" in plan
    (written,) = [line for line in console.splitlines() if " Wrote " in line]
    assert str(output / "results.csv") in written
    assert str(output / "mlruns.db") in written


def test_space_and_at_sign_in_path_run(cohort, tmp_path):
    folder = tmp_path / "cad data" / "site@clinic"
    shutil.copytree(cohort, folder)

    completed = run_inference(folder, tmp_path / "eval")

    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / "eval" / "results.csv").is_file()


def test_hash_in_path_gives_clear_error(cohort, tmp_path):
    folder = tmp_path / "site#2"
    shutil.copytree(cohort, folder)

    completed = run_inference(folder, tmp_path / "eval")

    assert completed.returncode != 0
    (line,) = error_lines(completed)
    assert str(tmp_path / "site::2") in line
    assert "without '#'" in line


def test_missing_logging_file_is_named(cohort, tmp_path):
    completed = run_inference(cohort, tmp_path / "eval", "--logging_file", str(tmp_path / "logging.conf"))

    assert completed.returncode != 0
    assert f"Cannot find the logging config file: {tmp_path / 'logging.conf'}" in completed.stderr


def run_training(cohort: Path, models: Path, *overrides: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    environment["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [
            sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/cad/train.json",
            "--dataset_dir", str(cohort), "--models_dir", str(models), "--output_dir", str(models.parent / "eval"),
            "--embeddings", '["cosine"]', "--trainer#max_epochs", "4", "--trainer#patience", "4",
            "--batch_size", "8", "--token_imputer#max_epochs", "3", "--table_imputer#max_epochs", "3", *overrides,
        ],
        cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=600,
    )


def test_training_stops_at_broken_image_or_skips_it(cohort, tmp_path):
    frame = pd.read_csv(cohort / "manifest.csv", dtype=str)
    row = frame[(frame["split"] == "train") & frame["cine_path"].str.startswith("images/")].iloc[0]
    (cohort / row["cine_path"]).write_bytes(b"not an image\n")

    failed = run_training(cohort, tmp_path / "stopped")

    assert failed.returncode != 0
    (line,) = error_lines(failed)
    assert f"subject {row['subject_id']}" in line
    assert "The training job failed" in line

    skipped = run_training(cohort, tmp_path / "models", "--on_bad_subject", "skip")

    assert skipped.returncode == 0, skipped.stderr[-3000:]
    summary = json.loads((tmp_path / "models" / "training_summary.json").read_text())
    assert [(entry["subject_id"], entry["field"]) for entry in summary["excluded_subjects"]] == [
        (row["subject_id"], "cine_path")
    ]
