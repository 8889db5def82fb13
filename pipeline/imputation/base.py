"""The interface that every imputer implements and the one call the selector and the bundles use.

Shape letters: ``n`` rows (subjects), ``B`` batch, ``M`` modalities, ``C_cat``/``C_num``
categorical/continuous columns, ``N = C_cat + C_num`` columns (categorical first, as in
:mod:`pipeline.data.tabular`), ``N_img`` image tokens, ``D`` token width.

Tabular imputers work in the encoded space of :class:`pipeline.data.tabular.EncodedTable`:
categorical columns are level indices (``-1`` = missing) and continuous columns are standardised
values (``NaN`` = missing). A recovered categorical value is therefore a level index in
``[0, cardinality)`` and never a new level. Imputers follow the scikit-learn estimator contract:
``__init__`` stores parameters, learned state ends in ``_``, ``transform`` checks that
``fit`` ran, and randomness comes from ``random_state``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from sklearn.base import BaseEstimator

from pipeline.data.tabular import EncodedTable

logger = logging.getLogger(__name__)

TABLE_KEYS: tuple[str, ...] = ("categorical", "continuous", "missing_values")


@dataclass(frozen=True, eq=False)
class RecoveredTable:
    """A table with every missing value filled in, and where the filled values are.

    Attributes:
        table: the completed :class:`EncodedTable`. ``categorical`` contains no ``-1``,
            ``continuous`` contains no ``NaN`` and ``missing_values`` is all ``False``.
        recovered: ``(n, N)`` bool, ``True`` where the imputer filled in the value, categorical
            columns first. It equals the input table's ``missing_values``.
    """

    table: EncodedTable
    recovered: np.ndarray

    @property
    def categorical(self) -> np.ndarray:
        """``(n, C_cat)`` int64 level indices, none missing."""
        return self.table.categorical

    @property
    def continuous(self) -> np.ndarray:
        """``(n, C_num)`` float32 standardised values, none missing."""
        return self.table.continuous

    @property
    def columns(self) -> tuple[str, ...]:
        """The ``N`` column names, categorical first."""
        return self.table.columns

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Convert to the keyword arguments of ``TabularTokenizer.forward``, as :meth:`EncodedTable.to_tensors`.

        Returns ``{"categorical": (n, C_cat) int64, "continuous": (n, C_num) float32,
        "missing_values": (n, N) bool}``; ``missing_values`` is all ``False``. The recovered
        mask is :attr:`recovered`, not part of this dict, so the dict can be passed to the
        tokenizer as it is.
        """
        return self.table.to_tensors()


class TabularImputer(BaseEstimator, ABC):
    """Base class of the clinical-table imputers (mean/mode, iterative, learned).

    Subclasses implement :meth:`fit` and :meth:`transform`. :meth:`fit` learns only from the rows
    it is given, so callers pass the training split. ``image_tokens`` and ``image_present`` let
    an imputer use the image of the same subject; imputers that do not use images ignore them.

    Attributes set by :meth:`fit` in every subclass:
        columns_: the ``N`` column names seen in fit; :meth:`transform` requires the same names.
        cardinalities_: ``(C_cat,)`` number of levels of each categorical column.
    """

    @abstractmethod
    def fit(
        self,
        table: EncodedTable,
        cardinalities: Sequence[int],
        image_tokens: np.ndarray | None = None,
        image_present: np.ndarray | None = None,
    ) -> TabularImputer:
        """Learn from the rows of ``table`` (the training split) and return ``self``.

        Args:
            table: encoded training rows with their missing values.
            cardinalities: ``C_cat`` level counts, as ``TabularEncoder.cardinalities``.
            image_tokens: optional ``(n, N_img, D)`` image tokens of the same rows.
            image_present: optional ``(n,)`` bool, ``True`` where the row has an image.
        """

    @abstractmethod
    def transform(
        self,
        table: EncodedTable,
        image_tokens: np.ndarray | None = None,
        image_present: np.ndarray | None = None,
    ) -> RecoveredTable:
        """Fill in every missing value of ``table`` and return the completed table with its recovered mask.

        Observed values are returned unchanged.

        Raises:
            NotFittedError: if :meth:`fit` has not been called.
            ValueError: if the columns or cardinalities differ from those seen in :meth:`fit`.
        """

    def fit_transform(
        self,
        table: EncodedTable,
        cardinalities: Sequence[int],
        image_tokens: np.ndarray | None = None,
        image_present: np.ndarray | None = None,
    ) -> RecoveredTable:
        """Fit on ``table`` (training rows only) and fill in its missing values."""
        return self.fit(table, cardinalities, image_tokens, image_present).transform(table, image_tokens, image_present)


