"""Inputs every imputer rejects before fitting: wrong dtypes, infinite values, inconsistent masks."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.tabular import EncodedTable
from pipeline.imputation import LearnedTabularImputer, MeanModeImputer


def make_table(categorical=None, continuous=None, missing=None) -> EncodedTable:
    categorical = np.array([[0], [1], [-1]], dtype=np.int64) if categorical is None else categorical
    continuous = np.array([[0.5], [np.nan], [1.0]], dtype=np.float32) if continuous is None else continuous
    if missing is None:
        missing = np.concatenate([categorical < 0, np.isnan(continuous)], axis=1)
    return EncodedTable(categorical, continuous, missing, ("smoker", "age"))


@pytest.mark.parametrize(
    "table, error, message",
    [
        (make_table(categorical=np.array([[0.0], [1.0], [np.nan]])), TypeError, "integer level indices"),
        (make_table(continuous=np.array([[0.5], [np.inf], [1.0]], dtype=np.float32)), ValueError, "column 'age' is inf in row 1"),
        (
            make_table(missing=np.array([[False, False], [False, False], [True, False]])),
            ValueError,
            r"missing_values\[1, 1\] \(column 'age'\) is False, but the value there is missing",
        ),
    ],
)
def test_imputers_reject_bad_tables(table, error, message):
    with pytest.raises(error, match=message):
        MeanModeImputer().fit(table, [2])


def test_learned_transform_names_other_columns():
    table = make_table()
    imputer = LearnedTabularImputer(max_epochs=2, random_state=0).fit(table, [2])
    renamed = EncodedTable(table.categorical, table.continuous, table.missing_values, ("smoker", "weight"))

    with pytest.raises(ValueError, match=r"fitted on columns \['smoker', 'age'\], but the table has columns \['smoker', 'weight'\]"):
        imputer.transform(renamed)
