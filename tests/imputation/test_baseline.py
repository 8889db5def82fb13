"""Tests of the mean/mode baseline and of recover_batch, the call the selector uses."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from pipeline.data.tabular import EncodedTable
from pipeline.imputation.base import recover_batch
from pipeline.imputation.baseline import MeanModeImputer


def encoded(categorical: list[list[int]], continuous: list[list[float]]) -> EncodedTable:
    codes = np.array(categorical, dtype=np.int64)
    values = np.array(continuous, dtype=np.float32)
    missing = np.concatenate([codes < 0, np.isnan(values)], axis=1)
    columns = tuple(f"cat{i}" for i in range(codes.shape[1])) + tuple(f"num{i}" for i in range(values.shape[1]))
    return EncodedTable(categorical=codes, continuous=values, missing_values=missing, columns=columns)


def test_mean_mode_fills_hand_worked_values() -> None:
    table = encoded([[0], [1], [1], [-1]], [[1.0], [np.nan], [3.0], [5.0]])

    result = MeanModeImputer().fit_transform(table, [2])

    assert result.categorical[:, 0].tolist() == [0, 1, 1, 1]
    assert result.continuous[:, 0].tolist() == [1.0, 3.0, 3.0, 5.0]
    assert not result.table.missing_values.any()
    assert result.recovered.tolist() == table.missing_values.tolist()


def test_mean_mode_all_missing_column_warns(caplog: pytest.LogCaptureFixture) -> None:
    table = encoded([[-1], [-1]], [[np.nan], [np.nan]])

    with caplog.at_level(logging.WARNING):
        result = MeanModeImputer().fit_transform(table, [3])

    assert result.categorical[:, 0].tolist() == [0, 0]
    assert result.continuous[:, 0].tolist() == [0.0, 0.0]
    assert "filled with level 0" in caplog.text
    assert "standardised value 0" in caplog.text


def test_mean_mode_rejects_other_columns() -> None:
    imputer = MeanModeImputer().fit(encoded([[0], [1]], [[1.0], [2.0]]), [2])
    other = EncodedTable(
        categorical=np.zeros((1, 1), dtype=np.int64),
        continuous=np.zeros((1, 1), dtype=np.float32),
        missing_values=np.zeros((1, 2), dtype=bool),
        columns=("x", "y"),
    )

    with pytest.raises(ValueError, match="fitted on columns"):
        imputer.transform(other)


def test_mean_mode_rejects_level_above_cardinality() -> None:
    with pytest.raises(ValueError, match="cardinality is 2"):
        MeanModeImputer().fit(encoded([[0], [2]], [[1.0], [2.0]]), [2])


def test_recover_batch_fills_absent_table_whole() -> None:
    imputer = MeanModeImputer().fit(encoded([[0], [1], [1]], [[1.0], [2.0], [3.0]]), [2])
    batch = {
        "categorical": torch.tensor([[0], [-1]]),
        "continuous": torch.tensor([[7.0], [np.nan]]),
        "missing_values": torch.tensor([[False, False], [True, True]]),
    }
    present = torch.tensor([[True, False], [True, True]])  # table is modality 1; subject 0 lacks it

    table, recovered = recover_batch(batch, present, imputer, table_index=1)

    assert recovered.tolist() == [[True, True], [True, True]]
    assert table["categorical"].tolist() == [[1], [1]]
    assert table["continuous"].tolist() == [[2.0], [2.0]]
    assert not table["missing_values"].any()


def test_recover_batch_keeps_observed_values() -> None:
    imputer = MeanModeImputer().fit(encoded([[0], [1], [1]], [[1.0], [2.0], [3.0]]), [2])
    batch = {
        "categorical": torch.tensor([[0], [-1]]),
        "continuous": torch.tensor([[7.0], [np.nan]]),
        "missing_values": torch.tensor([[False, False], [True, True]]),
    }

    table, recovered = recover_batch(batch, torch.ones(2, 1, dtype=torch.bool), imputer, table_index=0)

    assert recovered.tolist() == [[False, False], [True, True]]
    assert table["categorical"].tolist() == [[0], [1]]
    assert table["continuous"].tolist() == [[7.0], [2.0]]


def test_recover_batch_rejects_unfitted_imputer() -> None:
    batch = {
        "categorical": torch.zeros(1, 1, dtype=torch.int64),
        "continuous": torch.zeros(1, 1),
        "missing_values": torch.zeros(1, 2, dtype=torch.bool),
    }

    with pytest.raises(ValueError, match="not fitted"):
        recover_batch(batch, torch.ones(1, 1, dtype=torch.bool), MeanModeImputer(), table_index=0)
