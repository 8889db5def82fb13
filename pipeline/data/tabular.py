"""Encode clinical table columns into the arrays that :class:`pipeline.networks.TabularTokenizer` takes.

Shape letters: ``n`` rows (subjects), ``C_cat`` categorical columns, ``C_num`` continuous columns,
``N = C_cat + C_num`` columns in all. Every array that spans all columns lists the categorical
columns first, in the order given to the encoder, then the continuous columns.

Missing values in the input frame are ``NaN``, ``None`` or ``pd.NA``. The manifest reader has
already turned the schema's missing tokens, zero-is-missing codes and out-of-range values into
missing values, so this module never interprets raw tokens.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

logger = logging.getLogger(__name__)

_FORMAT_NAME = "pipeline.data.tabular.TabularEncoder"
_FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class EncodedTable:
    """Encoded rows of a clinical table.

    Attributes:
        categorical: ``(n, C_cat)`` int64 level indices; ``-1`` where the value is missing.
        continuous: ``(n, C_num)`` float32 standardised values; ``NaN`` where the value is missing.
        missing_values: ``(n, N)`` bool, ``True`` where the value is absent, categorical columns first.
        columns: the ``N`` column names in the order of ``missing_values``.
    """

    categorical: np.ndarray
    continuous: np.ndarray
    missing_values: np.ndarray
    columns: tuple[str, ...]

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Convert to the keyword arguments of ``TabularTokenizer.forward``.

        Returns ``{"categorical": (n, C_cat) int64, "continuous": (n, C_num) float32,
        "missing_values": (n, N) bool}`` as CPU tensors that own their memory.
        """
        return {
            "categorical": torch.from_numpy(self.categorical.astype(np.int64, copy=True)),
            "continuous": torch.from_numpy(self.continuous.astype(np.float32, copy=True)),
            "missing_values": torch.from_numpy(self.missing_values.astype(bool, copy=True)),
        }


