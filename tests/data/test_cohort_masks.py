"""Masks written next to a cohort: settings, determinism and what they may mask."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import REPOSITORY_CONFIGS, main
from pipeline.data.cohort_masks import modality_availability, write_cohort_masks
from pipeline.data.cohorts import build_cohort
from pipeline.data.manifest import read_manifest


@pytest.fixture(scope="module")
def cad_slice(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cad_demo")
    return build_cohort("cad_demo", folder, seed=0, limit=60)


def digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def test_masks_are_byte_identical(cad_slice, tmp_path):
    manifest = read_manifest(cad_slice, REPOSITORY_CONFIGS / "cad_demo.yaml")

    write_cohort_masks(manifest, tmp_path / "first")
    write_cohort_masks(manifest, tmp_path / "second")

    assert digests(tmp_path / "first/missingness") == digests(tmp_path / "second/missingness")


def test_default_settings_written(cad_slice, tmp_path):
    manifest = read_manifest(cad_slice, REPOSITORY_CONFIGS / "cad_demo.yaml")

    names = {path.name for path in write_cohort_masks(manifest, tmp_path)}

    assert "modality_eta0.40_seed0.csv" in names
    assert "tabular_value_gamma0.10_seed0.csv" in names
    assert "tabular_feature_gamma1.00_seed0.csv" in names
    assert len(names) == 5 + 2 * 6


def test_masks_only_remove_what_exists(cad_slice, tmp_path):
    manifest = read_manifest(cad_slice, REPOSITORY_CONFIGS / "cad_demo.yaml")
    write_cohort_masks(manifest, tmp_path, etas=[0.8], gammas=[0.5], modes=["value"])
    modalities = pd.read_csv(tmp_path / "missingness/modality_eta0.80_seed0.csv", dtype={"subject_id": str})
    values = pd.read_csv(tmp_path / "missingness/tabular_value_gamma0.50_seed0.csv", dtype={"subject_id": str})
    names, available = modality_availability(manifest)
    columns = list(manifest.schema.clinical_columns)
    already_missing = manifest.frame[columns].isna().to_numpy()

    kept = available & (modalities[names].to_numpy() == 0)

    assert modalities["subject_id"].tolist() == manifest.subject_ids
    assert not (modalities[names].to_numpy().astype(bool) & ~available).any()
    assert kept.any(axis=1)[available.any(axis=1)].all()
    assert not (values[columns].to_numpy().astype(bool) & already_missing).any()
    assert values[columns].to_numpy().sum() == int((~already_missing).sum() * 0.5)


def test_build_cohort_command_writes_masks(tmp_path):
    status = main(["build-cohort", "uci_heart", "--output", str(tmp_path / "uci")])

    assert status == 0
    assert (tmp_path / "uci/missingness/tabular_feature_gamma0.30_seed0.csv").is_file()
    assert (tmp_path / "uci/missingness/modality_eta0.20_seed0.csv").is_file()


def test_write_masks_command_rejects_unusable_manifest(tmp_path, capsys):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("subject_id,split\ns1,train\n")

    status = main(["write-masks", "--manifest", str(manifest), "--schema", str(REPOSITORY_CONFIGS / "uci_heart.yaml")])

    assert status == 1
    assert "cannot write missingness masks" in capsys.readouterr().err


def test_bad_rate_writes_no_mask(cad_slice, tmp_path):
    manifest = read_manifest(cad_slice, REPOSITORY_CONFIGS / "cad_demo.yaml")

    with pytest.raises(ValueError, match="gamma"):
        write_cohort_masks(manifest, tmp_path, gammas=[0.1, -0.1])

    assert not (tmp_path / "missingness").exists()
