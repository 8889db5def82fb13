"""Tests for loading and validating cohort schema files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.data.schema import LabelRule, SchemaError, load_schema, parse_number

VALID = {
    "name": "toy",
    "missing_tokens": ["", "NA", "?"],
    "label": {"column": "num", "rule": "threshold", "greater_than": 0, "classes": ["healthy", "disease"]},
    "images": [{"modality": "cine", "column": "cine_path", "kind": "2d+t"}],
    "tabular": [
        {
            "modality": "clinical",
            "categorical": [{"column": "sex", "levels": ["M", "F"]}, {"column": "cp"}],
            "continuous": [{"column": "age", "unit": "years", "min": 0, "max": 120}],
        },
        {"modality": "lab", "continuous": [{"column": "chol", "zero_is_missing": True, "min": 0, "max": 700}]},
    ],
}


def write_schema(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def edited(**changes: object) -> dict:
    document = yaml.safe_load(yaml.safe_dump(VALID))
    document.update(changes)
    return document


def test_valid_schema_fields(tmp_path):
    schema = load_schema(write_schema(tmp_path, VALID))

    assert schema.name == "toy"
    assert schema.subject_id_column == "subject_id"
    assert schema.split_column == "split"
    assert schema.missing_tokens == ("", "NA", "?")
    assert schema.modality_names == ("cine", "clinical", "lab")
    assert schema.tabular_columns("clinical") == ("sex", "cp", "age")
    assert schema.tabular[0].categorical[0].levels == ("M", "F")
    assert schema.tabular[0].categorical[1].levels is None
    assert schema.tabular[1].continuous[0].zero_is_missing is True
    assert schema.images[0].kind == "2d+t"


def test_unknown_key_named_by_path(tmp_path):
    document = edited()
    document["tabular"][1]["continuous"][0]["maximum"] = 5

    with pytest.raises(SchemaError) as raised:
        load_schema(write_schema(tmp_path, document))

    assert ("tabular[1].continuous[0].maximum", "unknown key; allowed keys here: column, max, min, unit, zero_is_missing") in raised.value.errors
    assert "schema.yaml" in str(raised.value)


def test_every_error_listed_at_once(tmp_path):
    document = edited()
    del document["name"]
    document["tabular"][1]["continuous"][0]["min"] = "zero"
    document["images"][0]["kind"] = "4d"

    with pytest.raises(SchemaError) as raised:
        load_schema(write_schema(tmp_path, document))

    key_paths = [key_path for key_path, _ in raised.value.errors]
    assert "name" in key_paths
    assert "tabular[1].continuous[0].min" in key_paths
    assert "images[0].kind" in key_paths


def test_duplicate_column_across_modalities(tmp_path):
    document = edited()
    document["tabular"][1]["continuous"].append({"column": "age"})

    with pytest.raises(SchemaError) as raised:
        load_schema(write_schema(tmp_path, document))

    assert raised.value.errors[0][0] == "tabular[1].continuous[1].column"
    assert "tabular[0].continuous[0].column" in raised.value.errors[0][1]


@pytest.mark.parametrize(
    ("label", "key_path"),
    [
        ({"column": "num", "rule": "guess", "classes": ["a", "b"]}, "label.rule"),
        ({"column": "num", "rule": "threshold", "classes": ["a", "b"]}, "label.greater_than"),
        ({"column": "num", "rule": "threshold", "greater_than": 0, "classes": ["a", "b", "c"]}, "label.classes"),
        ({"column": "num", "rule": "map", "values": {"yes": 2}, "classes": ["a", "b"]}, "label.values.yes"),
        ({"column": "num", "rule": "identity", "classes": ["a"]}, "label.classes"),
    ],
)
def test_bad_label_rule(tmp_path, label, key_path):
    with pytest.raises(SchemaError) as raised:
        load_schema(write_schema(tmp_path, edited(label=label)))

    assert key_path in [path for path, _ in raised.value.errors]


def test_min_greater_than_max(tmp_path):
    document = edited()
    document["tabular"][0]["continuous"][0]["min"] = 200

    with pytest.raises(SchemaError, match=r"tabular\[0\]\.continuous\[0\]\.min: min 200.0 is greater than max 120.0"):
        load_schema(write_schema(tmp_path, document))


def test_no_modality_rejected(tmp_path):
    document = edited()
    del document["images"], document["tabular"]

    with pytest.raises(SchemaError, match="declares no modality"):
        load_schema(write_schema(tmp_path, document))


def test_missing_schema_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.yaml"):
        load_schema(tmp_path / "absent.yaml")


def test_label_rules_apply():
    threshold = LabelRule("num", "threshold", ("no", "yes"), greater_than=0)
    mapping = LabelRule("dx", "map", ("no", "yes"), values=(("healthy", 0), ("sick", 1)))
    identity = LabelRule("y", "identity", ("a", "b", "c"))

    assert threshold.apply(["0", "1", "3", "0.0"]) == [0, 1, 1, 0]
    assert mapping.apply([" sick", "healthy"]) == [1, 0]
    assert identity.apply(["2", "0", "1.0"]) == [2, 0, 1]


def test_label_apply_lists_failed_rows():
    identity = LabelRule("y", "identity", ("a", "b"))

    with pytest.raises(ValueError, match=r"2 value\(s\): row 2: '5' .*; row 3: 'x' is not a number"):
        identity.apply(["1", "5", "x"])


@pytest.mark.parametrize(
    ("text", "expected"), [("12.5", 12.5), (" -3 ", -3.0), ("1e3", 1000.0), (".5", 0.5), ("1.234", 1.234)]
)
def test_parse_number_plain(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("12,5", "decimal comma"),
        ("63,0", "decimal comma"),
        ("1.234,5", "thousands separator"),
        ("1,234", "thousands separator"),
        ("1 234", "thousands separator"),
        ("nan", "not a number"),
        ("inf", "not a number"),
        ("12 mg", "not a number"),
    ],
)
def test_parse_number_rejects(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_number(text)
