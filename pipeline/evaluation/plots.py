"""Figures of evaluation results, drawn on a standalone Agg figure so no pyplot state is touched."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)


def plot_metric_by_rate(
    results: pd.DataFrame,
    path: str | os.PathLike,
    *,
    metric: str = "auc",
    rate: str = "gamma",
    method: str = "method",
    low: str | None = "auc_low",
    high: str | None = "auc_high",
    title: str = "",
    ylabel: str | None = None,
) -> Path:
    """Plot ``metric`` against ``rate`` with one line per method and save it as a PNG.

    Each method's points are sorted by rate and drawn with markers. When ``low`` and ``high``
    are both given and both are columns of ``results``, the interval between them is shaded
    in the line's colour. Otherwise no interval is drawn. The parent folder of ``path`` is
    created, and the file is written in PNG format whatever its suffix.

    Args:
        results: one row per (method, rate) pair, with at least the columns ``method``,
            ``rate`` (numeric) and ``metric``.
        path: output file, e.g. ``eval/auc_by_missing_rate.png``.
        metric: column plotted on the y axis.
        rate: numeric column plotted on the x axis, e.g. the missing rate.
        method: column whose values name the lines.
        low: column of interval lower bounds, or None for no interval.
        high: column of interval upper bounds, or None for no interval.
        title: figure title; empty for none.
        ylabel: y-axis label; defaults to ``metric``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: when ``results`` is empty, lacks one of the ``metric``, ``rate`` or ``method``
            columns, has a non-numeric ``rate`` column or repeats a (method, rate) pair.
    """
    _check_results(results, metric=metric, rate=rate, method=method)
    interval = _interval_columns(results, low, high)

    figure = Figure(figsize=(6.0, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, rows in results.groupby(method, sort=False):
        rows = rows.sort_values(rate)
        (line,) = axes.plot(rows[rate], rows[metric], marker="o", label=str(name))
        if interval is not None:
            axes.fill_between(
                rows[rate].to_numpy(dtype=float),
                rows[interval[0]].to_numpy(dtype=float),
                rows[interval[1]].to_numpy(dtype=float),
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )

    axes.set_xlabel(rate)
    axes.set_ylabel(ylabel if ylabel is not None else metric)
    if title:
        axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(title=method)

    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Written next to its final name and then renamed, so an interrupted run leaves no partial image.
    partial = output.with_name(f".{output.name}.partial")
    try:
        figure.savefig(partial, format="png", dpi=150)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    logger.info("Saved plot of %s by %s for %d methods to %s.", metric, rate, results[method].nunique(), output)
    return output


def _check_results(results: pd.DataFrame, *, metric: str, rate: str, method: str) -> None:
    if not isinstance(results, pd.DataFrame):
        raise TypeError(f"results must be a pandas DataFrame, got {type(results).__name__}.")
    if results.empty:
        raise ValueError("results is empty, so there is nothing to plot.")

    missing = [column for column in (method, rate, metric) if column not in results.columns]
    if missing:
        raise ValueError(
            f"results is missing the columns {missing}. Its columns are {list(results.columns)}. "
            "Pass the column names through the metric, rate and method arguments."
        )
    if not pd.api.types.is_numeric_dtype(results[rate]):
        raise ValueError(f"rate column {rate!r} must be numeric, got dtype {results[rate].dtype}.")

    repeated = results.duplicated(subset=[method, rate])
    if repeated.any():
        first = results.loc[repeated].iloc[0]
        raise ValueError(
            f"results has {int(repeated.sum())} repeated ({method}, {rate}) pairs, first "
            f"{method}={first[method]!s}, {rate}={first[rate]!s}. "
            "Aggregate to one row per pair before plotting."
        )


def _interval_columns(results: pd.DataFrame, low: str | None, high: str | None) -> tuple[str, str] | None:
    """Return the (low, high) columns to shade, or None when either is not given or not in ``results``."""
    if low is None or high is None:
        return None

    present = [column in results.columns for column in (low, high)]
    if all(present):
        return low, high
    if any(present):
        logger.warning("Only one of the interval columns %r and %r is in results, so no interval is drawn.", low, high)
    return None
