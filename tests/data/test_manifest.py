"""Tests for reading a manifest CSV with a cohort schema."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.data.manifest import ManifestError, read_manifest
from pipeline.data.schema import load_schema

SCHEMA = {
    "name": "toy",
    "missing_tokens": ["", "NA", "?"],
    "label": {"column": "num", "rule": "threshold", "greater_than": 0, "classes": ["healthy", "disease"]},
    "images": [{"modality": "cine", "column": "cine_path", "kind": "3d"}],
    "tabular": [
        {
            "modality": "clinical",
            "categorical": [{"column": "sex", "levels": ["M", "F"]}],
            "continuous": [{"column": "age", "unit": "years", "min": 0, "max": 120}],
        },
        {"modality": "lab", "continuous": [{"column": "chol", "unit": "mg/dl", "zero_is_missing": True, "min": 0, "max": 700}]},
    ],
}

HEADER = "subject_id,split,num,cine_path,sex,age,chol,site"
ROWS = [
    "s01,train,0,images/s01.nii.gz,M,63,233,A",
    "s02,train,2,,F,41,0,A",
    "s03,val,1,images/s03.nii.gz,NA,57.5,?,B",
    "s04,test,0,,M,,250,B",
]


def write_cohort(folder: Path, rows: list[str] = ROWS, header: str = HEADER, schema: dict = SCHEMA) -> tuple[Path, Path]:
    """Write ``manifest.csv`` and ``schema.yaml`` into ``folder``; return both paths."""
    manifest_path = folder / "manifest.csv"
    manifest_path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    schema_path = folder / "schema.yaml"
    schema_path.write_text(yaml.safe_dump(schema), encoding="utf-8")
    return manifest_path, schema_path


def read(tmp_path: Path, rows: list[str] = ROWS, header: str = HEADER, **options):
    manifest_path, schema_path = write_cohort(tmp_path, rows, header)
    return read_manifest(manifest_path, load_schema(schema_path), **options)


def test_valid_manifest_parsed(tmp_path):
    manifest = read(tmp_path)
    frame = manifest.frame

    assert manifest.problems == []
    assert manifest.subject_ids == ["s01", "s02", "s03", "s04"]
    assert frame["split"].tolist() == ["train", "train", "val", "test"]
    assert frame["label"].tolist() == [0, 1, 1, 0]
    assert frame["cine_path"][0] == (tmp_path / "images/s01.nii.gz").resolve()
    assert frame["cine_path"][1] is None
    assert frame["sex"][2] is pd.NA
    assert frame["sex"].tolist()[:2] == ["M", "F"]
    assert frame["age"].dtype == "float64"
    assert math.isnan(frame["age"][3])
    assert frame["age"][2] == 57.5
    assert math.isnan(frame["chol"][1])  # zero_is_missing
    assert math.isnan(frame["chol"][2])  # missing token "?"
    assert manifest.extra_columns == ("site",)
    assert list(manifest.tabular("lab").columns) == ["chol"]


def test_byte_order_mark_accepted(tmp_path):
    manifest_path, schema_path = write_cohort(tmp_path)
    manifest_path.write_bytes(b"\xef\xbb\xbf" + manifest_path.read_bytes())

    manifest = read_manifest(manifest_path, schema_path)

    assert manifest.subject_ids[0] == "s01"
    assert manifest.problems == []


def test_non_utf8_names_byte_offset(tmp_path):
    manifest_path, schema_path = write_cohort(tmp_path)
    text = manifest_path.read_text(encoding="utf-8").replace("s02,train,2,,F", "s02,train,2,,Prä-OP")
    manifest_path.write_bytes(text.encode("cp1252"))
    offset = text.encode("cp1252").index("ä".encode("cp1252"))

    with pytest.raises(ValueError, match=rf"manifest.csv is not UTF-8: .* byte offset {offset} \(line 3\).*UTF-8"):
        read_manifest(manifest_path, schema_path)


def test_empty_file(tmp_path):
    manifest_path, schema_path = write_cohort(tmp_path)
    manifest_path.write_bytes(b"")

    with pytest.raises(ValueError, match="manifest.csv is empty"):
        read_manifest(manifest_path, schema_path)


def test_header_only(tmp_path):
    with pytest.raises(ValueError, match="has a header but no data rows"):
        read(tmp_path, rows=[])


def test_semicolon_separator_rejected(tmp_path):
    with pytest.raises(ValueError, match="comma-separated, not semicolon-separated"):
        read(tmp_path, header=HEADER.replace(",", ";"), rows=[row.replace(",", ";") for row in ROWS])


def test_missing_column_suggests_match(tmp_path):
    header = HEADER.replace("chol", "Cholesterol").replace("num", "nmu")

    with pytest.raises(ManifestError) as raised:
        read(tmp_path, header=header)

    messages = [problem.message for problem in raised.value.problems]
    assert len(messages) == 2
    assert "required label column 'num' is missing" in messages[0]
    assert "Did you mean 'nmu'?" in messages[0]
    assert "'subject_id', 'split'" in messages[0]
    assert "Did you mean 'Cholesterol'?" not in messages[1]  # too far from 'chol' for a guess


def test_missing_column_case_match(tmp_path):
    with pytest.raises(ManifestError, match="Did you mean 'AGE'"):
        read(tmp_path, header=HEADER.replace("age", "AGE"))


def test_duplicate_subject_id(tmp_path):
    rows = [*ROWS, "s02,test,0,,M,50,200,A"]

    problems = read(tmp_path, rows=rows).problems

    assert len(problems) == 1
    assert problems[0].row == 5
    assert problems[0].column == "subject_id"
    assert "repeats the id of row 2" in problems[0].message


@pytest.mark.parametrize(("cell", "reason"), [("12,5", "decimal comma"), ("1.234,5", "thousands separator")])
def test_bad_number_format(tmp_path, cell, reason):
    rows = [*ROWS[:3], f's04,test,0,,M,,"{cell}",B']

    manifest = read(tmp_path, rows=rows)

    assert len(manifest.problems) == 1
    problem = manifest.problems[0]
    assert (problem.severity, problem.row, problem.column, problem.value) == ("error", 4, "chol", cell)
    assert reason in problem.message
    assert "row 4 (spreadsheet row 5)" in str(problem)
    assert math.isnan(manifest.frame["chol"][3])


def test_out_of_range_read_as_missing(tmp_path):
    rows = [*ROWS[:3], "s04,test,0,,M,130,250,B"]

    manifest = read(tmp_path, rows=rows)

    assert [(p.severity, p.row, p.column) for p in manifest.problems] == [("warning", 4, "age")]
    assert "outside the plausible range [0.0, 120.0]" in manifest.problems[0].message
    assert math.isnan(manifest.frame["age"][3])


def test_unknown_level_read_as_missing(tmp_path):
    rows = [*ROWS[:3], "s04,test,0,,X,50,250,B"]

    manifest = read(tmp_path, rows=rows)

    assert [(p.severity, p.row, p.column, p.value) for p in manifest.problems] == [("warning", 4, "sex", "X")]
    assert manifest.frame["sex"][3] is pd.NA


def test_level_case_and_spaces_ignored(tmp_path):
    rows = [*ROWS[:3], "s04,test,0,,f ,50,250,B"]

    manifest = read(tmp_path, rows=rows)

    assert manifest.problems == []
    assert manifest.frame["sex"][3] == "F"


def test_bad_label_and_split(tmp_path):
    rows = [*ROWS[:2], "s03,validation,,,M,50,250,B", "s04,test,yes,,M,50,250,B"]

    manifest = read(tmp_path, rows=rows)

    assert [(p.row, p.column) for p in manifest.problems] == [(3, "split"), (3, "num"), (4, "num")]
    assert "label value is missing" in manifest.problems[1].message
    assert "'yes' is not a number" in manifest.problems[2].message
    assert manifest.frame["label"].isna().tolist() == [False, False, True, True]


def test_three_faults_reported_together(tmp_path):
    rows = [ROWS[0], "s01,train,2,,F,41,0,A", "s03,val,1,,M,57,\"12,5\",B", "s04,test,0,,M,200,250,B"]

    manifest = read(tmp_path, rows=rows)

    assert sorted((p.row, p.column) for p in manifest.problems) == [(2, "subject_id"), (3, "chol"), (4, "age")]


def test_strict_raises_with_every_problem(tmp_path):
    rows = [ROWS[0], "s01,train,2,,F,41,0,A", "s03,val,1,,M,57,\"12,5\",B"]

    with pytest.raises(ManifestError) as raised:
        read(tmp_path, rows=rows, strict=True)

    assert len(raised.value.problems) == 2
    assert "2 problem(s)" in str(raised.value)


def test_absent_split_and_image_columns(tmp_path):
    header = "subject_id,num,sex,age,chol"
    rows = ["s01,0,M,63,233", "s02,1,F,41,250"]

    manifest = read(tmp_path, rows=rows, header=header)

    assert manifest.has_split_column is False
    assert set(manifest.frame["split"]) <= {"train", "val", "test"}
    assert manifest.frame["cine_path"].tolist() == [None, None]
    assert [(p.severity, p.column) for p in manifest.problems] == [("warning", "cine_path")]


def test_drawn_split_is_seeded_and_stratified(tmp_path):
    header = "subject_id,num,sex,age,chol"
    rows = [f"s{index:02d},{index % 2},M,60,200" for index in range(40)]

    first = read(tmp_path, rows=rows, header=header)
    again = read(tmp_path, rows=rows, header=header)
    splits = first.frame["split"]

    assert splits.tolist() == again.frame["split"].tolist()
    assert splits.value_counts().to_dict() == {"train": 24, "val": 8, "test": 8}
    for split in ("train", "val", "test"):
        labels = first.frame.loc[splits == split, "label"]
        assert (labels == 0).sum() == (labels == 1).sum()
