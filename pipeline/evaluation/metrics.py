"""Classification metrics over subjects: ROC AUC with a bootstrap interval, and accuracy.

Shape letters: ``n`` subjects, ``R`` bootstrap resamples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

logger = logging.getLogger(__name__)

# A resample with one class only has no AUC and is redrawn. Redrawing stops after this many draws
# per requested resample, so a cohort with almost no subjects of one class cannot loop for long.
MAX_DRAWS_PER_RESAMPLE = 10

# Share of one-class draws above which the interval is reported as unreliable.
SKIPPED_WARNING_FRACTION = 0.01

# Upper bound on the count-matrix entries (R_chunk * n) held in memory at once.
MAX_COUNT_ENTRIES = 4_000_000


@dataclass(frozen=True)
class AucInterval:
    """ROC AUC of a set of subjects with its bootstrap percentile interval. All three are NaN when the AUC is undefined."""

    auc: float
    low: float
    high: float


def bootstrap_auc(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> AucInterval:
    """Compute the ROC AUC of ``scores`` and a percentile bootstrap interval over subjects.

    Each resample draws ``n`` subjects with replacement from ``np.random.default_rng(seed)``.
    A resample that contains one class only has no AUC, so it is skipped and another is drawn,
    up to ``MAX_DRAWS_PER_RESAMPLE * n_bootstrap`` draws in all. A warning is logged when more
    than 1% of the draws were skipped, because the interval then rests on very few subjects of
    one class. Tied scores count one half, as in :func:`sklearn.metrics.roc_auc_score`.

    Args:
        labels: ``(n,)`` binary labels, 0 or 1 (bool, integer or float).
        scores: ``(n,)`` finite scores, higher meaning class 1.
        n_bootstrap: number of resamples ``R`` with both classes, at least 1.
        confidence: coverage of the interval, strictly between 0 and 1.
        seed: seed of the resampling generator. The same inputs and seed give the same result.

    Returns:
        The AUC on all subjects with the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
        quantiles of the resampled AUCs. All three are NaN, with a logged warning, when
        ``labels`` contains one class only.

    Raises:
        ValueError: when the arrays are not 1-D of one non-zero length, a score is not finite,
            a label is not 0 or 1, ``n_bootstrap < 1`` or ``confidence`` is outside (0, 1).

    Notes:
        The resampled AUCs come from ranks of the resampled subject counts, vectorised over
        resamples, so the cost is ``O(R * n)``: about 10 ms for ``R = 1000`` and ``n = 200``
        (measured on a 2-core CPU).
    """
    labels = _check_labels(labels, "labels")
    scores = _check_scores(scores, len(labels))
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be an integer of at least 1, got {n_bootstrap!r}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1 (e.g. 0.95), got {confidence!r}.")

    positives = int(labels.sum())
    if positives in (0, len(labels)):
        logger.warning(
            "ROC AUC is undefined because all %d subjects have label %d, so the AUC and its interval are NaN.",
            len(labels),
            int(labels[0]),
        )
        return AucInterval(auc=float("nan"), low=float("nan"), high=float("nan"))

    auc = float(roc_auc_score(labels, scores))
    resampled = _bootstrap_resample_aucs(labels, scores, n_bootstrap, np.random.default_rng(seed))
    if len(resampled) == 0:
        return AucInterval(auc=auc, low=float("nan"), high=float("nan"))

    alpha = 1.0 - confidence
    low, high = np.quantile(resampled, [alpha / 2.0, 1.0 - alpha / 2.0])
    return AucInterval(auc=auc, low=float(low), high=float(high))


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Return the fraction of subjects whose predicted class equals the label.

    Args:
        labels: ``(n,)`` class labels.
        predicted: ``(n,)`` predicted classes, compared with ``==``.

    Raises:
        ValueError: when the arrays are not 1-D, differ in length or are empty.
    """
    labels = np.asarray(labels)
    predicted = np.asarray(predicted)
    if labels.ndim != 1 or predicted.ndim != 1:
        raise ValueError(
            f"labels and predicted must be 1-D arrays of shape (n,), got shapes {labels.shape} and {predicted.shape}."
        )
    if len(labels) != len(predicted):
        raise ValueError(
            f"labels and predicted must have one entry per subject, got {len(labels)} labels "
            f"and {len(predicted)} predictions."
        )
    if len(labels) == 0:
        raise ValueError("accuracy is undefined for zero subjects. Pass at least one label and prediction.")
    return float(np.mean(labels == predicted))


@dataclass(frozen=True)
class AccuracyInterval:
    """Accuracy with the bounds of its percentile bootstrap interval."""

    accuracy: float
    low: float
    high: float


