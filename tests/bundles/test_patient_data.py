"""No DICOM identifying attribute reaches any output of the CAD bundle.

The test writes made-up identifying values into the DICOM cines of a cohort slice and runs the
inference bundle. It then searches the console output and every file the run wrote for those
values: results, reports, figures, the MLflow SQLite store and artifacts, the DICOM cache.
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

    output = folder / "eval"
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    environment["OMP_NUM_THREADS"] = "1"
    completed = subprocess.run(
        [
            sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/cad/inference.json",
            "--dataset_dir", str(cohort), "--output_dir", str(output), "--gammas", "[0.0,0.5]", "--n_bootstrap", "20",
            # The slice has DICOM cines in its train and val splits only.
            "--split", "train",
        ],
        cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return output, completed.stdout + completed.stderr


def test_dicom_cines_were_read(run_outputs):
    output, _ = run_outputs
    converted = list((output / "image_cache").glob("*.nii.gz"))

    assert converted
    # Subjects are named by their manifest id, which the search below must be able to find.
    assert b"uci-0001" in (output / "subjects.csv").read_bytes()


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
