"""Imputation-quality report: how well an imputer recovers the cells that a missingness simulation removed.

Shape letters as in :mod:`pipeline.imputation.base`: ``n`` rows, ``C_cat``/``C_num``
categorical/continuous columns, ``N`` columns in all.

Only cells that the simulation masked and that were observed in the cohort count, because only
there is the true value known. Categorical columns are scored by accuracy. Continuous columns are
scored by RMSE in the column's original units (after ``TabularEncoder.inverse_transform``) and by
RMSE in training standard deviations, which is comparable across columns. The overall rows pool
every scored cell: accuracy over all categorical cells and standardised RMSE over all continuous
cells.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.tabular import EncodedTable, TabularEncoder
from pipeline.imputation.base import RecoveredTable

logger = logging.getLogger(__name__)

REPORT_COLUMNS: tuple[str, ...] = ("column", "kind", "metric", "value", "cells")
OVERALL_CATEGORICAL = "(all categorical)"
OVERALL_CONTINUOUS = "(all continuous)"


def imputation_quality(
    truth: EncodedTable, recovered: RecoveredTable, masked: np.ndarray, encoder: TabularEncoder
) -> pd.DataFrame:
    """Score ``recovered`` against ``truth`` on the cells in ``masked``.

    Args:
        truth: the encoded rows before the simulation removed values.
        recovered: the imputer's output for the same rows after the simulation.
        masked: ``(n, N)`` bool, ``True`` where the simulation removed the value.
        encoder: the fitted encoder of the table, used to return to original units.

    Returns:
        One row per column and metric, plus the two overall rows, with the fields
        ``column``, ``kind`` (categorical/continuous), ``metric`` (``accuracy``, ``rmse`` in
        original units, ``rmse_standardised``), ``value`` (``NaN`` when no cell was scored) and
        ``cells`` (the number of scored cells).
    """
    masked = np.asarray(masked, dtype=bool)
    _check_shapes(truth, recovered, masked)
    scored = masked & ~truth.missing_values  # (n, N)
    skipped = int((masked & truth.missing_values).sum())
    if skipped:
        logger.warning(
            "%d masked cells have no true value after encoding (a level or column unknown to the encoder), "
            "so they are not scored.",
            skipped,
        )

    n_categorical = truth.categorical.shape[1]
    rows = []
    correct_total = 0
    for index in range(n_categorical):
        cells = scored[:, index]
        correct = int((recovered.categorical[cells, index] == truth.categorical[cells, index]).sum())
        correct_total += correct
        rows.append((truth.columns[index], "categorical", "accuracy", _ratio(correct, int(cells.sum())), int(cells.sum())))

    true_units = encoder.inverse_transform(truth.continuous)  # (n, C_num)
    recovered_units = encoder.inverse_transform(recovered.continuous)
    squared_total = 0.0
    for index in range(truth.continuous.shape[1]):
        cells = scored[:, n_categorical + index]
        count = int(cells.sum())
        name = truth.columns[n_categorical + index]
        units_error = recovered_units[cells, index] - true_units[cells, index]
        standard_error = recovered.continuous[cells, index].astype(np.float64) - truth.continuous[cells, index]
        squared_total += float(np.sum(standard_error**2))
        rows.append((name, "continuous", "rmse", _rmse(units_error), count))
        rows.append((name, "continuous", "rmse_standardised", _rmse(standard_error), count))

    categorical_cells = int(scored[:, :n_categorical].sum())
    continuous_cells = int(scored[:, n_categorical:].sum())
    rows.append((OVERALL_CATEGORICAL, "categorical", "accuracy", _ratio(correct_total, categorical_cells), categorical_cells))
    overall_rmse = float(np.sqrt(squared_total / continuous_cells)) if continuous_cells else float("nan")
    rows.append((OVERALL_CONTINUOUS, "continuous", "rmse_standardised", overall_rmse, continuous_cells))
    return pd.DataFrame(rows, columns=list(REPORT_COLUMNS))


def summary_table(report: pd.DataFrame) -> pd.DataFrame:
    """Pivot a long report (with ``gamma`` and ``imputer`` fields) to one row per gamma and imputer with the overall scores."""
    overall = report[report["column"].isin([OVERALL_CATEGORICAL, OVERALL_CONTINUOUS])]
    wide = overall.pivot_table(index=["gamma", "imputer"], columns="column", values="value", sort=True)
    return wide.rename(
        columns={OVERALL_CATEGORICAL: "categorical_accuracy", OVERALL_CONTINUOUS: "continuous_rmse_standardised"}
    ).reset_index()


def write_report(report: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write the report as CSV, log it, and attach it to the active MLflow run if there is one; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    report.to_csv(path, index=False, lineterminator="\n", float_format="%.6g")
    logger.info("imputation-quality report written to %s:\n%s", path, report.to_string(index=False))

    try:
        import mlflow
    except ImportError:
        return path
    if mlflow.active_run() is not None:
        mlflow.log_artifact(str(path), artifact_path="imputation")
        logger.info("attached %s to MLflow run %s.", path, mlflow.active_run().info.run_id)
    return path


def _check_shapes(truth: EncodedTable, recovered: RecoveredTable, masked: np.ndarray) -> None:
    if tuple(truth.columns) != tuple(recovered.columns):
        raise ValueError(f"truth has columns {list(truth.columns)} but recovered has {list(recovered.columns)}.")
    if masked.shape != truth.missing_values.shape or recovered.recovered.shape != masked.shape:
        raise ValueError(
            f"masked has shape {masked.shape}, truth {truth.missing_values.shape} and recovered "
            f"{recovered.recovered.shape}; all must be (n, N)."
        )
    not_recovered = masked & ~recovered.recovered
    if not_recovered.any():
        raise ValueError(
            f"{int(not_recovered.sum())} masked cells were not recovered; pass the imputer the table with the "
            "masked cells removed."
        )


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def _rmse(errors: np.ndarray) -> float:
    return float(np.sqrt(np.mean(errors**2))) if errors.size else float("nan")
