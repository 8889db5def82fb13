"""Tiny networks and synthetic batches shared by the tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from pipeline.networks import MaskedFusionTransformer


def build_network(
    embedding: str = "cosine", num_classes: int = 2, num_modalities: int = 2, seed: int = 0
) -> MaskedFusionTransformer:
    """Build a fusion transformer over ``num_modalities`` 4-feature modalities named a, b, c, ..."""
    torch.manual_seed(seed)
    modalities = [
        {"name": chr(ord("a") + index), "encoder": "features", "in_features": 4, "out_features": 8}
        for index in range(num_modalities)
    ]
    return MaskedFusionTransformer(
        modalities, num_classes=num_classes, dim=16, depth=1, heads=2, projection_dim=8, embedding=embedding
    )


def make_batches(
    num_samples: int, seed: int, batch_size: int = 32, present: torch.Tensor | None = None
) -> list[dict[str, Any]]:
    """Make a learnable binary problem with modalities a and b.

    The label is the sign of feature 0 of ``a``. Feature 0 of ``b`` is a noisy copy of it, so
    every subset carries the signal. ``present`` ``(num_samples, 2)`` defaults to all True.
    """
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(num_samples, 4, generator=generator)
    b = torch.randn(num_samples, 4, generator=generator)
    b[:, 0] = a[:, 0] + 0.5 * torch.randn(num_samples, generator=generator)
    labels = (a[:, 0] > 0).long()
    if present is None:
        present = torch.ones(num_samples, 2, dtype=torch.bool)

    batches = []
    for start in range(0, num_samples, batch_size):
        rows = slice(start, start + batch_size)
        batches.append({"a": a[rows], "b": b[rows], "present": present[rows], "label": labels[rows]})
    return batches


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Run each test on one CPU thread and restore the previous count afterwards.

    The tensors here are tiny, so intra-op threads only add synchronisation. When another process
    shares the cores, that synchronisation made a 6-epoch run about ten times slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def network_factory() -> Callable[..., MaskedFusionTransformer]:
    return build_network


@pytest.fixture
def batch_factory() -> Callable[..., list[dict[str, Any]]]:
    return make_batches
