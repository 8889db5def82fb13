"""Tests of the imputation-quality report on hand-worked values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.data.tabular import EncodedTable, TabularEncoder
from pipeline.imputation.base import RecoveredTable
from pipeline.imputation.quality import (
    OVERALL_CATEGORICAL,
    OVERALL_CONTINUOUS,
    imputation_quality,
    write_report,
)


def test_quality_hand_worked_scores() -> None:
    frame = pd.DataFrame({"sex": ["a", "b", "a", "b"], "age": [10.0, 20.0, 30.0, 40.0]})
    encoder = TabularEncoder(["sex"], ["age"]).fit(frame)  # mean 25, scale sqrt(125)
    truth = encoder.transform(frame)
    masked = np.array([[True, True], [True, False], [False, True], [False, False]])
    recovered_values = truth.continuous.copy()
    recovered_values[0, 0] += 3.0 / encoder.scale_[0]  # 3 years off
    recovered_values[2, 0] -= 4.0 / encoder.scale_[0]  # 4 years off
    completed = EncodedTable(
        categorical=np.array([[0], [0], [0], [1]]),  # row 0 right, row 1 wrong
        continuous=recovered_values,
        missing_values=np.zeros((4, 2), dtype=bool),
        columns=truth.columns,
    )

    report = imputation_quality(truth, RecoveredTable(completed, masked.copy()), masked, encoder).set_index(
        ["column", "metric"]
    )

    assert report.loc[("sex", "accuracy"), "value"] == pytest.approx(0.5)
    assert report.loc[("sex", "accuracy"), "cells"] == 2
    assert report.loc[("age", "rmse"), "value"] == pytest.approx(np.sqrt((9 + 16) / 2), rel=1e-5)
    assert report.loc[("age", "rmse_standardised"), "value"] == pytest.approx(np.sqrt(12.5 / 125), rel=1e-5)
    assert report.loc[(OVERALL_CATEGORICAL, "accuracy"), "value"] == pytest.approx(0.5)
    assert report.loc[(OVERALL_CONTINUOUS, "rmse_standardised"), "cells"] == 2


def test_quality_rejects_unrecovered_masked_cell() -> None:
    frame = pd.DataFrame({"sex": ["a", "b"], "age": [1.0, 2.0]})
    encoder = TabularEncoder(["sex"], ["age"]).fit(frame)
    truth = encoder.transform(frame)
    masked = np.array([[True, False], [False, False]])
    completed = RecoveredTable(truth, np.zeros((2, 2), dtype=bool))

    with pytest.raises(ValueError, match="1 masked cells were not recovered"):
        imputation_quality(truth, completed, masked, encoder)


def test_quality_report_written_as_csv(tmp_path) -> None:
    report = pd.DataFrame({"column": ["sex"], "kind": ["categorical"], "metric": ["accuracy"], "value": [0.5], "cells": [2]})

    path = write_report(report, tmp_path / "out" / "quality.csv")

    assert pd.read_csv(path).equals(report)
