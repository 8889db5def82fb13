"""Round-robin iterative imputation with a random forest for categorical columns and Bayesian ridge for continuous ones.

Shape letters as in :mod:`pipeline.imputation.base`: ``n`` rows, ``C_cat``/``C_num``
categorical/continuous columns, ``N`` columns in all.

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
  value and no continuous value by more than ``tol`` training standard deviations.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

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


class IterativeTabularImputer(TabularImputer):
    """Iterative imputer: random-forest classifier for categorical columns, Bayesian ridge for continuous ones.

    The start values are the training mode (categorical) and mean (continuous), as
    :class:`~pipeline.imputation.baseline.MeanModeImputer` computes them. A recovered categorical
    value is a level that was observed in training, because the classifier only predicts its
    training classes. A recovered continuous value is clipped to the range observed in training.

    Columns without a model, each reported by one warning at fit time:

    - a column missing in every training row is filled with level 0 or the standardised value 0;
    - a column constant in training (one distinct observed value) is filled with that value.

    Args:
        max_iter: maximum number of rounds over the columns.
        tol: stop when a round changes no categorical value and no continuous value by more than
            ``tol`` (standardised units, that is training standard deviations).
        n_estimators: trees in each random forest.
        random_state: seed of the forests; the same seed and rows give the same values.
        n_jobs: parallel jobs of each random forest, as in scikit-learn.

    Attributes:
        columns_: the ``N`` column names seen in fit.
        cardinalities_: ``(C_cat,)`` level counts.
        initial_: the fitted mean/mode imputer that gives the start values.
        estimators_: ``(column index, fitted estimator)`` pairs in the order they were fitted,
            replayed in that order by :meth:`transform`.
        order_: the modelled column indices in the order of one round, fewest missing first.
        n_iter_: rounds run during fit.
        training_levels_: for each categorical column, the level indices observed in training.
        low_, high_: ``(C_num,)`` training minimum and maximum of each standardised continuous column.
    """

    def __init__(
        self,
        max_iter: int = 10,
        tol: float = 1e-3,
        n_estimators: int = 100,
        random_state: int | None = 0,
        n_jobs: int | None = None,
    ) -> None:
        self.max_iter = max_iter
        self.tol = tol
        self.n_estimators = n_estimators
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(
        self,
        table: EncodedTable,
        cardinalities: Sequence[int],
        image_tokens: np.ndarray | None = None,
        image_present: np.ndarray | None = None,
    ) -> IterativeTabularImputer:
        """Fit the per-column models on the rows of ``table`` (the training split only) and return ``self``.

        The image arguments are accepted for the common interface and ignored.
        """
        self._check_parameters()
        check_table(table, cardinalities)
        self.columns_ = tuple(table.columns)
        self.cardinalities_ = tuple(int(value) for value in cardinalities)
        self.initial_ = MeanModeImputer().fit(table, cardinalities)

        n_categorical = len(self.cardinalities_)
        self.training_levels_ = [
            sorted(int(level) for level in np.unique(table.categorical[:, index][table.categorical[:, index] >= 0]))
            for index in range(n_categorical)
        ]
        self.low_, self.high_ = _training_range(table.continuous)
        modelled = self._modelled_columns(table)
        missing_counts = table.missing_values.sum(axis=0)
        self.order_ = sorted(modelled, key=lambda column: (int(missing_counts[column]), column))

        values = self._start_values(table)
        rng = check_random_state(self.random_state)
        self.estimators_ = []
        self.n_iter_ = 0
        for _ in range(self.max_iter):
            previous = values.copy()
            for column in self.order_:
                estimator = self._fit_column(column, values, table.missing_values, rng)
                self.estimators_.append((column, estimator))
                self._predict_column(column, estimator, values, table.missing_values[:, column])
            self.n_iter_ += 1
            if self._converged(previous, values):
                break

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
        """Fill in every missing value of ``table`` by replaying the fitted rounds; observed values stay as they are."""
        check_is_fitted(self, "estimators_")
        check_fitted_columns(self, table)
        self._warn_unseen_levels(table)

        values = self._start_values(table)
        for column, estimator in self.estimators_:
            self._predict_column(column, estimator, values, table.missing_values[:, column])

        n_categorical = len(self.cardinalities_)
        completed = EncodedTable(
            categorical=np.rint(values[:, :n_categorical]).astype(np.int64),
            continuous=values[:, n_categorical:].astype(np.float32),
            missing_values=np.zeros_like(table.missing_values, dtype=bool),
            columns=tuple(table.columns),
        )
        return RecoveredTable(table=completed, recovered=table.missing_values.astype(bool, copy=True))

    def _check_parameters(self) -> None:
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive int, got {self.max_iter!r}.")
        if not isinstance(self.tol, (int, float)) or self.tol < 0:
            raise ValueError(f"tol must be a non-negative number, got {self.tol!r}.")
        if isinstance(self.n_estimators, bool) or not isinstance(self.n_estimators, int) or self.n_estimators < 1:
            raise ValueError(f"n_estimators must be a positive int, got {self.n_estimators!r}.")

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

    def _fit_column(
        self, column: int, values: np.ndarray, missing: np.ndarray, rng: np.random.RandomState
    ) -> RandomForestClassifier | BayesianRidge:
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
        self, column: int, estimator: RandomForestClassifier | BayesianRidge, values: np.ndarray, missing: np.ndarray
    ) -> None:
        """Overwrite the missing rows of one column of ``values`` with the estimator's predictions."""
        if not missing.any():
            return
        predicted = estimator.predict(self._features(values[missing], column))
        n_categorical = len(self.cardinalities_)
        if column >= n_categorical:
            index = column - n_categorical
            predicted = np.clip(predicted, self.low_[index], self.high_[index])
        values[missing, column] = predicted

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
