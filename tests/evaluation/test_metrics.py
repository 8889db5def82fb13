"""Tests of ROC AUC with bootstrap intervals and of accuracy, on hand-worked values."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.evaluation import AucInterval, accuracy, bootstrap_accuracy, bootstrap_auc


def make_scores(num_subjects: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return balanced labels ``(n,)`` and scores ``(n,)`` shifted by the label, rounded so that ties occur."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num_subjects) % 2
    scores = np.round(rng.normal(size=num_subjects) + labels, 1)
    return labels, scores


def test_auc_perfect_separation_is_one() -> None:
    result = bootstrap_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]), n_bootstrap=200)

    assert result.auc == 1.0
    assert result.low == 1.0
    assert result.high == 1.0


def test_auc_reversed_scores_is_zero() -> None:
    result = bootstrap_auc(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1]), n_bootstrap=200)

    assert result.auc == 0.0
    assert result.high == 0.0


def test_auc_hand_worked_with_tie() -> None:
    # Positive 0.2 ties negative 0.2 (1/2) and beats 0.1 (1); positive 0.9 beats both (2): 3.5 of 4 pairs.
    labels = np.array([0, 1, 0, 1])
    scores = np.array([0.2, 0.2, 0.1, 0.9])

    result = bootstrap_auc(labels, scores, n_bootstrap=50)

    assert result.auc == pytest.approx(0.875)


def test_auc_one_misordered_pair() -> None:
    # Positive 0.35 is below negative 0.4: 3 of 4 pairs are ordered.
    result = bootstrap_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]), n_bootstrap=50)

    assert result.auc == pytest.approx(0.75)


def test_auc_interval_contains_estimate() -> None:
    labels, scores = make_scores(200, seed=1)

    result = bootstrap_auc(labels, scores)

    assert isinstance(result, AucInterval)
    assert result.auc == pytest.approx(roc_auc_score(labels, scores))
    assert result.low < result.auc < result.high
    assert 0.0 <= result.low
    assert result.high <= 1.0


def test_auc_interval_matches_sklearn_loop() -> None:
    # Reference: the same resamples drawn here, each scored by roc_auc_score on the repeated subjects.
    labels, scores = make_scores(30, seed=2)
    n_bootstrap = 40
    drawn = np.random.default_rng(7).integers(0, len(labels), size=(n_bootstrap, len(labels)))
    reference = np.array([roc_auc_score(labels[rows], scores[rows]) for rows in drawn])

    result = bootstrap_auc(labels, scores, n_bootstrap=n_bootstrap, confidence=0.8, seed=7)

    assert result.low == pytest.approx(np.quantile(reference, 0.1))
    assert result.high == pytest.approx(np.quantile(reference, 0.9))


def test_auc_same_seed_same_interval() -> None:
    labels, scores = make_scores(60, seed=3)

    first = bootstrap_auc(labels, scores, n_bootstrap=300, seed=5)
    second = bootstrap_auc(labels, scores, n_bootstrap=300, seed=5)
    other = bootstrap_auc(labels, scores, n_bootstrap=300, seed=6)

    assert first == second
    assert other.auc == first.auc
    assert (other.low, other.high) != (first.low, first.high)


def test_auc_wider_interval_for_higher_confidence() -> None:
    labels, scores = make_scores(60, seed=4)

    narrow = bootstrap_auc(labels, scores, confidence=0.5)
    wide = bootstrap_auc(labels, scores, confidence=0.99)

    assert wide.low < narrow.low
    assert wide.high > narrow.high


@pytest.mark.parametrize("label", [0, 1])
def test_auc_single_class_is_nan(label, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.evaluation.metrics"):
        result = bootstrap_auc(np.full(5, label), np.linspace(0.0, 1.0, 5))

    assert math.isnan(result.auc)
    assert math.isnan(result.low)
    assert math.isnan(result.high)
    assert "ROC AUC is undefined" in caplog.text
    assert f"label {label}" in caplog.text


def test_auc_rare_class_warns_about_redraws(caplog) -> None:
    # One positive among 20 subjects: a resample misses it with probability (19/20)^20, about 0.36.
    labels = np.zeros(20, dtype=int)
    labels[0] = 1
    scores = np.linspace(0.0, 1.0, 20)

    with caplog.at_level(logging.WARNING, logger="pipeline.evaluation.metrics"):
        result = bootstrap_auc(labels, scores, n_bootstrap=200)

    assert not math.isnan(result.low)
    assert "were redrawn" in caplog.text


def test_auc_accepts_bool_and_float_labels() -> None:
    labels, scores = make_scores(40, seed=6)

    expected = bootstrap_auc(labels, scores, n_bootstrap=100)

    assert bootstrap_auc(labels.astype(bool), scores, n_bootstrap=100) == expected
    assert bootstrap_auc(labels.astype(float), scores, n_bootstrap=100) == expected


@pytest.mark.parametrize(
    ("labels", "scores", "options", "message"),
    [
        ([0, 1, 1], [0.1, 0.2], {}, "3 labels and 2 scores"),
        ([], [], {}, "labels is empty"),
        ([[0, 1]], [[0.1, 0.2]], {}, "labels must be a 1-D array"),
        ([0, 1], [[0.1, 0.2]], {}, "scores must be a 1-D array"),
        ([0, 2], [0.1, 0.2], {}, r"only 0 and 1, got also \[2\]"),
        (["a", "b"], [0.1, 0.2], {}, "dtype <U1"),
        ([0, 1], [0.1, float("nan")], {}, "1 NaN or infinite values"),
        ([0, 1], [0.1, float("inf")], {}, "first at index 1"),
        ([0, 1], [0.1, 0.2], {"n_bootstrap": 0}, "n_bootstrap must be an integer of at least 1, got 0"),
        ([0, 1], [0.1, 0.2], {"n_bootstrap": 10.0}, "n_bootstrap must be an integer"),
        ([0, 1], [0.1, 0.2], {"confidence": 1.0}, "confidence must be strictly between 0 and 1"),
        ([0, 1], [0.1, 0.2], {"confidence": 0.0}, "got 0.0"),
    ],
)
def test_auc_rejects_invalid_input(labels, scores, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_auc(np.array(labels), np.array(scores), **options)


def test_accuracy_fraction_equal() -> None:
    assert accuracy(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])) == pytest.approx(0.75)
    assert accuracy(np.array([2, 1]), np.array([2, 1])) == 1.0


@pytest.mark.parametrize(
    ("labels", "predicted", "message"),
    [
        ([0, 1], [0], "2 labels and 1 predictions"),
        ([], [], "zero subjects"),
        ([[0, 1]], [[0, 1]], "1-D arrays"),
    ],
)
def test_accuracy_rejects_invalid_input(labels, predicted, message) -> None:
    with pytest.raises(ValueError, match=message):
        accuracy(np.array(labels), np.array(predicted))


def test_bootstrap_accuracy_point_and_interval():
    labels = np.array([0, 1] * 50)
    predicted = labels.copy()
    predicted[:20] = 1 - predicted[:20]

    interval = bootstrap_accuracy(labels, predicted, n_bootstrap=500, seed=0)

    assert interval.accuracy == 0.8
    assert interval.low < 0.8 < interval.high
    assert interval.high - interval.low < 0.25


def test_bootstrap_accuracy_is_seeded():
    labels = np.array([0, 1, 2, 3] * 25)
    predicted = np.roll(labels, 1)
    predicted[:60] = labels[:60]

    first = bootstrap_accuracy(labels, predicted, n_bootstrap=200, seed=3)
    again = bootstrap_accuracy(labels, predicted, n_bootstrap=200, seed=3)
    other = bootstrap_accuracy(labels, predicted, n_bootstrap=200, seed=4)

    assert first == again
    assert first != other


def test_bootstrap_accuracy_perfect_predictions_have_no_spread():
    labels = np.arange(10) % 3

    interval = bootstrap_accuracy(labels, labels, n_bootstrap=100)

    assert (interval.accuracy, interval.low, interval.high) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("arguments", "pattern"),
    [({"n_bootstrap": 0}, "n_bootstrap"), ({"confidence": 1.0}, "confidence"), ({"confidence": 0.0}, "confidence")],
)
def test_bootstrap_accuracy_rejects_bad_options(arguments, pattern):
    with pytest.raises(ValueError, match=pattern):
        bootstrap_accuracy(np.array([0, 1]), np.array([0, 1]), **arguments)