class TabularEncoder(BaseEstimator):
    """Map categorical columns to level indices and standardise continuous columns.

    Follows the scikit-learn estimator contract: :meth:`fit` learns the levels and statistics
    from the training rows only, and :meth:`transform` applies them to any split.

    Categorical values are compared after stripping surrounding whitespace and ignoring case,
    so ``"Current "`` and ``"current"`` are the same level. Integral numbers match their text
    form, so a code read as ``1.0`` matches the level ``"1"``. Levels are stored as text. Given
    levels keep their order; otherwise the levels are the values observed in training, sorted
    (numbers by value first, then text). A value that is not a level at transform time is
    read as missing, never mapped to an existing level. One warning per column lists those
    values with their counts, and :attr:`unseen_counts_` keeps the counts.

    Continuous columns are standardised with the training mean and population standard deviation
    (``ddof=0``, as ``numpy.nanstd``), ignoring missing values. A column with zero spread is
    scaled by 1 instead, with a warning.

    A column that is missing in every training row gets no levels (categorical) or ``NaN``
    statistics (continuous) and is listed in :attr:`all_missing_columns_`. At transform time it
    is marked missing in every row, even where a later frame has values, because the model was
    never trained on them. This keeps the column count the same at training and test time.

    Args:
        categorical_columns: names of the categorical columns, in token order.
        continuous_columns: names of the continuous columns, in token order.
        categorical_levels: fixed levels for some categorical columns, in index order; the other
            categorical columns take their levels from the training rows.

    Attributes:
        levels_: levels of each categorical column, as text, in index order.
        mean_: ``(C_num,)`` training mean of each continuous column, ``NaN`` if all missing.
        scale_: ``(C_num,)`` standard deviation used to divide, 1 for zero spread, ``NaN`` if all missing.
        all_missing_columns_: columns that were missing in every training row.
        unseen_counts_: for the most recent :meth:`transform`, ``{column: {value: count}}`` of the
            categorical values that were not levels; empty after :meth:`fit`.
    """

    def __init__(
        self,
        categorical_columns: Sequence[str],
        continuous_columns: Sequence[str],
        categorical_levels: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.categorical_columns = categorical_columns
        self.continuous_columns = continuous_columns
        self.categorical_levels = categorical_levels

    def fit(self, frame: pd.DataFrame, y: Any = None) -> TabularEncoder:
        """Learn levels and statistics from ``frame``, which must hold the training rows only.

        ``y`` is ignored and exists only for scikit-learn pipelines.
        """
        categorical, continuous, given_levels = self._checked_parameters()
        _check_frame(frame, categorical + continuous)

        self.levels_ = {}
        all_missing = []
        for column in categorical:
            self.levels_[column] = _fit_levels(column, frame[column], given_levels.get(column))
            if frame[column].isna().all():
                all_missing.append(column)

        self.mean_ = np.full(len(continuous), np.nan)
        self.scale_ = np.full(len(continuous), np.nan)
        for index, column in enumerate(continuous):
            values = _numeric_values(column, frame[column])
            if np.isnan(values).all():
                all_missing.append(column)
                continue
            self.mean_[index], self.scale_[index] = _fit_statistics(column, values)

        self.all_missing_columns_ = all_missing
        self.unseen_counts_ = {}
        if all_missing:
            logger.warning(
                "columns %s are missing in every training row, so they will be marked missing in every "
                "row that is encoded.",
                all_missing,
            )
        logger.info(
            "fitted the tabular encoder on %d rows: %d categorical and %d continuous columns.",
            len(frame),
            len(categorical),
            len(continuous),
        )
        return self

    def _checked_parameters(self) -> tuple[list[str], list[str], dict[str, list[str]]]:
        """Return the column lists and given levels after checking the constructor arguments."""
        categorical = _column_list("categorical_columns", self.categorical_columns)
        continuous = _column_list("continuous_columns", self.continuous_columns)
        if not categorical and not continuous:
            raise ValueError("TabularEncoder needs at least one categorical or continuous column, got none.")
        overlap = sorted(set(categorical) & set(continuous))
        if overlap:
            raise ValueError(f"columns {overlap} are listed as both categorical and continuous.")

        given = {} if self.categorical_levels is None else dict(self.categorical_levels)
        unknown = sorted(set(given) - set(categorical))
        if unknown:
            raise ValueError(
                f"categorical_levels has columns {unknown} that are not in categorical_columns {categorical}."
            )
        return categorical, continuous, {column: _given_levels(column, levels) for column, levels in given.items()}

    def transform(self, frame: pd.DataFrame) -> EncodedTable:
        """Encode the rows of ``frame`` with the fitted levels and statistics.

        Columns are matched by name; extra columns are ignored. Returns an :class:`EncodedTable`
        with ``n = len(frame)`` rows in the order of ``frame``.

        Raises:
            NotFittedError: if :meth:`fit` has not been called.
            ValueError: if a column is absent from ``frame``, or a continuous column contains a value
                that is not a number or is infinite.
        """
        check_is_fitted(self, "levels_")
        categorical = list(self.categorical_columns)
        continuous = list(self.continuous_columns)
        _check_frame(frame, categorical + continuous)

        codes = np.full((len(frame), len(categorical)), -1, dtype=np.int64)  # (n, C_cat)
        self.unseen_counts_ = {}
        for index, column in enumerate(categorical):
            codes[:, index], unseen = self._encode_levels(column, frame[column])
            if unseen:
                self.unseen_counts_[column] = unseen

        values = np.full((len(frame), len(continuous)), np.nan, dtype=np.float32)  # (n, C_num)
        for index, column in enumerate(continuous):
            values[:, index] = self._standardise(column, index, frame[column])

        missing = np.concatenate([codes < 0, np.isnan(values)], axis=1)  # (n, N)
        return EncodedTable(
            categorical=codes, continuous=values, missing_values=missing, columns=tuple(categorical + continuous)
        )

    def fit_transform(self, frame: pd.DataFrame, y: Any = None) -> EncodedTable:
        """Fit on ``frame`` (training rows only) and encode it."""
        return self.fit(frame, y).transform(frame)

    def _encode_levels(self, column: str, series: pd.Series) -> tuple[np.ndarray, dict[str, int]]:
        """Return the level index of each value (``-1`` if missing) and the counts of unseen values."""
        codes = np.full(len(series), -1, dtype=np.int64)
        observed = series.astype(object).notna().to_numpy()
        if not observed.any():
            return codes, {}

        if column in self.all_missing_columns_:
            _warn_dropped_values(column, int(observed.sum()))
            return codes, {}

        lookup = {_level_key(level): index for index, level in enumerate(self.levels_[column])}
        raw = series.astype(object)[observed]
        found = raw.map(lambda value: lookup.get(_level_key(value), -1)).to_numpy(dtype=np.int64)
        codes[observed] = found

        unseen_values = raw[found < 0].map(_level_label)
        counts = unseen_values.value_counts(sort=False).sort_index()
        unseen = {str(value): int(count) for value, count in counts.items()}
        if unseen:
            listing = ", ".join(f"{value!r}: {count}" for value, count in unseen.items())
            logger.warning(
                "column %r: values that are not among the levels %s are read as missing (value: rows): %s.",
                column,
                self.levels_[column],
                listing,
            )
        return codes, unseen

    def _standardise(self, column: str, index: int, series: pd.Series) -> np.ndarray:
        """Return ``(value - mean) / scale`` for one continuous column, ``NaN`` where missing."""
        values = _numeric_values(column, series)
        if column in self.all_missing_columns_:
            observed = int((~np.isnan(values)).sum())
            if observed:
                _warn_dropped_values(column, observed)
            return np.full(len(values), np.nan)
        return (values - self.mean_[index]) / self.scale_[index]

    def inverse_transform(self, continuous: np.ndarray) -> np.ndarray:
        """Map standardised continuous values ``(n, C_num)`` back to their original units.

        ``NaN`` stays ``NaN``. Columns that were missing in every training row have no statistics
        and come back as ``NaN``. Returns a float64 array of the same shape.
        """
        check_is_fitted(self, "levels_")
        values = np.asarray(continuous, dtype=np.float64)
        expected = len(self.continuous_columns)
        if values.ndim != 2 or values.shape[1] != expected:
            raise ValueError(f"continuous must have shape (n, {expected}), got {values.shape}.")
        return values * self.scale_ + self.mean_

    @property
    def cardinalities(self) -> tuple[int, ...]:
        """Number of levels of each categorical column, for ``TabularTokenizer(categorical_cardinalities=...)``.

        A column without levels (missing in every training row) reports 1, because the tokenizer
        needs at least one embedding row. Every value of such a column is marked missing, so the
        tokenizer replaces that row with its mask token.
        """
        check_is_fitted(self, "levels_")
        return tuple(max(len(self.levels_[column]), 1) for column in self.categorical_columns)

    def to_dict(self) -> dict[str, Any]:
        """Return the parameters and fitted state as plain JSON-ready data, with ``None`` in place of ``NaN``."""
        check_is_fitted(self, "levels_")
        given = self.categorical_levels
        return {
            "format": _FORMAT_NAME,
            "version": _FORMAT_VERSION,
            "categorical_columns": list(self.categorical_columns),
            "continuous_columns": list(self.continuous_columns),
            "categorical_levels": None if given is None else {c: _given_levels(c, v) for c, v in given.items()},
            "levels": {column: list(levels) for column, levels in self.levels_.items()},
            "mean": [_json_float(value) for value in self.mean_],
            "scale": [_json_float(value) for value in self.scale_],
            "all_missing_columns": list(self.all_missing_columns_),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TabularEncoder:
        """Rebuild a fitted encoder from the output of :meth:`to_dict`.

        Raises:
            ValueError: if a field is absent, of the wrong kind, or inconsistent with the columns.
        """
        if data.get("format") != _FORMAT_NAME or data.get("version") != _FORMAT_VERSION:
            raise ValueError(
                f"expected a saved TabularEncoder with format {_FORMAT_NAME!r} version {_FORMAT_VERSION}, "
                f"got format {data.get('format')!r} version {data.get('version')!r}."
            )
        missing_fields = sorted(
            {"categorical_columns", "continuous_columns", "levels", "mean", "scale", "all_missing_columns"} - set(data)
        )
        if missing_fields:
            raise ValueError(f"saved TabularEncoder is missing the fields {missing_fields}.")

        encoder = cls(
            categorical_columns=list(data["categorical_columns"]),
            continuous_columns=list(data["continuous_columns"]),
            categorical_levels=data.get("categorical_levels"),
        )
        categorical, continuous, _ = encoder._checked_parameters()
        if sorted(data["levels"]) != sorted(categorical):
            raise ValueError(f"saved levels cover columns {sorted(data['levels'])}, expected {sorted(categorical)}.")
        for field in ("mean", "scale"):
            if len(data[field]) != len(continuous):
                raise ValueError(
                    f"saved {field} has length {len(data[field])}, expected {len(continuous)}, one per continuous column."
                )

        encoder.levels_ = {column: [str(level) for level in data["levels"][column]] for column in categorical}
        encoder.mean_ = np.array([np.nan if v is None else float(v) for v in data["mean"]])
        encoder.scale_ = np.array([np.nan if v is None else float(v) for v in data["scale"]])
        encoder.all_missing_columns_ = [str(column) for column in data["all_missing_columns"]]
        encoder.unseen_counts_ = {}
        return encoder


def _column_list(name: str, columns: Sequence[str]) -> list[str]:
    """Return ``columns`` as a list after checking that it contains unique non-empty strings."""
    if isinstance(columns, str) or not isinstance(columns, Sequence):
        raise TypeError(f"{name} must be a sequence of column names, got {type(columns).__name__}.")
    names = list(columns)
    invalid = [column for column in names if not isinstance(column, str) or not column]
    if invalid:
        raise ValueError(f"{name} must contain non-empty strings, got {invalid}.")
    duplicates = sorted({column for column in names if names.count(column) > 1})
    if duplicates:
        raise ValueError(f"{name} lists columns {duplicates} more than once.")
    return names


def _given_levels(column: str, levels: Sequence[Any]) -> list[str]:
    """Return the given levels of ``column`` as text after checking they are distinct."""
    if isinstance(levels, str) or not isinstance(levels, Sequence) or not levels:
        raise ValueError(f"categorical_levels[{column!r}] must be a non-empty list of levels, got {levels!r}.")
    labels = [_level_label(level) for level in levels]
    keys = [_level_key(level) for level in levels]
    clashes = sorted({label for label, key in zip(labels, keys) if keys.count(key) > 1})
    if clashes:
        raise ValueError(
            f"categorical_levels[{column!r}] has levels {clashes} that are equal once case and surrounding "
            "whitespace are ignored."
        )
    return labels


def _check_frame(frame: pd.DataFrame, columns: list[str]) -> None:
    """Raise unless ``frame`` is a DataFrame with every one of ``columns``."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}.")
    absent = [column for column in columns if column not in frame.columns]
    if absent:
        raise ValueError(f"frame has no columns {absent}. Its columns are {list(frame.columns)}.")


def _level_label(value: Any) -> str:
    """Return the text form of a level, with integral numbers written without a decimal part and text stripped."""
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _level_key(value: Any) -> str:
    """Return the text form of a level in lower case, the form in which levels are compared."""
    return _level_label(value).casefold()


def _level_sort_key(label: str) -> tuple[int, float, str, str]:
    """Sort numbers by value before text, so that ``"2"`` comes before ``"10"``, and text ignoring case."""
    try:
        number = float(label)
    except ValueError:
        return (1, 0.0, label.casefold(), label)
    if not math.isfinite(number):
        return (1, 0.0, label.casefold(), label)
    return (0, number, "", label)


def _fit_levels(column: str, series: pd.Series, given_levels: list[str] | None) -> list[str]:
    """Return the levels of one categorical column: ``given_levels`` if set, else the sorted observed values."""
    observed = series.astype(object).dropna()
    spellings: dict[str, list[str]] = {}
    for label in sorted(set(observed.map(_level_label))):
        spellings.setdefault(label.casefold(), []).append(label)

    if given_levels is not None:
        given_keys = {label.casefold() for label in given_levels}
        outside = sorted(label for key, labels in spellings.items() if key not in given_keys for label in labels)
        if outside:
            logger.warning(
                "column %r: training values %s are not among the given levels %s and are read as missing.",
                column,
                outside,
                given_levels,
            )
        return list(given_levels)

    merged = {labels[0]: labels for labels in spellings.values() if len(labels) > 1}
    if merged:
        logger.info("column %r: spellings that differ only in case are merged into one level: %s.", column, merged)
    return sorted((labels[0] for labels in spellings.values()), key=_level_sort_key)


def _numeric_values(column: str, series: pd.Series) -> np.ndarray:
    """Return one continuous column as float64 with ``NaN`` for missing values.

    Raises ``ValueError`` naming the row for text that is not a number and for infinite values.
    """
    raw = series.astype(object)
    numeric = pd.to_numeric(raw, errors="coerce").astype("float64")
    not_a_number = numeric.isna() & raw.notna()
    if not_a_number.any():
        position = int(np.argmax(not_a_number.to_numpy()))
        raise ValueError(
            f"continuous column {column!r} has the value {raw.iloc[position]!r} in row {series.index[position]!r}, "
            "which is not a number. "
            "Declare the column categorical or fix the value in the manifest."
        )
    values = numeric.to_numpy()
    infinite = np.isinf(values)
    if infinite.any():
        row = series.index[int(np.argmax(infinite))]
        raise ValueError(f"continuous column {column!r} has the infinite value {values[infinite][0]} in row {row!r}.")
    return values


def _fit_statistics(column: str, values: np.ndarray) -> tuple[float, float]:
    """Return the mean and the scale (standard deviation, or 1 for zero spread) of observed values."""
    mean = float(np.nanmean(values))
    # Compare the range, not the standard deviation, because rounding can leave a tiny nonzero
    # standard deviation for a constant column such as [0.1, 0.1, 0.1].
    if np.nanmax(values) > np.nanmin(values):
        return mean, float(np.nanstd(values))

    logger.warning(
        "continuous column %r has zero spread in training (every observed value is %s), so it is only "
        "centred and divided by 1.",
        column,
        mean,
    )
    return mean, 1.0


def _warn_dropped_values(column: str, count: int) -> None:
    logger.warning(
        "column %r was missing in every training row, so its %d observed values are read as missing.", column, count
    )


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
