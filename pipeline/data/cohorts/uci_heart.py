"""The UCI Heart Disease cohort: 920 patients from four centres, clinical table only.

The manifest keeps the raw cells as the exported strings, so the quirks of the table reach the
data layer unchanged. Empty cells are missing values. ``chol = 0`` and ``trestbps = 0`` are
missing values coded as zero. ``ca``, ``thal`` and ``slope`` are missing for most patients outside
Cleveland. The only change is that exact duplicate rows are dropped.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pandas as pd

from pipeline.data.cohorts.files import read_resource_bytes, write_manifest
from pipeline.data.splits import stratified_split

logger = logging.getLogger(__name__)

RAW_TABLE = "uci_heart/heart_disease_uci.csv"
LABEL_COLUMN = "num"
CENTRE_COLUMN = "dataset"
CLINICAL_COLUMNS: tuple[str, ...] = (
    "age", "sex", "dataset", "cp", "trestbps", "chol", "fbs", "restecg", "thalch", "exang", "oldpeak", "slope",
)
IMAGING_DERIVED_COLUMNS: tuple[str, ...] = ("ca", "thal")


def subject_id_for_row(row_number: int) -> str:
    """Return the subject id of the 1-based row ``row_number`` of the raw table, e.g. ``uci-0001``."""
    return f"uci-{row_number:04d}"


def load_uci_table(limit: int | None = None) -> pd.DataFrame:
    """Read the raw UCI table as strings, drop exact duplicate rows and add ``subject_id``.

    The subject id comes from the row's position in the raw file (``uci-0001`` is the first row),
    so a dropped duplicate leaves a gap in the numbering and every id can be traced to its row.
    Raw rows 406 (Hungary, ``num`` 0) and 908 (VA Long Beach, ``num`` 2) repeat rows 405 and 860
    in every column except the raw ``id``. The first occurrence is kept.

    Args:
        limit: keep only the first ``limit`` raw rows (a slice for smoke tests).

    Returns:
        One row per subject with ``subject_id`` first, then the raw columns except ``id``, every
        cell a string (empty for a missing value).
    """
    raw = pd.read_csv(io.BytesIO(read_resource_bytes(RAW_TABLE)), dtype=str, keep_default_na=False)
    if limit is not None:
        raw = raw.iloc[:limit]

    table = raw.drop(columns=["id"])
    table.insert(0, "subject_id", [subject_id_for_row(number) for number in range(1, len(raw) + 1)])

    duplicated = table.drop(columns=["subject_id"]).duplicated(keep="first")
    if duplicated.any():
        logger.info(
            "Dropped %d exact duplicate rows of the UCI table: %s",
            int(duplicated.sum()),
            ", ".join(table.loc[duplicated, "subject_id"]),
        )
    return table.loc[~duplicated].reset_index(drop=True)


def assign_uci_splits(table: pd.DataFrame, seed: int) -> pd.Series:
    """Split 60/20/20, stratified by the binary label (``num > 0``) and the centre."""
    strata = pd.DataFrame(
        {"label": (table[LABEL_COLUMN].astype(int) > 0).astype(int), "centre": table[CENTRE_COLUMN]}
    )
    return stratified_split(strata, seed)


def build_uci_heart(output_dir: Path, *, seed: int = 0, limit: int | None = None) -> Path:
    """Write the ``uci_heart`` manifest to ``output_dir/manifest.csv`` and return its path.

    Manifest columns: ``subject_id``, ``split``, ``num``, the clinical columns and ``ca``/``thal``.
    """
    table = load_uci_table(limit)
    table.insert(1, "split", assign_uci_splits(table, seed))

    columns = ["subject_id", "split", LABEL_COLUMN, *CLINICAL_COLUMNS, *IMAGING_DERIVED_COLUMNS]
    return write_manifest(table[columns], Path(output_dir) / "manifest.csv")
