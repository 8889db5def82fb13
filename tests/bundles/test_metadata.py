"""Each bundle's metadata.json: present, parseable, and consistent with the pinned versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
BUNDLES = ["cad", "polymnist"]


def pinned_versions() -> dict[str, str]:
    pins = {}
    for line in (REPOSITORY / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_matches_pins(bundle):
    metadata = json.loads((REPOSITORY / "bundles" / bundle / "metadata.json").read_text())
    pins = pinned_versions()

    assert metadata["version"] in metadata["changelog"]
    assert metadata["monai_version"] == pins["monai"]
    assert metadata["pytorch_version"] == pins["torch"]
    assert metadata["numpy_version"] == pins["numpy"]
    for package, version in metadata["required_packages_version"].items():
        if package in pins:
            assert version == pins[package], package
    assert {"inputs", "outputs"} <= set(metadata["network_data_format"])


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_has_its_files(bundle):
    folder = REPOSITORY / "bundles" / bundle
    for name in ("train.json", "inference.json", "metadata.json", "logging.conf", "docs/README.md"):
        assert (folder / name).is_file(), name
