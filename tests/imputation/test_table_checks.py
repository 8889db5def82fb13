"""Inputs the imputers and their helpers reject: wrong types, infinite values, inconsistent masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data.tabular import EncodedTable
from pipeline.imputation import (
    LearnedTabularImputer,
    MeanModeImputer,
    load_imputer,
    recover_batch,
)


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


def test_cardinalities_must_be_a_sequence():
    with pytest.raises(TypeError, match="cardinalities must be a sequence of level counts"):
        MeanModeImputer().fit(make_table(), 2)


@pytest.mark.parametrize("table_index", [1.0, True])
def test_recover_batch_rejects_non_int_table_index(table_index):
    table = make_table()
    imputer = MeanModeImputer().fit(table, [2])
    tensors = table.to_tensors()

    with pytest.raises(TypeError, match="table_index must be an int"):
        recover_batch(tensors, torch.ones(3, 2, dtype=torch.bool), imputer, table_index=table_index)


def test_recover_batch_rejects_arrays():
    table = make_table()
    imputer = MeanModeImputer().fit(table, [2])
    arrays = {"categorical": table.categorical, "continuous": table.continuous, "missing_values": table.missing_values}

    with pytest.raises(TypeError, match="recover_batch takes torch tensors"):
        recover_batch(arrays, torch.ones(3, 2, dtype=torch.bool), imputer, table_index=1)


def test_load_imputer_directory(tmp_path):
    with pytest.raises(ValueError, match="is a directory, expected a saved imputer file"):
        load_imputer(tmp_path)
