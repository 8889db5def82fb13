"""Tests for validation pooled over modality subsets."""

from __future__ import annotations

import logging

import pytest
import torch
from sklearn.metrics import roc_auc_score

from pipeline.networks.subsets import all_subsets
from pipeline.training.validation import evaluate_pooled


def test_pooled_auc_matches_per_subset_forward(network_factory, batch_factory):
    network = network_factory().eval()
    present = torch.ones(40, 2, dtype=torch.bool)
    present[:10, 1] = False  # these subjects lack modality b
    present[10:15, 0] = False  # these lack modality a
    batches = batch_factory(40, seed=1, batch_size=16, present=present)

    result = evaluate_pooled(network, batches)

    scores, labels = [], []
    with torch.no_grad():
        for batch in batches:
            for subset in all_subsets(2):
                rows = (~subset | batch["present"]).all(dim=1)
                if not rows.any():
                    continue
                inputs = {"a": batch["a"][rows], "b": batch["b"][rows]}
                logits, _ = network(inputs, subset.expand(int(rows.sum()), 2))
                scores.append(logits.softmax(dim=-1)[:, 1])
                labels.append(batch["label"][rows])
    expected = roc_auc_score(torch.cat(labels).numpy(), torch.cat(scores).numpy())
    assert result.metric_name == "roc_auc"
    assert result.num_predictions == 10 * 1 + 5 * 1 + 25 * 3
    assert result.metric == pytest.approx(expected, abs=1e-6)


def test_multiclass_metric_is_accuracy(network_factory):
    network = network_factory(num_classes=3)
    batches = [
        {
            "a": torch.randn(6, 4),
            "b": torch.randn(6, 4),
            "present": torch.ones(6, 2, dtype=torch.bool),
            "label": torch.tensor([0, 1, 2, 0, 1, 2]),
        }
    ]

    result = evaluate_pooled(network, batches)

    assert result.metric_name == "accuracy"
    assert result.num_predictions == 18
    assert 0.0 <= result.metric <= 1.0


def test_single_class_falls_back_to_accuracy(network_factory, batch_factory, caplog):
    batches = batch_factory(8, seed=0)
    for batch in batches:
        batch["label"] = torch.ones_like(batch["label"])

    with caplog.at_level(logging.WARNING, logger="pipeline.training.validation"):
        result = evaluate_pooled(network_factory(), batches)

    assert result.metric_name == "accuracy"
    assert "only class 1" in caplog.text


def test_fallback_warning_can_be_silenced(network_factory, batch_factory, caplog):
    batches = batch_factory(8, seed=0)
    for batch in batches:
        batch["label"] = torch.zeros_like(batch["label"])

    with caplog.at_level(logging.WARNING, logger="pipeline.training.validation"):
        evaluate_pooled(network_factory(), batches, warn_on_fallback=False)

    assert caplog.text == ""


def test_training_mode_is_restored(network_factory, batch_factory):
    network = network_factory().train()

    evaluate_pooled(network, batch_factory(8, seed=0))

    assert network.training


def test_no_present_modality_is_rejected(network_factory, batch_factory):
    batches = batch_factory(8, seed=0, present=torch.zeros(8, 2, dtype=torch.bool))

    with pytest.raises(ValueError, match="no sample with a present modality"):
        evaluate_pooled(network_factory(), batches)


def placeholder_batches(batch_factory, placeholder: float) -> list[dict]:
    """Two batches of 16 in which subjects 0 to 5 lack modality b, filled with ``placeholder``."""
    present = torch.ones(32, 2, dtype=torch.bool)
    present[:6, 1] = False
    batches = batch_factory(32, seed=1, batch_size=16, present=present)
    for batch in batches:
        batch["b"][~batch["present"][:, 1]] = placeholder
    return batches


def test_nan_placeholder_gives_same_metric(network_factory, batch_factory):
    network = network_factory()

    with_zeros = evaluate_pooled(network, placeholder_batches(batch_factory, 0.0))
    with_nan = evaluate_pooled(network, placeholder_batches(batch_factory, float("nan")))

    assert with_nan.num_predictions == with_zeros.num_predictions
    assert with_nan.metric == pytest.approx(with_zeros.metric, abs=1e-6)


def test_encoder_sees_present_rows_only(network_factory, batch_factory):
    network = network_factory()
    rows_seen: list[int] = []
    network.encoders[1].register_forward_pre_hook(lambda module, args: rows_seen.append(args[0].shape[0]))

    evaluate_pooled(network, placeholder_batches(batch_factory, float("nan")))

    assert rows_seen == [10, 16]


def test_mismatched_device_is_rejected(network_factory, batch_factory):
    with pytest.raises(ValueError, match="device is 'meta', but the network's parameters are on 'cpu'"):
        evaluate_pooled(network_factory(), batch_factory(8, seed=0), device="meta")


def test_single_batch_is_rejected(network_factory, batch_factory):
    with pytest.raises(TypeError, match="batches is a single batch"):
        evaluate_pooled(network_factory(), batch_factory(8, seed=0)[0])


def test_non_network_is_rejected(batch_factory):
    with pytest.raises(TypeError, match="network must be a MaskedFusionTransformer, got Linear"):
        evaluate_pooled(torch.nn.Linear(2, 2), batch_factory(8, seed=0))
