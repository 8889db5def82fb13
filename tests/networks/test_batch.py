"""Tests for reading a batch dict against a network."""

from __future__ import annotations

import pytest
import torch

from pipeline.networks.batch import check_reiterable, unpack_batch


def test_unpack_batch_splits_inputs(network_factory, batch_factory):
    network = network_factory()
    batch = batch_factory(4, seed=0)[0]

    inputs, present_mask, labels = unpack_batch(batch, network)

    assert list(inputs) == ["a", "b"]
    assert torch.equal(inputs["a"], batch["a"])
    assert present_mask.dtype == torch.bool
    assert labels.dtype == torch.long


def test_unpack_batch_custom_keys(network_factory, batch_factory):
    network = network_factory()
    batch = batch_factory(4, seed=0)[0]
    renamed = {"a": batch["a"], "b": batch["b"], "available": batch["present"], "target": batch["label"].int()}

    _, present_mask, labels = unpack_batch(renamed, network, present_key="available", label_key="target")

    assert torch.equal(present_mask, batch["present"])
    assert torch.equal(labels, batch["label"])


def test_unpack_batch_moves_nested_inputs(network_factory):
    network = network_factory()
    batch = {
        "a": {"features": torch.ones(2, 4)},
        "b": torch.ones(2, 4),
        "present": torch.ones(2, 2, dtype=torch.bool),
        "label": torch.tensor([0, 1]),
    }

    inputs, _, _ = unpack_batch(batch, network)

    assert torch.equal(inputs["a"]["features"], torch.ones(2, 4))


def test_missing_present_key_is_rejected(network_factory, batch_factory):
    batch = dict(batch_factory(4, seed=0)[0])
    del batch["present"]

    with pytest.raises(ValueError, match="'present'"):
        unpack_batch(batch, network_factory())


def test_missing_modality_is_rejected(network_factory, batch_factory):
    batch = dict(batch_factory(4, seed=0)[0])
    del batch["b"]

    with pytest.raises(ValueError, match="'b'"):
        unpack_batch(batch, network_factory())


def test_non_mapping_batch_is_rejected(network_factory):
    with pytest.raises(TypeError, match="mapping"):
        unpack_batch([torch.ones(2)], network_factory())


def test_non_bool_present_mask_is_rejected(network_factory, batch_factory):
    batch = dict(batch_factory(4, seed=0)[0])
    batch["present"] = batch["present"].long()

    with pytest.raises(TypeError, match="present"):
        unpack_batch(batch, network_factory())


def test_present_mask_width_mismatch_is_rejected(network_factory, batch_factory):
    batch = dict(batch_factory(4, seed=0)[0])
    batch["present"] = torch.ones(4, 3, dtype=torch.bool)

    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        unpack_batch(batch, network_factory())


def test_float_labels_are_rejected(network_factory, batch_factory):
    batch = dict(batch_factory(4, seed=0)[0])
    batch["label"] = batch["label"].float()

    with pytest.raises(TypeError, match="label"):
        unpack_batch(batch, network_factory())


def test_label_count_mismatch_is_rejected(network_factory, batch_factory):
    batch = dict(batch_factory(4, seed=0)[0])
    batch["label"] = batch["label"][:3]

    with pytest.raises(ValueError, match=r"batch\[.label.\] has shape \(3,\), but the presence mask has 4 rows"):
        unpack_batch(batch, network_factory())


def test_out_of_range_label_is_rejected(network_factory, batch_factory):
    batch = dict(batch_factory(4, seed=0)[0])
    batch["label"] = torch.tensor([0, 1, 2, 0])

    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        unpack_batch(batch, network_factory())


def test_one_shot_iterator_is_rejected():
    with pytest.raises(TypeError, match="one-shot"):
        check_reiterable(iter([{}]), "train_batches")


def test_non_iterable_is_rejected():
    with pytest.raises(TypeError, match="iterable"):
        check_reiterable(3, "train_batches")