class ImageTokenImputer(BaseEstimator, ABC):
    """Base class of the imputers that recover the image tokens of subjects without an image.

    ``source`` is what the imputer predicts from, for example the encoded clinical table of the
    same subjects. It has ``n`` rows, and each subclass fixes the layout of a row.
    """

    @abstractmethod
    def fit(self, tokens: np.ndarray, source: np.ndarray, present: np.ndarray) -> ImageTokenImputer:
        """Learn to predict ``tokens`` from ``source`` on the rows where ``present`` is ``True``.

        Args:
            tokens: ``(n, N_img, D)`` image tokens; rows where ``present`` is ``False`` are ignored.
            source: ``(n, ...)`` inputs to predict from.
            present: ``(n,)`` bool, ``True`` where the subject has an image.
        """

    @abstractmethod
    def transform(self, source: np.ndarray) -> np.ndarray:
        """Predict ``(n, N_img, D)`` image tokens from ``(n, ...)`` ``source``."""


class RecoveredBatch(NamedTuple):
    """The result of :func:`recover_batch`.

    Attributes:
        table: ``{"categorical": (B, C_cat) int64, "continuous": (B, C_num) float32,
            "missing_values": (B, N) bool all False}`` on the device of the input.
        recovered: ``(B, N)`` bool, ``True`` where the value was filled in.
    """

    table: dict[str, torch.Tensor]
    recovered: torch.Tensor


def recover_batch(
    table: Mapping[str, torch.Tensor],
    present_mask: torch.Tensor,
    imputer: TabularImputer,
    table_index: int,
    image_tokens: torch.Tensor | None = None,
    image_present: torch.Tensor | None = None,
) -> RecoveredBatch:
    """Fill in the missing values of a batch's table with a fitted imputer.

    A subject whose table modality is absent (``present_mask[:, table_index]`` is ``False``) gets
    its whole table recovered, whatever its ``missing_values`` mark. Other subjects get only the
    values marked in ``missing_values`` recovered.

    Args:
        table: ``{"categorical": (B, C_cat), "continuous": (B, C_num), "missing_values": (B, N)}``
            tensors, as in a collated batch from :func:`pipeline.data.dataset.subject_items`.
        present_mask: ``(B, M)`` bool, ``True`` where the subject has the modality.
        imputer: a fitted :class:`TabularImputer`.
        table_index: the column of ``present_mask`` that belongs to this table modality.
        image_tokens: optional ``(B, N_img, D)`` image tokens, passed to the imputer.
        image_present: optional ``(B,)`` bool, passed to the imputer.

    Returns:
        The completed table tensors and the ``(B, N)`` recovered mask, on the device of ``table``.
    """
    missing_keys = [key for key in TABLE_KEYS if key not in table]
    if missing_keys:
        raise KeyError(f"table has no {missing_keys} tensors; it has {sorted(table)}.")
    not_tensors = [key for key in TABLE_KEYS if not isinstance(table[key], torch.Tensor)]
    if not_tensors or not isinstance(present_mask, torch.Tensor):
        raise TypeError(
            f"recover_batch takes torch tensors (a collated batch); {not_tensors or ['present_mask']} are not. "
            "Convert arrays with torch.as_tensor, or call imputer.transform on an EncodedTable."
        )
    if isinstance(table_index, bool) or not isinstance(table_index, int):
        raise TypeError(f"table_index must be an int column of present_mask, got {type(table_index).__name__} {table_index!r}.")
    if not isinstance(imputer, TabularImputer):
        raise TypeError(f"imputer must be a TabularImputer, got {type(imputer).__name__}.")
    columns = getattr(imputer, "columns_", None)
    if columns is None:
        raise ValueError(f"{type(imputer).__name__} is not fitted; call fit on the training split first.")

    device = table["categorical"].device
    categorical = table["categorical"].detach().cpu().numpy().astype(np.int64, copy=True)  # (B, C_cat)
    continuous = table["continuous"].detach().cpu().numpy().astype(np.float32, copy=True)  # (B, C_num)
    missing = table["missing_values"].detach().cpu().numpy().astype(bool, copy=True)  # (B, N)
    present = present_mask.detach().cpu().numpy().astype(bool)  # (B, M)
    if present.ndim != 2 or present.shape[0] != missing.shape[0]:
        raise ValueError(f"present_mask must have shape (B={missing.shape[0]}, M), got {tuple(present.shape)}.")
    if not 0 <= table_index < present.shape[1]:
        raise ValueError(f"table_index must be in [0, {present.shape[1]}), got {table_index}.")

    absent = ~present[:, table_index]  # (B,)
    missing[absent] = True
    encoded = _as_encoded(categorical, continuous, missing, tuple(columns))

    tokens = None if image_tokens is None else image_tokens.detach().cpu().numpy()
    has_image = None if image_present is None else image_present.detach().cpu().numpy().astype(bool)
    result = imputer.transform(encoded, tokens, has_image)

    tensors = {name: value.to(device) for name, value in result.to_tensors().items()}
    return RecoveredBatch(table=tensors, recovered=torch.from_numpy(result.recovered.copy()).to(device))


