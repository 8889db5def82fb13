"""No DICOM identifying attribute reaches any output of the CAD bundle.

The test writes made-up identifying values into the DICOM cines of a cohort slice, trains the
bundle for a few epochs on it and runs inference with those trained files. It then searches the
console output and every file both jobs wrote for those values: trained files, results,
reports, figures, the MLflow SQLite store and artifacts, the DICOM cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from pipeline.cli import REPOSITORY_CONFIGS
from pipeline.data.cohort_masks import write_cohort_masks
from pipeline.data.cohorts import build_cohort
from pipeline.data.manifest import read_manifest

REPOSITORY = Path(__file__).resolve().parents[2]

# Made-up values, one per kind of identifying attribute.
IDENTIFYING = {
    "PatientName": "Quixote^Alonso",
    "PatientID": "MRN-8675309",
    "PatientBirthDate": "19470321",
    "AccessionNumber": "ACC-31415926",
    "InstitutionName": "Hospital of Saint Nowhere",
    "ReferringPhysicianName": "Panza^Sancho",
    "StudyDate": "20190817",
}


def run_bundle(config: str, *overrides: str) -> str:
    """Run a bundle config in a subprocess and return its console output."""
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    environment["OMP_NUM_THREADS"] = "1"
    completed = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"bundles/cad/{config}", *overrides],
        cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout + completed.stderr


@pytest.fixture(scope="module")
def run_outputs(tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("phi")
    cohort = folder / "cohort"
    manifest = build_cohort("cad_demo", cohort, seed=0, limit=60)
    write_cohort_masks(read_manifest(manifest, REPOSITORY_CONFIGS / "cad_demo.yaml"), cohort)
    dicom_files = sorted((cohort / "dicom").rglob("*.dcm"))
    assert dicom_files, "the slice has no DICOM cine to label"
    for path in dicom_files:
        dataset = pydicom.dcmread(path)
        for keyword, value in IDENTIFYING.items():
            setattr(dataset, keyword, value)
        dataset.save_as(path)

    # Both jobs write under `outputs`: the trained files, the cache, the results and the MLflow store.
    outputs = folder / "outputs"
    console = run_bundle(
        "train.json", "--dataset_dir", str(cohort), "--models_dir", str(outputs / "models"),
        "--output_dir", str(outputs / "eval"), "--trainer#max_epochs", "4", "--trainer#patience", "4",
        "--batch_size", "16", "--token_imputer#max_epochs", "5", "--table_imputer#max_epochs", "5",
    )
    console += run_bundle(
        "inference.json", "--dataset_dir", str(cohort), "--models_dir", str(outputs / "models"),
        "--output_dir", str(outputs / "eval"), "--gammas", "[0.0,0.5]", "--n_bootstrap", "20",
        # The slice has DICOM cines in its train and val splits only.
        "--split", "train",
    )
    return outputs, console


def test_dicom_cines_were_read(run_outputs):
    output, _ = run_outputs
    converted = list((output / "eval" / "image_cache").glob("*.nii.gz"))

    assert converted
    assert (output / "models" / "model_cosine.pt").is_file()
    # Subjects are named by their manifest id, which the search below must be able to find.
    assert b"uci-0001" in (output / "eval" / "subjects.csv").read_bytes()


@pytest.mark.parametrize("keyword", sorted(IDENTIFYING))
def test_identifying_value_in_no_output(run_outputs, keyword):
    output, console = run_outputs
    value = IDENTIFYING[keyword]
    # DICOM stores person names with ^; a reader may show them with spaces.
    forms = {value, value.replace("^", " ")}

    for form in forms:
        assert form not in console
        for path in output.rglob("*"):
            if path.is_file():
                assert form.encode() not in path.read_bytes(), f"{keyword} found in {path}"
