"""Network configurations of the two bundles, with random inputs, labels and missing-modality patterns.

The hyper-parameters of the image encoders, the table encoder and the fusion transformer are read
from ``bundles/cad/train.json`` and ``bundles/polymnist/train.json``, so the benchmarks follow the
bundles. The table layout (six categorical columns with 2, 4, 2, 3, 2 and 3 levels, five
continuous columns) is the one of ``configs/cad_demo.yaml``. Networks keep their random initial
weights: the benchmarks measure cost, not accuracy.

Shape letters: ``B`` batch, ``M`` modalities.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.networks import MaskedFusionTransformer

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent

CAD_CATEGORICAL_CARDINALITIES = [2, 4, 2, 3, 2, 3]
CAD_NUM_CONTINUOUS = 5
CAD_IMAGE_SHAPE = (1, 64, 64, 16)  # (C, H, W, T): one cine slice of 16 frames
DIGITS_IMAGE_SHAPE = (1, 28, 28)
DIGITS_MODALITIES = ["m0", "m1", "m2", "m3", "m4"]


@dataclass(frozen=True)
class BenchmarkConfiguration:
    """A network builder and a random-input builder for one bundle.

    Attributes:
        name: short label used in tables (``"cad"``, ``"digits"``).
        build_network: returns the untrained network for an embedding kind.
        make_inputs: returns per modality name the inputs of ``B`` random subjects.
        num_classes: classes ``K``.
        calibration: calibration rule the authors pair with this data and embedding.
        embedding: embedding kind of the benchmarked network.
    """

    name: str
    build_network: Callable[[str], MaskedFusionTransformer]
    make_inputs: Callable[[int, torch.Generator], dict[str, Any]]
    num_classes: int
    calibration: str
    embedding: str


def bundle_settings(bundle: str) -> dict[str, Any]:
    """Read ``bundles/<bundle>/train.json``."""
    path = REPOSITORY_ROOT / "bundles" / bundle / "train.json"
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def build_cad_network(embedding: str) -> MaskedFusionTransformer:
    """Build the CAD network: a ``2d+t`` ResNet cine encoder and the tabular tokeniser."""
    settings = bundle_settings("cad")
    modalities = [
        {"name": "cine", "encoder": "image", "kind": "2d+t", **settings["image_encoder"]},
        {
            "name": "clinical",
            "encoder": "tabular",
            "categorical_cardinalities": CAD_CATEGORICAL_CARDINALITIES,
            "num_continuous": CAD_NUM_CONTINUOUS,
            **settings["table_encoder"],
        },
    ]
    return MaskedFusionTransformer(modalities, num_classes=2, embedding=embedding, **settings["fusion"])


def make_cad_inputs(batch_size: int, generator: torch.Generator) -> dict[str, Any]:
    """Draw random cine images ``(B, 1, 64, 64, 16)`` and complete random tables."""
    categorical = torch.stack(
        [torch.randint(levels, (batch_size,), generator=generator) for levels in CAD_CATEGORICAL_CARDINALITIES], dim=1
    )
    num_columns = len(CAD_CATEGORICAL_CARDINALITIES) + CAD_NUM_CONTINUOUS
    return {
        "cine": torch.randn(batch_size, *CAD_IMAGE_SHAPE, generator=generator),
        "clinical": {
            "categorical": categorical,
            "continuous": torch.randn(batch_size, CAD_NUM_CONTINUOUS, generator=generator),
            "missing_values": torch.zeros(batch_size, num_columns, dtype=torch.bool),
        },
    }


def build_digits_network(embedding: str) -> MaskedFusionTransformer:
    """Build the five-modality digits network: one small-stem ``2d`` ResNet per modality."""
    settings = bundle_settings("polymnist")
    modalities = [{"name": name, "encoder": "image", "kind": "2d", **settings["image_encoder"]} for name in DIGITS_MODALITIES]
    return MaskedFusionTransformer(modalities, num_classes=10, embedding=embedding, **settings["fusion"])


def make_digits_inputs(batch_size: int, generator: torch.Generator) -> dict[str, Any]:
    """Draw five random grey images ``(B, 1, 28, 28)``."""
    return {name: torch.randn(batch_size, *DIGITS_IMAGE_SHAPE, generator=generator) for name in DIGITS_MODALITIES}


# Calibration rules of the bundles: "ratio" in bundles/cad/inference.json, and "log_ratio" for cosine
# embeddings in pipeline.workflows.image_modalities.DEFAULT_CALIBRATION (the digits bundle).
CAD = BenchmarkConfiguration("cad", build_cad_network, make_cad_inputs, 2, "ratio", "euclidean")
DIGITS = BenchmarkConfiguration("digits", build_digits_network, make_digits_inputs, 10, "log_ratio", "cosine")
CONFIGURATIONS = {"cad": CAD, "digits": DIGITS}


def make_batch(
    configuration: BenchmarkConfiguration, batch_size: int, generator: torch.Generator, first_label: int = 0
) -> dict[str, Any]:
    """Make a complete training batch: random inputs, every modality present, labels cycling from ``first_label``."""
    batch = configuration.make_inputs(batch_size, generator)
    num_modalities = len(batch)
    batch["present"] = torch.ones(batch_size, num_modalities, dtype=torch.bool)
    # Cycling labels give every class a subject once B >= K, so every subset gets prototypes.
    batch["label"] = (first_label + torch.arange(batch_size)) % configuration.num_classes
    return batch


def exact_missing_mask(batch_size: int, num_modalities: int, num_missing: int, generator: torch.Generator) -> torch.Tensor:
    """Return a presence mask ``(B, M)`` in which each subject lacks exactly ``num_missing`` random modalities."""
    if not 1 <= num_missing < num_modalities:
        raise ValueError(f"num_missing must be in [1, {num_modalities - 1}] for {num_modalities} modalities, got {num_missing}.")
    keys = torch.rand(batch_size, num_modalities, generator=generator)
    missing = keys.argsort(dim=1)[:, :num_missing]
    present = torch.ones(batch_size, num_modalities, dtype=torch.bool)
    present[torch.arange(batch_size)[:, None], missing] = False
    return present


def random_missing_mask(batch_size: int, num_modalities: int, eta: float, generator: torch.Generator) -> torch.Tensor:
    """Return a presence mask ``(B, M)``: each modality missing with probability ``eta``, one random modality kept."""
    present = torch.rand(batch_size, num_modalities, generator=generator) >= eta
    always_present = torch.randint(num_modalities, (batch_size,), generator=generator)
    present[torch.arange(batch_size), always_present] = True
    return present
