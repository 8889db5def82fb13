"""Round-robin iterative imputation with a random forest for categorical columns and Bayesian ridge for continuous ones.

Shape letters as in :mod:`pipeline.imputation.base`: ``n`` rows, ``C_cat``/``C_num``
categorical/continuous columns, ``N`` columns in all, ``K`` shrinkage bins.

scikit-learn's ``IterativeImputer`` (1.9) takes a single estimator for all columns, so it cannot
give categorical columns a classifier and continuous columns a regressor. This module writes the
same round-robin loop itself. It starts from the training mode/mean. In each round it regresses
every column on all the others with the estimator of its type and fills in that column's missing
values before the next column is modelled. The differences from ``IterativeImputer`` are:

- every column with at least two distinct observed values gets a model, not only the columns
  that had missing values during fit. So a column that is complete in training but missing at
  test time is still predicted, not left at its mean;
- the other columns enter as features one-hot encoded (categorical) or standardised
  (continuous), so Bayesian ridge never treats a level index as a number;
- the loop stops after ``max_iter`` rounds, or earlier when a round changes no categorical
  value and no continuous value by more than ``tol`` training standard deviations;
- the final predictions are shrunk toward the training marginal by a calibrated amount that
  depends on how much of the row is observed (below).

Calibrated shrinkage. The per-column models are trained on rows whose other columns are
observed. When most of a test row is missing, they predict from filled-in start values and
earlier predictions, and their output is then less reliable than the training mean or mode.
:meth:`IterativeTabularImputer.fit` therefore measures how reliable the models are on rows they
were not trained on:

1. it holds out a seeded fraction ``calibration_fraction`` of the training rows and runs the
   round-robin fit on the others;
2. it makes ``calibration_copies`` copies of the held-out rows and hides each observed cell of a
   copy with a hiding rate drawn per copy uniformly from (0.05, 0.95), then imputes the copies;
3. for every column and every one of ``calibration_bins`` equal-width bins of the fraction of
   the row's *other* columns that are observed, it fits one weight ``w`` in [0, 1] on the hidden
   cells. A continuous column gets the least-squares slope of ``(true - mean)`` on
   ``(predicted - mean)``, clipped to [0, 1], and its output becomes ``mean + w * (predicted -
   mean)``. A categorical column gets a mixture ``w * p_model + (1 - w) * p_train`` of the
   forest's class probabilities and the training level frequencies, and its output is the most
   probable level of that mixture, so ``w = 0`` gives the training mode and ``w = 1`` the
   forest's prediction. Its ``w`` is the grid value whose output is most often right on the
   hidden cells, because the output is that most probable level. The weights are constrained to
   be nondecreasing in the observed fraction, because a model given more of the row is
   expected to be more reliable. Bins that break this order are pooled (pool-adjacent-violators)
   and refitted together. For the continuous slopes this gives the weighted isotonic
   least-squares fit, clipped to [0, 1].
   A bin, or pooled block, with fewer than ``min_calibration_cells`` hidden cells keeps
   ``w = 1``, the unshrunk model;
4. it refits the round-robin models on all training rows. The weights were measured on models
   fitted on fewer rows, which are expected to be slightly less accurate, so on the refitted
   models they are expected to err toward too much shrinkage rather than too little.

:meth:`IterativeTabularImputer.transform` replays the fitted rounds and then applies the weight
of each missing cell's column and bin. ``calibration_fraction=0`` skips the calibration and gives
the unshrunk round-robin values.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import BayesianRidge
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from pipeline.data.tabular import EncodedTable
from pipeline.imputation.base import (
    RecoveredTable,
    TabularImputer,
    check_fitted_columns,
    check_table,
)
from pipeline.imputation.baseline import MeanModeImputer

logger = logging.getLogger(__name__)

# Range of the per-copy hiding rate used to simulate missing cells on the held-out rows.
_HIDING_RATE_RANGE = (0.05, 0.95)
# Candidate mixture weights of a categorical column; the one with the highest held-out accuracy is kept.
_MIXTURE_GRID = np.linspace(0.0, 1.0, 101)

Estimator = RandomForestClassifier | BayesianRidge


class IterativeTabularImputer(TabularImputer):
    """Iterative imputer: random-forest classifier for categorical columns, Bayesian ridge for continuous ones.

    The start values are the training mode (categorical) and mean (continuous), as
    :class:`~pipeline.imputation.baseline.MeanModeImputer` computes them. A recovered categorical
    value is a level that was observed in training, because both the classifier and the training
    frequencies give probability only to training levels. A recovered continuous value lies in
    the range observed in training: predictions are clipped to it, and shrinkage moves them
    toward the training mean, which lies in the same range.

    Columns without a model, each reported by one warning at fit time:

    - a column missing in every training row is filled with level 0 or the standardised value 0;
    - a column constant in training (one distinct observed value) is filled with that value.

    Args:
        max_iter: maximum number of rounds over the columns.
        tol: stop when a round changes no categorical value and no continuous value by more than
            ``tol`` (standardised units, that is training standard deviations).
        n_estimators: trees in each random forest.
        random_state: seed of the forests, of the held-out split and of the hidden cells; the same
            seed and rows give the same values.
        n_jobs: parallel jobs of each random forest, as in scikit-learn.
        calibration_fraction: fraction of the training rows held out to fit the shrinkage
            weights, in [0, 1); 0 disables shrinkage.
        calibration_bins: number of equal-width bins of the observed fraction of a row's other
            columns, each with its own weight per column.
        calibration_copies: copies of the held-out rows, each with newly hidden cells.
        min_calibration_cells: fewest hidden cells a (column, bin) needs for its weight to be
            fitted; with fewer the weight stays 1.

    Attributes:
        columns_: the ``N`` column names seen in fit.
        cardinalities_: ``(C_cat,)`` level counts.
        initial_: the fitted mean/mode imputer that gives the start values and the shrinkage target.
        estimators_: ``(column index, fitted estimator)`` pairs in the order they were fitted,
            replayed in that order by :meth:`transform`.
        order_: the modelled column indices in the order of one round, fewest missing first.
        n_iter_: rounds run during fit.
        training_levels_: for each categorical column, the level indices observed in training.
        level_frequencies_: for each categorical column, ``(cardinality,)`` training frequency of
            each level, the ``p_train`` of the mixture.
        low_, high_: ``(C_num,)`` training minimum and maximum of each standardised continuous column.
        shrinkage_: ``(N, K)`` weight of each column and observed-fraction bin, 1 where the
            column is not modelled or its bin had too few held-out cells.
        calibration_cells_: ``(N, K)`` int number of held-out hidden cells behind each weight.
    """

    def __init__(
        self,
        max_iter: int = 10,
        tol: float = 1e-3,
        n_estimators: int = 100,
        random_state: int | None = 0,
        n_jobs: int | None = None,
        calibration_fraction: float = 0.2,
        calibration_bins: int = 5,
        calibration_copies: int = 5,
        min_calibration_cells: int = 20,
    ) -> None:
        self.max_iter = max_iter
        self.tol = tol
        self.n_estimators = n_estimators
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.calibration_fraction = calibration_fraction
        self.calibration_bins = calibration_bins
        self.calibration_copies = calibration_copies
        self.min_calibration_cells = min_calibration_cells

    def fit(
        self,
        table: EncodedTable,
        cardinalities: Sequence[int],
        image_tokens: np.ndarray | None = None,
        image_present: np.ndarray | None = None,
    ) -> IterativeTabularImputer:
        """Fit the shrinkage weights and the per-column models on the rows of ``table`` (the training split only).

        Returns ``self``. The image arguments are accepted for the common interface and ignored.
        """
        self._check_parameters()
        check_table(table, cardinalities)
        self.columns_ = tuple(table.columns)
        self.cardinalities_ = tuple(int(value) for value in cardinalities)
        self.initial_ = MeanModeImputer().fit(table, cardinalities)

        self.training_levels_ = []
        self.level_frequencies_ = []
        for index, cardinality in enumerate(self.cardinalities_):
            observed = table.categorical[:, index][table.categorical[:, index] >= 0]
            self.training_levels_.append(sorted(int(level) for level in np.unique(observed)))
            counts = np.bincount(observed, minlength=cardinality).astype(np.float64)
            self.level_frequencies_.append(counts / max(counts.sum(), 1.0))
        self.low_, self.high_ = _training_range(table.continuous)
        modelled = self._modelled_columns(table)
        missing_counts = table.missing_values.sum(axis=0)
        self.order_ = sorted(modelled, key=lambda column: (int(missing_counts[column]), column))

        self.shrinkage_ = np.ones((len(self.columns_), self.calibration_bins))
        self.calibration_cells_ = np.zeros((len(self.columns_), self.calibration_bins), dtype=np.int64)
        if self.calibration_fraction > 0:
            self._calibrate(table)

        self.estimators_, self.n_iter_ = self._fit_rounds(table)
        logger.info(
            "fitted the iterative imputer on %d rows: %d of %d columns modelled, %d rounds.",
            table.missing_values.shape[0],
            len(self.order_),
            len(self.columns_),
            self.n_iter_,
        )
        return self

    def transform(
        self,
        table: EncodedTable,
        image_tokens: np.ndarray | None = None,
        image_present: np.ndarray | None = None,
    ) -> RecoveredTable:
        """Fill in every missing value of ``table`` by replaying the fitted rounds and shrinking the predictions.

        Observed values stay as they are.
        """
        check_is_fitted(self, "estimators_")
        check_fitted_columns(self, table)
        self._warn_unseen_levels(table)

        values, probabilities = self._replay(self.estimators_, table)
        self._shrink(values, probabilities, table.missing_values)

        n_categorical = len(self.cardinalities_)
        completed = EncodedTable(
            categorical=np.rint(values[:, :n_categorical]).astype(np.int64),
            continuous=values[:, n_categorical:].astype(np.float32),
            missing_values=np.zeros_like(table.missing_values, dtype=bool),
            columns=tuple(table.columns),
        )
        return RecoveredTable(table=completed, recovered=table.missing_values.astype(bool, copy=True))

    def _check_parameters(self) -> None:
        for name in ("max_iter", "n_estimators", "calibration_bins", "calibration_copies", "min_calibration_cells"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if not isinstance(self.tol, (int, float)) or self.tol < 0:
            raise ValueError(f"tol must be a non-negative number, got {self.tol!r}.")
        fraction = self.calibration_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
            raise ValueError(
                f"calibration_fraction must be a number in [0, 1), got {fraction!r}; use 0 to disable shrinkage."
            )

    def _modelled_columns(self, table: EncodedTable) -> list[int]:
        """Return the columns with at least two distinct observed training values; warn about the others."""
        n_categorical = len(self.cardinalities_)
        modelled = []
        for column, name in enumerate(self.columns_):
            if column < n_categorical:
                observed = table.categorical[:, column][table.categorical[:, column] >= 0]
            else:
                observed = table.continuous[:, column - n_categorical]
                observed = observed[~np.isnan(observed)]
            distinct = np.unique(observed)
            if distinct.size >= 2:
                modelled.append(column)
            elif distinct.size == 1:
                logger.warning(
                    "column %r is constant in training (every observed value is %s), so its missing values are "
                    "filled with that value and no model is fitted for it.",
                    name,
                    distinct[0] if column < n_categorical else f"{float(distinct[0]):.6g} (standardised)",
                )
            # A column missing in every training row was already reported by MeanModeImputer.fit.
        return modelled

    def _fit_rounds(self, table: EncodedTable) -> tuple[list[tuple[int, Estimator]], int]:
        """Run the round-robin fit on ``table`` and return the ``(column, estimator)`` sequence and the rounds run.

        A column of :attr:`order_` without any observed value in ``table`` gets no estimator. This
        happens only on the calibration subset of a very small training table.
        """
        values = self._start_values(table)
        rng = check_random_state(self.random_state)
        columns = [column for column in self.order_ if not table.missing_values[:, column].all()]
        estimators: list[tuple[int, Estimator]] = []
        rounds = 0
        for _ in range(self.max_iter):
            previous = values.copy()
            for column in columns:
                estimator = self._fit_column(column, values, table.missing_values, rng)
                estimators.append((column, estimator))
                self._predict_column(column, estimator, values, table.missing_values[:, column])
            rounds += 1
            if self._converged(previous, values):
                break
        return estimators, rounds

    def _replay(
        self, estimators: Sequence[tuple[int, Estimator]], table: EncodedTable
    ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Replay ``estimators`` on ``table``; return the unshrunk ``(n, N)`` values and the final class probabilities.

        The probabilities map each categorical column to ``(missing rows, cardinality)`` level
        probabilities from its last estimator, for the rows where that column is missing.
        """
        values = self._start_values(table)
        probabilities: dict[int, np.ndarray] = {}
        for column, estimator in estimators:
            column_probabilities = self._predict_column(column, estimator, values, table.missing_values[:, column])
            if column_probabilities is not None:
                probabilities[column] = column_probabilities
        return values, probabilities

    def _calibrate(self, table: EncodedTable) -> None:
        """Fit :attr:`shrinkage_` on held-out training rows with simulated missing cells (see the module docstring)."""
        rng = check_random_state(self.random_state)
        n_rows = table.missing_values.shape[0]
        held_out_count = int(round(self.calibration_fraction * n_rows))
        if held_out_count < 1 or held_out_count >= n_rows:
            logger.warning(
                "%d training rows are too few to hold out a calibration fraction of %g, so the predictions are not "
                "shrunk. Pass more rows, or calibration_fraction=0 to skip calibration.",
                n_rows,
                self.calibration_fraction,
            )
            return
        held_out = np.zeros(n_rows, dtype=bool)
        held_out[rng.permutation(n_rows)[:held_out_count]] = True
        estimators, _ = self._fit_rounds(_select_rows(table, ~held_out))
        collected = self._calibration_cells(estimators, _select_rows(table, held_out), rng)

        n_categorical = len(self.cardinalities_)
        for column, (cell_bins, target, predicted) in collected.items():
            if column < n_categorical:
                frequencies = self.level_frequencies_[column]
                levels = target.astype(np.int64)

                def fit_weight(cells: np.ndarray) -> float:
                    return _mixture_weight(predicted[cells], frequencies, levels[cells])

            else:
                mean = float(self.initial_.means_[column - n_categorical])
                offsets = predicted - mean
                errors = target - mean

                def fit_weight(cells: np.ndarray) -> float:
                    return _slope_weight(offsets[cells], errors[cells])

            weights, counts = _monotone_bin_weights(cell_bins, self.calibration_bins, fit_weight, self.min_calibration_cells)
            self.shrinkage_[column] = weights
            self.calibration_cells_[column] = counts
        logger.info(
            "fitted shrinkage weights on %d held-out rows x %d copies; weights per column (bins of observed fraction): %s",
            held_out_count,
            self.calibration_copies,
            {self.columns_[column]: np.round(self.shrinkage_[column], 2).tolist() for column in self.order_},
        )

    def _calibration_cells(
        self, estimators: Sequence[tuple[int, Estimator]], held_out: EncodedTable, rng: np.random.RandomState
    ) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Hide cells of copies of the held-out rows, impute them with ``estimators`` and collect the hidden cells.

        Returns, per modelled column, the ``(cells,)`` observed-fraction bin, the ``(cells,)``
        true value and the prediction: ``(cells, cardinality)`` level probabilities for a
        categorical column, ``(cells,)`` unshrunk values for a continuous one.
        """
        truth = _select_rows(held_out, np.repeat(np.arange(held_out.missing_values.shape[0]), self.calibration_copies))
        rates = rng.uniform(*_HIDING_RATE_RANGE, size=(truth.missing_values.shape[0], 1))
        hidden = ~truth.missing_values & (rng.random_sample(truth.missing_values.shape) < rates)
        simulated = _hide_cells(truth, hidden)
        values, probabilities = self._replay(estimators, simulated)

        bins = self._observed_fraction_bins(simulated.missing_values)
        truth_values = np.concatenate([truth.categorical.astype(np.float64), truth.continuous.astype(np.float64)], axis=1)
        n_categorical = len(self.cardinalities_)
        cells = {}
        for column in sorted({column for column, _ in estimators}):
            missing = simulated.missing_values[:, column]
            scored = hidden[missing, column]  # rows missing in the copy whose true value is known
            if column < n_categorical:
                predicted = probabilities[column][scored] if column in probabilities else np.zeros((0, self.cardinalities_[column]))
            else:
                predicted = values[missing, column][scored]
            cells[column] = (bins[missing][scored], truth_values[missing, column][scored], predicted)
        return cells

    def _observed_fraction_bins(self, missing: np.ndarray) -> np.ndarray:
        """Return the ``(n,)`` bin of each row's observed fraction, counted over the other columns of a missing cell.

        The bin is used only for cells that are missing, so the cell's own column is never among
        the observed ones and the fraction is ``observed / (N - 1)``.
        """
        others = max(missing.shape[1] - 1, 1)
        fraction = (~missing).sum(axis=1) / others
        return np.minimum((fraction * self.calibration_bins).astype(np.int64), self.calibration_bins - 1)

    def _shrink(self, values: np.ndarray, probabilities: dict[int, np.ndarray], missing: np.ndarray) -> None:
        """Move each predicted cell of ``values`` toward the training marginal by its column's and bin's weight."""
        bins = self._observed_fraction_bins(missing)
        n_categorical = len(self.cardinalities_)
        for column in self.order_:
            rows = missing[:, column]
            if not rows.any():
                continue
            weights = self.shrinkage_[column, bins[rows]]
            if np.all(weights == 1.0):
                continue
            if column < n_categorical:
                if column not in probabilities:
                    continue
                mixture = weights[:, None] * probabilities[column] + (1.0 - weights[:, None]) * self.level_frequencies_[column]
                values[rows, column] = np.argmax(mixture, axis=1)
            else:
                mean = float(self.initial_.means_[column - n_categorical])
                predicted = values[rows, column]
                values[rows, column] = np.where(weights == 1.0, predicted, mean + weights * (predicted - mean))

    def _start_values(self, table: EncodedTable) -> np.ndarray:
        """Return the ``(n, N)`` float64 table filled with the mode/mean start values, categorical first."""
        start = self.initial_.transform(table)
        return np.concatenate([start.categorical.astype(np.float64), start.continuous.astype(np.float64)], axis=1)

    def _features(self, values: np.ndarray, target: int) -> np.ndarray:
        """Return the ``(n, F)`` features for predicting column ``target``: the other columns, categorical one-hot."""
        n_categorical = len(self.cardinalities_)
        blocks = []
        for column, cardinality in enumerate(self.cardinalities_):
            if column != target:
                blocks.append(np.eye(cardinality)[values[:, column].astype(np.int64)])
        continuous = [column for column in range(n_categorical, values.shape[1]) if column != target]
        blocks.append(values[:, continuous])
        return np.concatenate(blocks, axis=1)

    def _fit_column(self, column: int, values: np.ndarray, missing: np.ndarray, rng: np.random.RandomState) -> Estimator:
        """Fit the estimator of one column on the rows where that column was observed."""
        rows = ~missing[:, column]
        features = self._features(values, column)[rows]
        if column < len(self.cardinalities_):
            estimator = RandomForestClassifier(
                n_estimators=self.n_estimators,
                random_state=int(rng.randint(np.iinfo(np.int32).max)),
                n_jobs=self.n_jobs,
            )
            return estimator.fit(features, values[rows, column].astype(np.int64))
        return clone(BayesianRidge()).fit(features, values[rows, column])

    def _predict_column(
        self, column: int, estimator: Estimator, values: np.ndarray, missing: np.ndarray
    ) -> np.ndarray | None:
        """Overwrite the missing rows of one column of ``values`` with the estimator's predictions.

        Returns, for a categorical column, the ``(missing rows, cardinality)`` level probabilities
        behind the predictions, and ``None`` for a continuous column or when no row is missing.
        The predicted level is the most probable one, lowest index on a tie, as
        ``RandomForestClassifier.predict`` chooses it.
        """
        if not missing.any():
            return None
        features = self._features(values[missing], column)
        n_categorical = len(self.cardinalities_)
        if column < n_categorical:
            probabilities = np.zeros((features.shape[0], self.cardinalities_[column]))
            probabilities[:, estimator.classes_] = estimator.predict_proba(features)
            values[missing, column] = np.argmax(probabilities, axis=1)
            return probabilities
        index = column - n_categorical
        values[missing, column] = np.clip(estimator.predict(features), self.low_[index], self.high_[index])
        return None

    def _converged(self, previous: np.ndarray, values: np.ndarray) -> bool:
        n_categorical = len(self.cardinalities_)
        categorical_changed = bool((previous[:, :n_categorical] != values[:, :n_categorical]).any())
        continuous_change = np.abs(previous[:, n_categorical:] - values[:, n_categorical:])
        largest = float(continuous_change.max()) if continuous_change.size else 0.0
        return not categorical_changed and largest <= self.tol

    def _warn_unseen_levels(self, table: EncodedTable) -> None:
        """Warn about observed level indices that never occurred in training; they are kept as observed."""
        for column, levels in enumerate(self.training_levels_):
            observed = np.unique(table.categorical[:, column][table.categorical[:, column] >= 0])
            unseen = sorted(set(observed.tolist()) - set(levels))
            if unseen:
                logger.warning(
                    "column %r: level indices %s were never observed in training. They are kept as observed values, "
                    "but the models of the other columns were never trained on them.",
                    self.columns_[column],
                    unseen,
                )


def _training_range(continuous: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the ``(C_num,)`` minimum and maximum of each column, ``(0, 0)`` for a column with no observed value."""
    low = np.zeros(continuous.shape[1])
    high = np.zeros(continuous.shape[1])
    for index in range(continuous.shape[1]):
        observed = continuous[:, index][~np.isnan(continuous[:, index])]
        if observed.size:
            low[index], high[index] = float(observed.min()), float(observed.max())
    return low, high


