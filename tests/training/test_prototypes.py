"""Tests for the per-epoch class prototype accumulator."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from pipeline.training.prototypes import ClassPrototypeAccumulator


def test_prototypes_start_at_zero():
    accumulator = ClassPrototypeAccumulator(num_classes=3, embedding_dim=4)

    assert torch.equal(accumulator.prototypes, torch.zeros(3, 4))


def test_class_means_match_numpy():
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(5, 4, generator=generator), torch.randint(0, 3, (5,), generator=generator)) for _ in range(4)
    ]
    batches.append((torch.randn(3, 4, generator=generator), torch.tensor([0, 1, 2])))
    accumulator = ClassPrototypeAccumulator(num_classes=3, embedding_dim=4)

    for embeddings, labels in batches:
        accumulator.accumulate(embeddings, labels)
    prototypes = accumulator.end_epoch()

    all_embeddings = torch.cat([embeddings for embeddings, _ in batches]).numpy()
    all_labels = torch.cat([labels for _, labels in batches]).numpy()
    expected = np.stack([all_embeddings[all_labels == k].mean(axis=0) for k in range(3)])
    np.testing.assert_allclose(prototypes.numpy(), expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(accumulator.prototypes, prototypes)


def test_end_epoch_clears_sums():
    accumulator = ClassPrototypeAccumulator(num_classes=2, embedding_dim=2)
    accumulator.accumulate(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0, 1]))

    accumulator.end_epoch()
    accumulator.accumulate(torch.tensor([[5.0, 6.0], [7.0, 8.0]]), torch.tensor([0, 1]))
    prototypes = accumulator.end_epoch()

    assert torch.equal(accumulator.counts, torch.zeros(2, dtype=torch.long))
    assert torch.equal(prototypes, torch.tensor([[5.0, 6.0], [7.0, 8.0]]))


def test_unseen_class_keeps_previous_prototype(caplog):
    accumulator = ClassPrototypeAccumulator(num_classes=2, embedding_dim=2)
    accumulator.accumulate(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0, 1]))
    accumulator.end_epoch()

    accumulator.accumulate(torch.tensor([[5.0, 6.0]]), torch.tensor([0]))
    with caplog.at_level(logging.WARNING, logger="pipeline.training.prototypes"):
        prototypes = accumulator.end_epoch()

    assert torch.equal(prototypes[0], torch.tensor([5.0, 6.0]))
    assert torch.equal(prototypes[1], torch.tensor([3.0, 4.0]))
    assert "[1]" in caplog.text


def test_accumulate_detaches_embeddings():
    accumulator = ClassPrototypeAccumulator(num_classes=2, embedding_dim=2)
    embeddings = torch.ones(2, 2, requires_grad=True)

    accumulator.accumulate(embeddings * 2, torch.tensor([0, 1]))

    assert not accumulator.end_epoch().requires_grad


def test_wrong_embedding_width_is_rejected():
    accumulator = ClassPrototypeAccumulator(num_classes=2, embedding_dim=2)

    with pytest.raises(ValueError, match="embeddings"):
        accumulator.accumulate(torch.ones(3, 5), torch.zeros(3, dtype=torch.long))


def test_label_count_mismatch_is_rejected():
    accumulator = ClassPrototypeAccumulator(num_classes=2, embedding_dim=2)

    with pytest.raises(ValueError, match="labels"):
        accumulator.accumulate(torch.ones(3, 2), torch.zeros(2, dtype=torch.long))


def test_out_of_range_label_is_rejected():
    accumulator = ClassPrototypeAccumulator(num_classes=2, embedding_dim=2)

    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        accumulator.accumulate(torch.ones(2, 2), torch.tensor([0, 2]))


@pytest.mark.parametrize(("num_classes", "embedding_dim"), [(0, 2), (2, 0)])
def test_invalid_sizes_are_rejected(num_classes, embedding_dim):
    with pytest.raises(ValueError):
        ClassPrototypeAccumulator(num_classes=num_classes, embedding_dim=embedding_dim)


@pytest.mark.parametrize(("num_classes", "embedding_dim", "name"), [("2", 2, "num_classes"), (2, 2.0, "embedding_dim")])
def test_non_integer_sizes_are_rejected(num_classes, embedding_dim, name):
    with pytest.raises(TypeError, match=f"{name} must be an int"):
        ClassPrototypeAccumulator(num_classes=num_classes, embedding_dim=embedding_dim)
