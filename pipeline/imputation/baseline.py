"""Mean/mode filling, the baseline that every other tabular imputer must beat.

Shape letters as in :mod:`pipeline.imputation.base`: ``n`` rows, ``C_cat``/``C_num``
categorical/continuous columns, ``N`` columns in all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from sklearn.utils.validation import check_is_fitted

from pipeline.data.tabular import EncodedTable
from pipeline.imputation.base import (
    RecoveredTable,
    TabularImputer,
    check_fitted_columns,
    check_table,
)

logger = logging.getLogger(__name__)


class MeanModeImputer(TabularImputer):
    """Fill a missing categorical value with the training mode and a continuous one with the training mean.

    The mode is the most frequent observed level index, the lowest index on a tie. The mean is
    taken over the observed standardised values of the rows passed to :meth:`fit`. A column with
    no observed value in those rows is filled with level 0 or the standardised value 0, with a
    warning. The image arguments are accepted for the common interface and ignored.

    Attributes:
        columns_: the ``N`` column names seen in fit.
        cardinalities_: ``(C_cat,)`` level counts.
        modes_: ``(C_cat,)`` int64 fill value of each categorical column.
        means_: ``(C_num,)`` float32 fill value of each continuous column.
    """

    def fit(
        self,
        table: EncodedTable,
        cardinalities: Sequence[int],
        image_tokens: np.ndarray | None = None,
        image_present: np.ndarray | None = None,
    ) -> MeanModeImputer:
        """Compute the fill values from the rows of ``table`` (the training split) and return ``self``."""
        check_table(table, cardinalities)
        self.columns_ = tuple(table.columns)
        self.cardinalities_ = tuple(int(value) for value in cardinalities)

        n_categorical = len(self.cardinalities_)
        modes = np.zeros(n_categorical, dtype=np.int64)
        for index, cardinality in enumerate(self.cardinalities_):
            observed = table.categorical[:, index][table.categorical[:, index] >= 0]
            if observed.size == 0:
                logger.warning("column %r has no observed value in training, so it is filled with level 0.", self.columns_[index])
                continue
            modes[index] = int(np.argmax(np.bincount(observed, minlength=cardinality)))

        means = np.zeros(table.continuous.shape[1], dtype=np.float32)
        for index in range(table.continuous.shape[1]):
            values = table.continuous[:, index]
            if np.isnan(values).all():
                logger.warning(
                    "column %r has no observed value in training, so it is filled with the standardised value 0.",
                    self.columns_[n_categorical + index],
                )
                continue
            means[index] = np.float32(np.nanmean(values))

        self.modes_ = modes
        self.means_ = means
        return self

    def transform(
        self,
        table: EncodedTable,
        image_tokens: np.ndarray | None = None,
        image_present: np.ndarray | None = None,
    ) -> RecoveredTable:
        """Replace every missing value of ``table`` with its column's fill value."""
        check_is_fitted(self, "modes_")
        check_fitted_columns(self, table)

        categorical = np.where(table.categorical < 0, self.modes_, table.categorical).astype(np.int64)
        continuous = np.where(np.isnan(table.continuous), self.means_, table.continuous).astype(np.float32)
        completed = EncodedTable(
            categorical=categorical,
            continuous=continuous,
            missing_values=np.zeros_like(table.missing_values, dtype=bool),
            columns=tuple(table.columns),
        )
        return RecoveredTable(table=completed, recovered=table.missing_values.astype(bool, copy=True))
