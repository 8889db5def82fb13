"""Evaluation: ROC AUC with bootstrap intervals, accuracy, MLflow run tracking and result plots.

See :mod:`pipeline.evaluation.tracking` for the supported MLflow stores (SQLite or a server).
"""

from pipeline.evaluation.metrics import (
    AccuracyInterval,
    AucInterval,
    accuracy,
    bootstrap_accuracy,
    bootstrap_auc,
)
from pipeline.evaluation.plots import plot_metric_by_rate
from pipeline.evaluation.tracking import TrackedRun, resolve_tracking_uri

__all__ = [
    "AccuracyInterval",
    "AucInterval",
    "TrackedRun",
    "accuracy",
    "bootstrap_accuracy",
    "bootstrap_auc",
    "plot_metric_by_rate",
    "resolve_tracking_uri",
]