def _as_encoded(
    categorical: np.ndarray, continuous: np.ndarray, missing: np.ndarray, columns: tuple[str, ...]
) -> EncodedTable:
    """Build an EncodedTable whose values agree with ``missing``: ``-1`` and ``NaN`` wherever it is True."""
    n_categorical = categorical.shape[1]
    if missing.shape[1] != n_categorical + continuous.shape[1] or missing.shape[1] != len(columns):
        raise ValueError(
            f"the table has {n_categorical} categorical and {continuous.shape[1]} continuous columns and "
            f"missing_values has {missing.shape[1]}, but the imputer was fitted on {len(columns)} columns {list(columns)}."
        )
    categorical[missing[:, :n_categorical]] = -1
    continuous[missing[:, n_categorical:]] = np.nan
    return EncodedTable(categorical=categorical, continuous=continuous, missing_values=missing, columns=columns)


def check_table(table: EncodedTable, cardinalities: Sequence[int] | None = None) -> None:
    """Raise ``ValueError`` unless ``table`` is a consistent EncodedTable within ``cardinalities``.

    Checks shapes, that ``missing_values`` agrees with the ``-1`` and ``NaN`` entries, and that
    every observed level index is below its column's cardinality.
    """
    if not isinstance(table, EncodedTable):
        raise TypeError(f"table must be an EncodedTable, got {type(table).__name__}.")
    n_rows, n_categorical = table.categorical.shape
    n_columns = n_categorical + table.continuous.shape[1]
    if table.continuous.shape[0] != n_rows or table.missing_values.shape != (n_rows, n_columns):
        raise ValueError(
            f"inconsistent table shapes: categorical {table.categorical.shape}, continuous "
            f"{table.continuous.shape}, missing_values {table.missing_values.shape}."
        )
    if len(table.columns) != n_columns:
        raise ValueError(f"table has {n_columns} value columns but {len(table.columns)} names {list(table.columns)}.")
    if not np.issubdtype(table.categorical.dtype, np.integer):
        raise TypeError(
            f"table.categorical must hold integer level indices (-1 for missing), got dtype {table.categorical.dtype}; "
            "encode the table with pipeline.data.tabular.TabularEncoder."
        )
    if not np.issubdtype(table.continuous.dtype, np.floating):
        raise TypeError(f"table.continuous must be a float array (NaN for missing), got dtype {table.continuous.dtype}.")
    infinite = np.isinf(table.continuous)
    if infinite.any():
        row, column = np.argwhere(infinite)[0]
        raise ValueError(
            f"column {table.columns[n_categorical + column]!r} is {table.continuous[row, column]} in row {row}; "
            "values must be finite, or NaN where missing."
        )
    expected_missing = np.concatenate([table.categorical < 0, np.isnan(table.continuous)], axis=1)
    disagreeing = expected_missing != table.missing_values
    if disagreeing.any():
        row, column = np.argwhere(disagreeing)[0]
        raise ValueError(
            f"missing_values[{row}, {column}] (column {table.columns[column]!r}) is {bool(table.missing_values[row, column])}, "
            "but the value there is "
            f"{'missing (-1 or NaN)' if expected_missing[row, column] else 'present'}; missing_values must be True exactly "
            "where a level index is -1 or a continuous value is NaN."
        )

    if cardinalities is None:
        return
    if isinstance(cardinalities, (str, bytes)) or not isinstance(cardinalities, Sequence | np.ndarray):
        raise TypeError(
            f"cardinalities must be a sequence of level counts, one per categorical column, got "
            f"{type(cardinalities).__name__} {cardinalities!r}; use TabularEncoder.cardinalities."
        )
    limits = np.asarray(list(cardinalities), dtype=np.int64)
    if limits.shape != (n_categorical,) or (limits < 1).any():
        raise ValueError(f"cardinalities must be {n_categorical} positive level counts, got {list(cardinalities)}.")
    too_large = table.categorical >= limits  # (n, C_cat)
    if too_large.any():
        row, column = np.argwhere(too_large)[0]
        raise ValueError(
            f"column {table.columns[column]!r} has level index {table.categorical[row, column]} in row {row}, "
            f"but its cardinality is {limits[column]}."
        )


def check_fitted_columns(imputer: TabularImputer, table: EncodedTable) -> None:
    """Raise ``ValueError`` unless ``table`` has the columns the imputer was fitted on, in the same order."""
    if tuple(table.columns) != tuple(imputer.columns_):
        raise ValueError(
            f"{type(imputer).__name__} was fitted on columns {list(imputer.columns_)}, "
            f"but the table has columns {list(table.columns)}."
        )
    check_table(table, imputer.cardinalities_)
