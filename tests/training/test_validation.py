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