def bootstrap_accuracy(
    labels: np.ndarray, predicted: np.ndarray, *, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0
) -> AccuracyInterval:
    """Return the accuracy of ``predicted`` ``(n,)`` against ``labels`` ``(n,)`` with a bootstrap interval.

    Subjects are resampled with replacement ``n_bootstrap`` times with ``np.random.default_rng(seed)``;
    the interval is the central ``confidence`` range of the resampled accuracies.

    Raises:
        ValueError: for arrays ``accuracy`` rejects, ``n_bootstrap < 1`` or ``confidence`` outside (0, 1).
    """
    point = accuracy(labels, predicted)
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be an int of at least 1, got {n_bootstrap!r}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}.")

    correct = (np.asarray(labels) == np.asarray(predicted)).astype(np.float64)  # (n,)
    rng = np.random.default_rng(seed)
    counts = _resample_counts(rng, n_bootstrap, len(correct))  # (n_bootstrap, n)
    resampled = counts @ correct / len(correct)
    tail = (1 - confidence) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail])
    return AccuracyInterval(point, float(low), float(high))


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    """Return ``labels`` as a ``(n,)`` int array after checking it is non-empty, 1-D and binary."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of shape (n,), got shape {labels.shape}.")
    if len(labels) == 0:
        raise ValueError(f"{name} is empty. The AUC needs at least one subject of each class.")
    if labels.dtype.kind not in "biuf":
        raise ValueError(f"{name} must contain 0 and 1, got dtype {labels.dtype}.")

    invalid = ~np.isin(labels, (0, 1))
    if invalid.any():
        found = np.unique(labels[invalid])[:5].tolist()
        raise ValueError(f"{name} must contain only 0 and 1, got also {found}. Binarise the labels first.")
    return labels.astype(np.int64)


def _check_scores(scores: np.ndarray, num_subjects: int) -> np.ndarray:
    """Return ``scores`` as a ``(n,)`` float array after checking its shape and that it is finite."""
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be a 1-D array of shape (n,), got shape {scores.shape}.")
    if len(scores) != num_subjects:
        raise ValueError(
            f"labels and scores must have one entry per subject, got {num_subjects} labels and {len(scores)} scores."
        )
    if scores.dtype.kind not in "biuf":
        raise ValueError(f"scores must be numeric, got dtype {scores.dtype}.")

    scores = scores.astype(np.float64)
    not_finite = ~np.isfinite(scores)
    if not_finite.any():
        raise ValueError(
            f"scores must be finite, got {int(not_finite.sum())} NaN or infinite values "
            f"(first at index {int(np.flatnonzero(not_finite)[0])}). Drop or score those subjects first."
        )
    return scores


def _bootstrap_resample_aucs(
    labels: np.ndarray, scores: np.ndarray, n_bootstrap: int, rng: np.random.Generator
) -> np.ndarray:
    """Return up to ``n_bootstrap`` resampled AUCs ``(R,)``, redrawing resamples that contain one class only."""
    num_subjects = len(labels)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    is_positive = labels[order].astype(bool)
    # Start index of each run of tied scores in sorted order, because tied subjects are scored as one group.
    tie_starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])

    chunk_rows = max(1, MAX_COUNT_ENTRIES // num_subjects)
    max_draws = MAX_DRAWS_PER_RESAMPLE * n_bootstrap
    valid_chunks: list[np.ndarray] = []
    num_valid = 0
    drawn = 0
    while num_valid < n_bootstrap and drawn < max_draws:
        rows = min(chunk_rows, n_bootstrap - num_valid, max_draws - drawn)
        counts = _resample_counts(rng, rows, num_subjects)[:, order]  # (R_chunk, n), sorted by score
        aucs = _auc_from_counts(counts, is_positive, tie_starts)
        drawn += rows

        valid = aucs[~np.isnan(aucs)]
        valid_chunks.append(valid)
        num_valid += len(valid)

    skipped = drawn - num_valid
    if num_valid < n_bootstrap:
        logger.warning(
            "Only %d of %d bootstrap resamples contained both classes after %d draws (%d positives among %d "
            "subjects). The AUC interval rests on those %d resamples.",
            num_valid,
            n_bootstrap,
            drawn,
            int(labels.sum()),
            num_subjects,
            num_valid,
        )
    elif skipped > SKIPPED_WARNING_FRACTION * drawn:
        logger.warning(
            "%d of %d bootstrap resamples contained one class only and were redrawn (%d positives among %d "
            "subjects). The AUC interval is unreliable with so few subjects of one class.",
            skipped,
            drawn,
            int(labels.sum()),
            num_subjects,
        )
    return np.concatenate(valid_chunks)[:n_bootstrap]


def _resample_counts(rng: np.random.Generator, rows: int, num_subjects: int) -> np.ndarray:
    """Draw ``rows`` resamples of ``n`` subjects with replacement and count each subject's draws ``(rows, n)``."""
    drawn = rng.integers(0, num_subjects, size=(rows, num_subjects))
    flat = drawn + (np.arange(rows) * num_subjects)[:, None]
    return np.bincount(flat.ravel(), minlength=rows * num_subjects).reshape(rows, num_subjects)


def _auc_from_counts(counts: np.ndarray, is_positive: np.ndarray, tie_starts: np.ndarray) -> np.ndarray:
    """Return the AUC ``(R,)`` of each resample, or NaN where a resample has one class only.

    ``counts`` ``(R, n)`` gives how often each subject, sorted by ascending score, was drawn.
    The AUC is the chance that a drawn positive outscores a drawn negative, ties counting one
    half: the sum over tie groups of positives times (negatives below + half the negatives in
    the group), divided by positives times negatives.
    """
    positive_counts = np.where(is_positive, counts, 0)
    negative_counts = counts - positive_counts
    positives_per_group = np.add.reduceat(positive_counts, tie_starts, axis=1)  # (R, G)
    negatives_per_group = np.add.reduceat(negative_counts, tie_starts, axis=1)  # (R, G)
    negatives_below = np.cumsum(negatives_per_group, axis=1) - negatives_per_group

    pairs_won = (positives_per_group * (negatives_below + 0.5 * negatives_per_group)).sum(axis=1)
    pairs = positives_per_group.sum(axis=1) * negatives_per_group.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, pairs_won / pairs, np.nan)
