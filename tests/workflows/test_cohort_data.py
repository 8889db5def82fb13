"""Cohort access of the bundle workflows on a 40-subject slice of cad_demo."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline.cli import REPOSITORY_CONFIGS
from pipeline.data.cohort_masks import MASK_FOLDER, write_cohort_masks
from pipeline.data.cohorts import build_cohort
from pipeline.data.manifest import Manifest, read_manifest
from pipeline.workflows.cohort_data import (
    CohortLayout,
    SplitLoader,
    cohort_layout,
    fit_encoders,
    load_encoders,
    manifest_digest,
    open_cohort,
    read_table_mask,
    save_encoders,
    split_data,
)

SCHEMA = REPOSITORY_CONFIGS / "cad_demo.yaml"
SPATIAL_SHAPE = (32, 32, 8)


@pytest.fixture(scope="module")
def cohort_path(tmp_path_factory) -> Path:
    """Manifest path of a cad_demo slice, built once for the module (building takes several seconds)."""
    return build_cohort("cad_demo", tmp_path_factory.mktemp("cad_demo"), seed=0, limit=40)


@pytest.fixture(scope="module")
def manifest(cohort_path) -> Manifest:
    return read_manifest(cohort_path, SCHEMA)


@pytest.fixture(scope="module")
def layout(manifest) -> CohortLayout:
    return cohort_layout(manifest, SPATIAL_SHAPE)


def split_ids(manifest: Manifest, split: str) -> list[str]:
    frame = manifest.frame
    return frame.loc[frame[manifest.split_column] == split, manifest.schema.subject_id_column].astype(str).tolist()


# open_cohort


def test_open_cohort_missing_manifest(tmp_path):
    path = tmp_path / "absent" / "manifest.csv"

    with pytest.raises(FileNotFoundError) as raised:
        open_cohort(path, SCHEMA, build_if_missing=None)

    assert str(path) in str(raised.value)
    assert "build-cohort" in str(raised.value)
    assert not path.parent.exists()


def test_open_cohort_reads_existing(cohort_path, manifest):
    opened = open_cohort(cohort_path, SCHEMA, build_if_missing="cad_demo")

    assert opened.subject_ids == manifest.subject_ids
    assert opened.schema.name == "cad_demo"


# cohort_layout


def test_layout_of_cad_demo(layout):
    assert layout.image == "cine"
    assert layout.table == "clinical"
    assert layout.kind == "2d+t"
    assert layout.spatial_shape == SPATIAL_SHAPE
    assert layout.modality_names == ["cine", "clinical"]


def test_layout_rejects_two_tables(tmp_path):
    uci_heart = read_manifest(build_cohort("uci_heart", tmp_path, seed=0, limit=40), REPOSITORY_CONFIGS / "uci_heart.yaml")

    with pytest.raises(ValueError) as raised:
        cohort_layout(uci_heart, SPATIAL_SHAPE)

    message = str(raised.value)
    assert "exactly one image modality and one tabular modality" in message
    assert "imaging_derived" in message
    assert "clinical" in message


# manifest_digest


def test_manifest_digest_is_file_sha256(cohort_path, manifest):
    assert manifest_digest(manifest) == hashlib.sha256(cohort_path.read_bytes()).hexdigest()


# save_encoders and load_encoders


def test_encoders_round_trip(manifest, tmp_path):
    encoders = fit_encoders(manifest)
    path = save_encoders(encoders, tmp_path / "models" / "tabular_encoders.json")

    loaded = load_encoders(path, manifest)

    assert sorted(loaded) == ["clinical"]
    assert loaded["clinical"].to_dict() == encoders["clinical"].to_dict()
    columns = list(manifest.schema.tabular_columns("clinical"))
    expected = encoders["clinical"].transform(manifest.frame[columns]).to_tensors()
    found = loaded["clinical"].transform(manifest.frame[columns]).to_tensors()
    for key in expected:
        assert torch.equal(found[key], expected[key]), key
    assert not path.with_name(path.name + ".partial").exists()
    assert json.loads(path.read_text(encoding="utf-8")).keys() == {"clinical"}


def test_load_encoders_other_columns(manifest, cohort_path, tmp_path):
    document = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    continuous = document["tabular"][0]["continuous"]
    document["tabular"][0]["continuous"] = [entry for entry in continuous if entry["column"] != "oldpeak"]
    narrow_schema = tmp_path / "narrow.yaml"
    narrow_schema.write_text(yaml.safe_dump(document), encoding="utf-8")
    narrow = read_manifest(cohort_path, narrow_schema)
    path = save_encoders(fit_encoders(narrow), tmp_path / "tabular_encoders.json")

    with pytest.raises(ValueError) as raised:
        load_encoders(path, manifest)

    message = str(raised.value)
    assert str(path) in message
    assert "'clinical'" in message
    assert "oldpeak" in message
    assert "train.json" in message


def test_load_encoders_missing_table(manifest, tmp_path):
    path = save_encoders(fit_encoders(manifest), tmp_path / "tabular_encoders.json")
    uci_heart = read_manifest(build_cohort("uci_heart", tmp_path / "uci", seed=0, limit=40), REPOSITORY_CONFIGS / "uci_heart.yaml")

    with pytest.raises(ValueError, match="imaging_derived"):
        load_encoders(path, uci_heart)


def test_load_encoders_missing_file(manifest, tmp_path):
    path = tmp_path / "tabular_encoders.json"

    with pytest.raises(FileNotFoundError) as raised:
        load_encoders(path, manifest)

    assert str(path) in str(raised.value)
    assert "train.json" in str(raised.value)


# read_table_mask


def test_table_mask_gamma_zero_needs_no_file(manifest, tmp_path):
    columns = list(manifest.schema.tabular_columns("clinical"))
    subjects = manifest.subject_ids[:7]

    mask = read_table_mask(tmp_path / "no_cohort_here", manifest, columns, subjects, 0.0)

    assert mask.shape == (7, len(columns))
    assert mask.dtype == bool
    assert not mask.any()


def test_table_mask_missing_file(manifest, tmp_path):
    columns = list(manifest.schema.tabular_columns("clinical"))

    with pytest.raises(FileNotFoundError) as raised:
        read_table_mask(tmp_path, manifest, columns, manifest.subject_ids, 0.5)

    message = str(raised.value)
    assert "write-masks" in message
    assert str(tmp_path / MASK_FOLDER / "tabular_value_gamma0.50_seed0.csv") in message


@pytest.mark.parametrize("mode", ["value", "feature"])
def test_table_mask_read_in_given_order(manifest, tmp_path, mode):
    write_cohort_masks(manifest, tmp_path, etas=[], gammas=[0.5], modes=[mode])
    saved = pd.read_csv(tmp_path / MASK_FOLDER / f"tabular_{mode}_gamma0.50_seed0.csv", dtype={"subject_id": str})
    saved = saved.set_index("subject_id")
    columns = list(reversed(manifest.schema.tabular_columns("clinical")))
    subjects = list(reversed(split_ids(manifest, "test")))

    mask = read_table_mask(tmp_path, manifest, columns, subjects, 0.5, mode=mode)

    expected = saved.loc[subjects, columns].to_numpy().astype(bool)
    assert mask.dtype == bool
    assert mask.shape == (len(subjects), len(columns))
    assert np.array_equal(mask, expected)
    assert mask.any()


def test_table_mask_other_seed_is_other_file(manifest, tmp_path):
    write_cohort_masks(manifest, tmp_path, etas=[], gammas=[0.5], modes=["value"], seeds=[0])
    columns = list(manifest.schema.tabular_columns("clinical"))

    with pytest.raises(FileNotFoundError, match="seed1"):
        read_table_mask(tmp_path, manifest, columns, manifest.subject_ids, 0.5, seed=1)


# SplitLoader and split_data


def test_loader_batches(manifest, layout, tmp_path):
    loader = SplitLoader(manifest, fit_encoders(manifest), layout, tmp_path / "cache", batch_size=8)

    batches = list(loader.loader("train"))

    train_ids = split_ids(manifest, "train")
    assert [len(batch["label"]) for batch in batches] == [8, 8, 8]
    for batch in batches:
        size = len(batch["label"])
        assert batch["present"].shape == (size, 2)
        assert batch["present"].dtype == torch.bool
        assert tuple(batch["cine"].shape) == (size, 1, *SPATIAL_SHAPE)
        assert torch.isfinite(batch["cine"]).all()
        assert set(batch["clinical"]) == {"categorical", "continuous", "missing_values"}
    assert [subject for batch in batches for subject in batch["subject_id"]] == train_ids


def test_loader_marks_absent_image(manifest, cohort_path, layout, tmp_path):
    frame = pd.read_csv(cohort_path, dtype=str, keep_default_na=False)
    first_train = frame.index[frame["split"] == "train"][0]
    frame.loc[first_train, "cine_path"] = ""
    edited = cohort_path.with_name("manifest_without_one_cine.csv")
    frame.to_csv(edited, index=False)
    without_cine = read_manifest(edited, SCHEMA)
    loader = SplitLoader(without_cine, fit_encoders(without_cine), layout, tmp_path / "cache", batch_size=4)

    batch = next(iter(loader.loader("train")))

    assert batch["subject_id"][0] == frame.loc[first_train, "subject_id"]
    assert batch["present"][:, 0].tolist() == [False, True, True, True]
    assert batch["present"][:, 1].all()
    assert not batch["cine"][0].any()
    assert tuple(batch["cine"].shape) == (4, 1, *SPATIAL_SHAPE)


def test_loader_unknown_split(manifest, layout, tmp_path):
    loader = SplitLoader(manifest, fit_encoders(manifest), layout, tmp_path / "cache")

    with pytest.raises(ValueError, match="'holdout'"):
        loader.items("holdout")


def test_split_data_joins_batches(manifest, layout, tmp_path):
    loader = SplitLoader(manifest, fit_encoders(manifest), layout, tmp_path / "cache", batch_size=3)
    batches = loader.preload("test")

    data = split_data(batches, layout)

    test_ids = split_ids(manifest, "test")
    columns = len(manifest.schema.tabular_columns("clinical"))
    assert data.subject_ids == test_ids
    assert data.labels.dtype == torch.int64
    assert data.labels.shape == (len(test_ids),)
    assert data.present.shape == (len(test_ids), 2)
    assert data.table["missing_values"].shape == (len(test_ids), columns)
    assert torch.equal(data.table["continuous"], torch.cat([batch["clinical"]["continuous"] for batch in batches]))
    expected_labels = manifest.frame.set_index(manifest.schema.subject_id_column).loc[test_ids, "label"]
    assert data.labels.tolist() == [int(label) for label in expected_labels]


def test_split_loader_limit_spreads_subjects(manifest, layout, tmp_path):
    loader = SplitLoader(manifest, fit_encoders(manifest), layout, tmp_path / "cache")
    everyone = [item["subject_id"] for item in loader.items("train")]

    chosen = [item["subject_id"] for item in loader.items("train", limit=5)]

    assert len(chosen) == 5
    assert chosen[0] == everyone[0]
    assert chosen[-1] == everyone[-1]
    assert chosen == [subject for subject in everyone if subject in chosen]
