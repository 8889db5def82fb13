"""Helpers shared by the bundle jobs: output-folder checks, atomic CSV tables, the code version, failure logs."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch

from pipeline.evaluation.tracking import describe_error, resolve_tracking_uri

logger = logging.getLogger(__name__)


def check_writable_folder(path: str | os.PathLike[str], option: str) -> Path:
    """Create ``path`` if needed and check that files can be written in it, before any work starts.

    Raises:
        PermissionError: the folder cannot be created or written; the message names the option to change.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as error:
        raise PermissionError(
            f"cannot write to the {option} folder {path} ({error.strerror or error}); pass a writable folder "
            f"with --{option}."
        ) from error
    return path


def check_device(device: str | torch.device) -> torch.device:
    """Return ``device`` as a torch device, or raise a ValueError when it does not exist on this machine."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was given but this machine has no CUDA GPU; pass --device cpu.")
    return device


@contextlib.contextmanager
def report_failure(job: str) -> Iterator[None]:
    """Log one ERROR line with the cause when ``job`` fails, then let the exception propagate.

    Works as a context manager and as a decorator. ``job`` names what failed, for example
    ``"inference job"``.

    MONAI's bundle runner wraps every error in ``RuntimeError: Failed to evaluate ...``, so this
    line, printed just before the traceback, is where the user reads what went wrong.
    """
    try:
        yield
    except Exception as error:
        logger.error("The %s failed: %s", job, describe_error(type(error), error))
        raise


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` to ``path`` through a temporary file, so a reader never sees half a table."""
    partial = path.with_name(path.name + ".partial")
    frame.to_csv(partial, index=False, float_format="%.6g", lineterminator="\n")
    os.replace(partial, path)
    return path


def code_version() -> str:
    """Return the git commit of the working tree (with ``+dirty`` when it has changes), or ``unknown``."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def tracking_uri_for(store: str | os.PathLike[str]) -> str:
    """Return the MLflow tracking URI: ``MLFLOW_TRACKING_URI`` when set, else the SQLite file ``store``.

    The store's folder is checked first, because MLflow retries a SQLite file it cannot create
    for about 100 s and then reports only "unable to open database file".
    """
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        check_writable_folder(Path(store).parent, "output_dir")
    return resolve_tracking_uri(store)