def _select_rows(table: EncodedTable, rows: np.ndarray) -> EncodedTable:
    """Return the rows of ``table`` chosen by a bool selector or an index array (indices may repeat)."""
    return EncodedTable(
        categorical=table.categorical[rows],
        continuous=table.continuous[rows],
        missing_values=table.missing_values[rows],
        columns=tuple(table.columns),
    )


def _hide_cells(table: EncodedTable, hidden: np.ndarray) -> EncodedTable:
    """Return a copy of ``table`` with the ``(n, N)`` cells in ``hidden`` made missing."""
    n_categorical = table.categorical.shape[1]
    return EncodedTable(
        categorical=np.where(hidden[:, :n_categorical], -1, table.categorical),
        continuous=np.where(hidden[:, n_categorical:], np.nan, table.continuous).astype(table.continuous.dtype),
        missing_values=table.missing_values | hidden,
        columns=tuple(table.columns),
    )


def _monotone_bin_weights(
    cell_bins: np.ndarray, n_bins: int, fit_weight: Callable[[np.ndarray], float], min_cells: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fit one weight per bin, nondecreasing from bin to bin, with pool-adjacent-violators.

    ``cell_bins`` is the ``(cells,)`` bin of each held-out cell and ``fit_weight`` returns the best
    weight for a set of cell indices. Adjacent bins whose weights decrease are pooled and refitted
    on their joint cells until the weights are nondecreasing, so a bin with few or uninformative
    cells borrows strength from its neighbours. A pooled block with fewer than ``min_cells`` cells
    gets weight 1. Returns the ``(n_bins,)`` weights and cell counts.
    """
    counts = np.bincount(cell_bins, minlength=n_bins).astype(np.int64)
    blocks = [[bin_index] for bin_index in range(n_bins) if counts[bin_index] > 0]
    block_weights = [fit_weight(np.flatnonzero(cell_bins == bins[0])) for bins in blocks]
    index = 0
    while index < len(blocks) - 1:
        if block_weights[index] <= block_weights[index + 1]:
            index += 1
            continue
        blocks[index] = blocks[index] + blocks.pop(index + 1)
        block_weights.pop(index + 1)
        block_weights[index] = fit_weight(np.flatnonzero(np.isin(cell_bins, blocks[index])))
        index = max(index - 1, 0)

    weights = np.ones(n_bins)
    for bins, weight in zip(blocks, block_weights):
        if counts[bins].sum() >= min_cells:
            weights[bins] = weight
    # An empty bin takes the weight of the nearest lower non-empty bin, which keeps the weights
    # nondecreasing. With N columns only the fractions k / (N - 1) occur, so some bins stay empty.
    non_empty = np.flatnonzero(counts > 0)
    for bin_index in np.flatnonzero(counts == 0):
        lower = non_empty[non_empty < bin_index]
        if lower.size:
            weights[bin_index] = weights[lower[-1]]
    return weights, counts


def _slope_weight(predicted: np.ndarray, target: np.ndarray) -> float:
    """Return the least-squares slope of ``target`` on ``predicted`` (both centred on the mean), clipped to [0, 1].

    Returns 1 when every prediction equals the mean, because shrinking then changes nothing.
    """
    spread = float(np.dot(predicted, predicted))
    if spread <= 0.0:
        return 1.0
    return float(np.clip(np.dot(predicted, target) / spread, 0.0, 1.0))


def _mixture_weight(model: np.ndarray, frequencies: np.ndarray, target: np.ndarray) -> float:
    """Return the weight ``w`` on ``_MIXTURE_GRID`` whose mixture's most probable level is most often the true one.

    ``model`` is ``(cells, cardinality)``, ``frequencies`` ``(cardinality,)`` and ``target``
    ``(cells,)`` level indices; the mixture is ``w * model + (1 - w) * frequencies``. Ties go to
    the smallest weight, the one closest to the training mode.
    """
    mixture = _MIXTURE_GRID[:, None, None] * model[None] + (1.0 - _MIXTURE_GRID[:, None, None]) * frequencies  # (grid, cells, cardinality)
    accuracy = (np.argmax(mixture, axis=2) == target[None]).mean(axis=1)  # (grid,)
    return float(_MIXTURE_GRID[int(np.argmax(accuracy))])
