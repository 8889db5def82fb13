"""Fixtures shared by the bundle tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import REPOSITORY_CONFIGS
from pipeline.data.cohort_masks import write_cohort_masks
from pipeline.data.cohorts import build_cohort
from pipeline.data.manifest import read_manifest


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    """Return the folder of a 60-subject cad_demo slice with its masks, built once per session.

    Tests only read it. A test that breaks files works on a copy (see test_bundle_faults.py).
    """
    folder = tmp_path_factory.mktemp("cad_slice")
    manifest = build_cohort("cad_demo", folder, seed=0, limit=60)
    write_cohort_masks(read_manifest(manifest, REPOSITORY_CONFIGS / "cad_demo.yaml"), folder)
    return folder
