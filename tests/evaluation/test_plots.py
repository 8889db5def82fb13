"""Tests of the metric-by-rate plot: the PNG it writes and the frames it rejects."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from pipeline.evaluation import plot_metric_by_rate

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def results() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": ["dymo", "dymo", "dymo", "mean", "mean", "mean"],
            "gamma": [0.5, 0.0, 0.3, 0.0, 0.3, 0.5],
            "auc": [0.70, 0.85, 0.80, 0.85, 0.72, 0.60],
            "auc_low": [0.62, 0.80, 0.74, 0.80, 0.65, 0.52],
            "auc_high": [0.78, 0.90, 0.86, 0.90, 0.79, 0.68],
            "accuracy": [0.65, 0.80, 0.75, 0.80, 0.70, 0.58],
        }
    )


def test_plot_writes_png_with_interval(results, tmp_path) -> None:
    path = plot_metric_by_rate(results, tmp_path / "plots" / "auc.png", title="AUC by missing rate")

    assert path == tmp_path / "plots" / "auc.png"
    content = path.read_bytes()
    assert content.startswith(PNG_SIGNATURE)
    assert len(content) > 1000


def test_plot_without_interval_columns(results, tmp_path) -> None:
    path = plot_metric_by_rate(results, str(tmp_path / "accuracy.png"), metric="accuracy", low=None, high=None)

    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_plot_absent_interval_columns_skipped(results, tmp_path) -> None:
    # Neither accuracy_low nor accuracy_high is a column, so the line is drawn without an interval.
    path = plot_metric_by_rate(
        results, tmp_path / "accuracy.png", metric="accuracy", low="accuracy_low", high="accuracy_high"
    )

    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_plot_one_interval_column_warns(results, tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.evaluation.plots"):
        plot_metric_by_rate(results.drop(columns="auc_high"), tmp_path / "auc.png")

    assert "Only one of the interval columns" in caplog.text


def test_plot_rejects_missing_columns(results, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"is missing the columns \['gamma'\]"):
        plot_metric_by_rate(results.drop(columns="gamma"), tmp_path / "auc.png")
    with pytest.raises(ValueError, match=r"is missing the columns \['auroc'\]"):
        plot_metric_by_rate(results, tmp_path / "auc.png", metric="auroc")
    assert not (tmp_path / "auc.png").exists()


def test_plot_rejects_empty_frame(results, tmp_path) -> None:
    with pytest.raises(ValueError, match="results is empty"):
        plot_metric_by_rate(results.iloc[:0], tmp_path / "auc.png")


def test_plot_rejects_non_numeric_rate(results, tmp_path) -> None:
    with pytest.raises(ValueError, match="rate column 'gamma' must be numeric"):
        plot_metric_by_rate(results.assign(gamma=results["gamma"].astype(str)), tmp_path / "auc.png")


def test_plot_rejects_repeated_pairs(results, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"1 repeated \(method, gamma\) pairs, first method=dymo, gamma=0.5\."):
        plot_metric_by_rate(pd.concat([results, results.iloc[:1]]), tmp_path / "auc.png")


def test_plot_rejects_non_frame(tmp_path) -> None:
    with pytest.raises(TypeError, match="pandas DataFrame, got dict"):
        plot_metric_by_rate({"auc": [0.5]}, tmp_path / "auc.png")
