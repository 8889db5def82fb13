"""Manifest rows to items, batches and a forward pass of the network, on a slice of cad_demo."""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose

from pipeline.cli import REPOSITORY_CONFIGS
from pipeline.data.cohorts import build_cohort
from pipeline.data.dataset import fit_tabular_encoders, presence_matrix, subject_items, tabular_encoder_for
from pipeline.data.manifest import read_manifest
from pipeline.data.transforms import LoadModalityImaged, MarkAbsentModalityd, image_preprocessing
from pipeline.networks import MaskedFusionTransformer


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cad_demo")
    return read_manifest(build_cohort("cad_demo", folder, seed=0, limit=60), REPOSITORY_CONFIGS / "cad_demo.yaml")


def test_encoder_from_schema_keeps_levels(manifest):
    encoder = tabular_encoder_for(manifest.schema, "clinical")

    assert encoder.categorical_levels["sex"] == ["Male", "Female"]
    assert len(encoder.continuous_columns) == 5


def test_encoders_fit_on_train_rows_only(manifest):
    encoders = fit_tabular_encoders(manifest)
    train = manifest.frame[manifest.frame["split"] == "train"]

    assert encoders["clinical"].mean_[0] == pytest.approx(train["age"].mean())


def test_items_and_batches_reach_the_network(manifest, tmp_path):
    encoders = fit_tabular_encoders(manifest)
    items = subject_items(manifest, encoders, split="train")
    transform = Compose(
        [
            LoadModalityImaged(keys=["cine"], cache_dir=tmp_path / "cache", kind="2d+t"),
            MarkAbsentModalityd(keys=["cine"], spatial_shape=(32, 32, 8)),
            image_preprocessing(keys=["cine"], spatial_shape=(32, 32, 8), kind="2d+t"),
        ]
    )
    loader = DataLoader(Dataset(items, transform), batch_size=len(items))
    batch = next(iter(loader))
    present = presence_matrix(batch, ["cine", "clinical"])
    torch.manual_seed(0)
    network = MaskedFusionTransformer(
        [
            {"name": "cine", "encoder": "image", "kind": "2d+t", "backbone": "resnet10", "widths": [4, 8, 8, 16], "token_grid": [2, 2, 1]},
            {"name": "clinical", "encoder": "tabular", "categorical_cardinalities": list(encoders["clinical"].cardinalities), "num_continuous": 5, "dim": 8, "heads": 2},
        ],
        num_classes=2,
        dim=16,
        heads=4,
    ).eval()

    logits, _ = network({"cine": batch["cine"], "clinical": batch["clinical"]}, present)

    assert batch["subject_id"] == [item["subject_id"] for item in items]
    assert present.shape == (len(items), 2)
    assert present[:, 0].tolist() == [item["cine"] is not None for item in items]
    assert bool(present[:, 1].all())
    assert torch.isfinite(logits).all()


def test_presence_matrix_names_missing_flag():
    with pytest.raises(KeyError, match=r"no flag for modalities \['clinical'\]"):
        presence_matrix({"present": {"cine": torch.ones(2, dtype=torch.bool)}}, ["cine", "clinical"])


def test_fit_without_train_rows(manifest):
    with pytest.raises(ValueError, match="no subject is in split 'holdout'"):
        fit_tabular_encoders(manifest, split="holdout")
