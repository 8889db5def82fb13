"""Broken subject data on a cad_demo slice: one clear error, or a listed exclusion when asked to skip.

Each test copies a 40-subject slice and breaks one thing in the copy: a truncated NIfTI file,
bytes that are no image, a truncated DICOM slice, a missing file, a word in a numeric column.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import REPOSITORY_CONFIGS
from pipeline.data.cohort_masks import write_cohort_masks
from pipeline.data.cohorts import build_cohort
from pipeline.data.manifest import ManifestError, read_manifest
from pipeline.workflows.cohort_data import (
    SplitLoader,
    SubjectDataError,
    cohort_layout,
    drop_bad_rows,
    exclusion_table,
    fit_encoders,
    open_cohort,
    read_table_mask,
)

SCHEMA = REPOSITORY_CONFIGS / "cad_demo.yaml"
SPATIAL_SHAPE = (16, 16, 4)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cad_slice")
    manifest = build_cohort("cad_demo", folder, seed=0, limit=40)
    write_cohort_masks(read_manifest(manifest, SCHEMA), folder)
    return folder


@pytest.fixture
def cohort(pristine, tmp_path) -> Path:
    """A private copy of the slice that a test may break."""
    return Path(shutil.copytree(pristine, tmp_path / "cohort"))


def subject_row(cohort: Path, split: str, kind: str) -> pd.Series:
    """The first subject of ``split`` whose image is a NIfTI file (``kind="images"``) or a DICOM folder."""
    frame = pd.read_csv(cohort / "manifest.csv", dtype=str)
    rows = frame[(frame["split"] == split) & frame["cine_path"].str.startswith(kind)]
    return rows.iloc[0]


def loader_for(cohort: Path, on_bad_subject: str = "error") -> SplitLoader:
    manifest = read_manifest(cohort / "manifest.csv", SCHEMA)
    layout = cohort_layout(manifest, SPATIAL_SHAPE)
    return SplitLoader(manifest, fit_encoders(manifest), layout, cohort / "cache", batch_size=4, on_bad_subject=on_bad_subject)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def break_nifti_truncated(cohort: Path, row: pd.Series) -> Path:
    path = cohort / row["cine_path"]
    truncate(path)
    return path


def break_nifti_not_an_image(cohort: Path, row: pd.Series) -> Path:
    path = cohort / row["cine_path"]
    path.write_bytes(b"this is a scanned consent form, not an image\n" * 40)
    return path


def break_nifti_missing(cohort: Path, row: pd.Series) -> Path:
    path = cohort / row["cine_path"]
    path.unlink()
    return path


BREAKERS = {
    "truncated": break_nifti_truncated,
    "not_an_image": break_nifti_not_an_image,
    "missing": break_nifti_missing,
}


@pytest.mark.parametrize("fault", sorted(BREAKERS))
def test_broken_image_error_names_subject(cohort, fault):
    row = subject_row(cohort, "test", "images")
    path = BREAKERS[fault](cohort, row)

    with pytest.raises(SubjectDataError) as raised:
        loader_for(cohort).preload("test")

    message = str(raised.value)
    assert f"subject {row['subject_id']}" in message
    assert "'cine_path'" in message
    assert str(path) in message
    assert "--on_bad_subject skip" in message


def test_truncated_dicom_error_names_subject(cohort):
    row = subject_row(cohort, "train", "dicom")
    slices = sorted((cohort / row["cine_path"]).glob("*.dcm"))
    truncate(slices[3])

    with pytest.raises(SubjectDataError) as raised:
        loader_for(cohort).preload("train")

    message = str(raised.value)
    assert f"subject {row['subject_id']}" in message
    assert "'cine_path'" in message
    assert str(cohort / row["cine_path"]) in message


@pytest.mark.parametrize("fault", sorted(BREAKERS))
def test_skip_leaves_out_broken_subject(pristine, cohort, fault):
    row = subject_row(cohort, "test", "images")
    BREAKERS[fault](cohort, row)

    loader = loader_for(cohort, on_bad_subject="skip")
    batches = loader.preload("test")

    loaded = [subject for batch in batches for subject in batch["subject_id"]]
    expected = [subject for subject in (item["subject_id"] for item in loader.items("test")) if subject != row["subject_id"]]
    assert loaded == expected
    assert [(exclusion.subject_id, exclusion.split, exclusion.field) for exclusion in loader.exclusions] == [
        (row["subject_id"], "test", "cine_path")
    ]
    # The subjects that were read are the same as in the unbroken cohort.
    intact = [subject for batch in loader_for(pristine).preload("test") for subject in batch["subject_id"]]
    assert [subject for subject in intact if subject != row["subject_id"]] == loaded


def test_skip_yields_no_empty_batch(cohort):
    frame = pd.read_csv(cohort / "manifest.csv", dtype=str)
    broken = frame[(frame["split"] == "test") & frame["cine_path"].str.startswith("images")].head(4)
    for _, row in broken.iterrows():
        break_nifti_missing(cohort, row)

    loader = loader_for(cohort, on_bad_subject="skip")
    loader.batch_size = 1  # one subject per batch, so every broken subject empties its batch
    batches = list(loader.loader("test"))

    assert all(len(batch["subject_id"]) == 1 for batch in batches)
    assert len(loader.exclusions) == 4
    assert len(batches) == len(loader.items("test")) - 4


def write_word_in_numeric_column(cohort: Path, split: str) -> tuple[str, int]:
    """Write ``sixty`` into the age of the first subject of ``split``; return its id and data row."""
    frame = pd.read_csv(cohort / "manifest.csv", dtype=str, keep_default_na=False)
    position = int(frame.index[frame["split"] == split][0])
    frame.loc[position, "age"] = "sixty"
    frame.to_csv(cohort / "manifest.csv", index=False)
    return frame.loc[position, "subject_id"], position + 1


def test_word_in_numeric_column_error(cohort):
    subject, row = write_word_in_numeric_column(cohort, "test")
    manifest = read_manifest(cohort / "manifest.csv", SCHEMA)

    with pytest.raises(ManifestError) as raised:
        drop_bad_rows(manifest, "error")

    message = str(raised.value)
    assert f"row {row}" in message
    assert "'age'" in message
    assert "'sixty'" in message
    assert f"Subjects concerned: {subject} (row {row})" in message
    assert "--on_bad_subject skip" in message


def test_skip_drops_row_keeps_masks(cohort):
    subject, _ = write_word_in_numeric_column(cohort, "test")
    manifest = read_manifest(cohort / "manifest.csv", SCHEMA)

    cleaned_manifest, exclusions = drop_bad_rows(manifest, "skip")

    assert subject not in cleaned_manifest.subject_ids
    assert len(cleaned_manifest.subject_ids) == len(manifest.subject_ids) - 1
    assert cleaned_manifest.left_out == (subject,)
    assert not cleaned_manifest.errors
    table = exclusion_table(exclusions)
    assert table.to_dict("records") == [
        {"subject_id": subject, "split": "test", "field": "age", "reason": table.loc[0, "reason"]}
    ]
    assert "'sixty' is not a number" in table.loc[0, "reason"]

    # The masks were written for the whole cohort; the remaining subjects still read theirs.
    columns = list(cleaned_manifest.schema.tabular_columns("clinical"))
    remaining_ids = [name for name in cleaned_manifest.subject_ids][:5]
    mask = read_table_mask(cohort, cleaned_manifest, columns, remaining_ids, 0.5)
    assert mask.shape == (5, len(columns))


def test_unknown_policy_rejected(cohort):
    manifest = read_manifest(cohort / "manifest.csv", SCHEMA)
    with pytest.raises(ValueError, match="on_bad_subject must be one of"):
        drop_bad_rows(manifest, "ignore")
    with pytest.raises(ValueError, match="on_bad_subject must be one of"):
        loader_for(cohort, on_bad_subject="drop")


def test_empty_image_folder_is_one_error(cohort):
    shutil.rmtree(cohort / "images")
    shutil.rmtree(cohort / "dicom")
    (cohort / "images").mkdir()

    with pytest.raises(FileNotFoundError) as raised:
        open_cohort(cohort / "manifest.csv", SCHEMA)

    message = str(raised.value)
    assert "none of the 40 image paths in column 'cine_path' exists" in message
    assert str(cohort / "images") in message


@pytest.mark.parametrize("limit", [0, -3, 2.5, True])
def test_invalid_limit_rejected(cohort, limit):
    with pytest.raises(ValueError, match="limit must be a whole number"):
        loader_for(cohort).items("test", limit)
