"""Files every bundle run writes: CSV tables written atomically, and the code version it records."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pandas as pd


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` to ``path`` through a temporary file, so a reader never sees half a table."""
    partial = path.with_name(path.name + ".partial")
    frame.to_csv(partial, index=False, float_format="%.6g", lineterminator="\n")
    os.replace(partial, path)
    return path


def code_version() -> str:
    """The git commit of the working tree (with ``+dirty`` when it has changes), or ``unknown``."""
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
