"""Tests for check_cohort: image checks, summary numbers and problem collection."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pandas as pd
import pytest

from pipeline.data.check import check_cohort
from pipeline.data.manifest import Problem, read_manifest
from tests.data.test_dicom import write_stack
from tests.data.test_manifest import HEADER, ROWS, SCHEMA, write_cohort


def save_nifti(path: Path, shape: tuple[int, ...]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(np.zeros(shape, dtype=np.int16), np.eye(4)), path)


@pytest.fixture
def cohort(tmp_path: Path) -> tuple[Path, Path]:
    save_nifti(tmp_path / "images/s01.nii.gz", (8, 8, 4))
    save_nifti(tmp_path / "images/s03.nii.gz", (8, 8, 4))
    return write_cohort(tmp_path)


def test_valid_cohort_summary(cohort):
    report = check_cohort(*cohort)
    summary = report.summary

    assert report.usable
    assert report.problems == []
    assert summary.subjects_per_split.to_dict() == {"train": 2, "val": 1, "test": 1}
    assert summary.label_balance.loc["train"].tolist() == [1, 1]
    assert summary.label_balance.loc["val"].tolist() == [0, 1]
    assert summary.label_balance.loc["test"].tolist() == [1, 0]
    assert list(summary.label_balance.columns) == ["healthy", "disease"]
    assert summary.image_availability.loc["cine"].tolist() == [4, 2, 2]
    assert summary.missing_rate.loc["chol", "all"] == 0.5
    assert summary.missing_rate.loc["chol", "train"] == 0.5
    assert summary.missing_rate.loc["age", "test"] == 1.0
    assert summary.missing_rate.loc["sex", "val"] == 1.0
    assert summary.extra_columns == ("site",)


def test_missing_image_file(cohort):
    (cohort[0].parent / "images/s03.nii.gz").unlink()

    report = check_cohort(*cohort)

    assert not report.usable
    assert [(p.row, p.column) for p in report.problems] == [(3, "cine_path")]
    assert "not found" in report.problems[0].message
    assert report.summary.image_availability.loc["cine"].tolist() == [4, 2, 1]


def test_nifti_zero_size_dimension(cohort):
    save_nifti(cohort[0].parent / "images/s03.nii.gz", (8, 0, 4))

    report = check_cohort(*cohort)

    assert len(report.problems) == 1
    assert "zero-size spatial dimension in shape (8, 0, 4)" in report.problems[0].message
    assert "s03.nii.gz" in report.problems[0].message


def test_corrupt_nifti_reported(cohort):
    (cohort[0].parent / "images/s03.nii.gz").write_bytes(b"not gzip")

    report = check_cohort(*cohort)

    assert len(report.problems) == 1
    assert "not a NIfTI-1 or NIfTI-2 file" in report.problems[0].message


@pytest.mark.parametrize("name", ["s03.nii.gz", "s03.nii"])
def test_truncated_nifti_reported(tmp_path, name):
    save_nifti(tmp_path / "images/s01.nii.gz", (8, 8, 4))
    path = tmp_path / "images" / name
    save_nifti(path, (32, 32, 16))
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    rows = [ROWS[0], ROWS[1], ROWS[2].replace("images/s03.nii.gz", f"images/{name}"), ROWS[3]]
    cohort = write_cohort(tmp_path, rows)

    report = check_cohort(*cohort)

    assert not report.usable
    assert [(p.row, p.column) for p in report.problems] == [(3, "cine_path")]
    assert "truncated or damaged" in report.problems[0].message


def test_dicom_folder_needs_one_series(tmp_path):
    save_nifti(tmp_path / "images/s01.nii.gz", (8, 8, 4))
    folder = tmp_path / "dicom/s03"
    folder.mkdir(parents=True)
    rows = [ROWS[0], ROWS[1], ROWS[2].replace("images/s03.nii.gz", "dicom/s03"), ROWS[3]]
    manifest_path, schema_path = write_cohort(tmp_path, rows)

    empty = check_cohort(manifest_path, schema_path)
    (folder / "IM0001.dcm").write_bytes(b"\0" * 132)
    junk = check_cohort(manifest_path, schema_path)
    volume = np.arange(8 * 8 * 3, dtype=np.uint16).reshape(8, 8, 3)
    write_stack(folder / "sax", volume, [0.0, 8.0, 16.0], description="SAX_TEST")
    one_series = check_cohort(manifest_path, schema_path)
    write_stack(folder / "loc", volume[:, :, :2], [0.0, 5.0], series_number=2, description="LOC_TEST")
    two_series = check_cohort(manifest_path, schema_path)

    assert [p.row for p in empty.problems] == [3]
    assert "No DICOM image files" in empty.problems[0].message
    assert [p.row for p in junk.problems] == [3]
    assert one_series.usable
    assert [p.row for p in two_series.problems] == [3]
    assert "contains 2 DICOM series" in two_series.problems[0].message
    assert "series_rule" in two_series.problems[0].fix
    assert "LOC_TEST" in two_series.problems[0].message


def test_all_faults_in_one_report(tmp_path):
    save_nifti(tmp_path / "images/s01.nii.gz", (8, 8, 4))
    rows = [ROWS[0], "s01,train,2,,F,41,0,A", 's03,val,1,images/s03.nii.gz,M,57,"12,5",B']
    manifest_path, schema_path = write_cohort(tmp_path, rows)

    report = check_cohort(manifest_path, schema_path)

    assert sorted((p.row, p.column) for p in report.problems) == [(2, "subject_id"), (3, "chol"), (3, "cine_path")]
    assert not report.usable


def test_schema_errors_become_problems(tmp_path):
    manifest_path, schema_path = write_cohort(tmp_path)
    schema_path.write_text("name: toy\nlabel: {column: num, rule: threshold, greater_than: 0, classes: [a, b]}\ncolour: red\n")

    report = check_cohort(manifest_path, schema_path)

    assert not report.usable
    assert report.summary is None
    assert [p.file for p in report.problems] == [schema_path, schema_path]
    assert any("colour: unknown key" in p.message for p in report.problems)


def test_missing_column_becomes_problem(tmp_path):
    manifest_path, schema_path = write_cohort(tmp_path, header=HEADER.replace("age", "Age"))

    report = check_cohort(manifest_path, schema_path)

    assert [p.column for p in report.problems] == ["age"]
    assert "Did you mean 'Age'?" in report.problems[0].message


def test_extra_checks_run(cohort):
    def flag_first(manifest):
        return [Problem("warning", manifest.path, "looked at", row=1)]

    report = check_cohort(*cohort, extra_checks=[flag_first])

    assert [p.message for p in report.problems] == ["looked at"]
    assert report.usable


def test_subject_without_any_modality_warned(tmp_path):
    save_nifti(tmp_path / "images/s01.nii.gz", (8, 8, 4))
    save_nifti(tmp_path / "images/s03.nii.gz", (8, 8, 4))
    rows = [*ROWS, "s05,test,1,,NA,,?,B"]
    manifest_path, schema_path = write_cohort(tmp_path, rows)

    report = check_cohort(manifest_path, schema_path)

    assert [(p.severity, p.row) for p in report.problems] == [("warning", 5)]
    assert "subject 's05' has no image and no clinical value" in report.problems[0].message
    assert report.usable


def test_row_order_does_not_change_subject_data(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    in_order = read_manifest(*write_cohort(tmp_path / "a", ROWS))
    shuffled = read_manifest(*write_cohort(tmp_path / "b", [ROWS[2], ROWS[0], ROWS[3], ROWS[1]]))

    first = in_order.frame.set_index("subject_id").drop(columns=["cine_path"])
    second = shuffled.frame.set_index("subject_id").drop(columns=["cine_path"]).loc[first.index]

    pd.testing.assert_frame_equal(first, second)


def dicom_cohort(tmp_path: Path, schema_changes: dict | None = None) -> tuple[Path, Path, Path]:
    """Write a cohort whose subject s03 points at an empty DICOM folder; return manifest, schema, folder."""
    save_nifti(tmp_path / "images/s01.nii.gz", (8, 8, 4))
    folder = tmp_path / "dicom/s03"
    folder.mkdir(parents=True)
    rows = [ROWS[0], ROWS[1], ROWS[2].replace("images/s03.nii.gz", "dicom/s03"), ROWS[3]]
    schema = {**SCHEMA, "images": [{**SCHEMA["images"][0], **(schema_changes or {})}]}
    manifest_path, schema_path = write_cohort(tmp_path, rows, schema=schema)
    return manifest_path, schema_path, folder


def test_series_rule_from_schema_selects_series(tmp_path):
    manifest_path, schema_path, folder = dicom_cohort(tmp_path, {"series_rule": "SAX"})
    volume = np.arange(8 * 8 * 3, dtype=np.uint16).reshape(8, 8, 3)
    write_stack(folder / "sax", volume, [0.0, 8.0, 16.0], description="SAX_TEST")
    write_stack(folder / "loc", volume[:, :, :2], [0.0, 5.0], series_number=2, description="LOC_TEST")

    assert check_cohort(manifest_path, schema_path).usable


def test_slice_gap_fails_the_check(tmp_path):
    manifest_path, schema_path, folder = dicom_cohort(tmp_path)
    volume = np.arange(8 * 8 * 5, dtype=np.uint16).reshape(8, 8, 5)
    files = write_stack(folder, volume, [0.0, 2.0, 4.0, 6.0, 8.0])
    files[2].unlink()

    report = check_cohort(manifest_path, schema_path)

    assert [p.row for p in report.problems] == [3]
    assert "IM0002" in report.problems[0].message


def test_missing_pixel_spacing_fails_unless_assumed(tmp_path):
    manifest_path, schema_path, folder = dicom_cohort(tmp_path)
    volume = np.arange(8 * 8 * 3, dtype=np.uint16).reshape(8, 8, 3)
    write_stack(folder, volume, [0.0, 8.0, 16.0], pixel_spacing=None)
    _, assumed_schema, _ = dicom_cohort(tmp_path / "assumed", {"assume_missing_geometry": True})

    report = check_cohort(manifest_path, schema_path)
    assumed = check_cohort(manifest_path, assumed_schema)

    assert [p.row for p in report.problems] == [3]
    assert "PixelSpacing" in report.problems[0].message
    assert "assume_missing_geometry" in report.problems[0].fix
    assert assumed.usable


def test_nifti_layout_must_fit_kind(tmp_path):
    save_nifti(tmp_path / "images/s01.nii.gz", (8, 8, 4))
    save_nifti(tmp_path / "images/s03.nii.gz", (8, 8, 4))
    schema = {**SCHEMA, "images": [{**SCHEMA["images"][0], "kind": "2d+t"}]}

    report = check_cohort(*write_cohort(tmp_path, ROWS, schema=schema))

    assert [p.row for p in report.problems] == [1, 3]
    assert "does not fit kind '2d+t'" in report.problems[0].message
