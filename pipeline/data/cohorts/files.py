"""Deterministic writers for cohort files and access to the packaged source files.

Every writer here produces byte-identical output for identical input: CSVs use ``\\n`` line
endings and strings written as given, and NIfTI files are gzipped by nibabel with a zero
modification time.
"""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

RESOURCE_PACKAGE = "pipeline.data.resources"


def read_resource_bytes(relative_path: str) -> bytes:
    """Return the bytes of a file under ``pipeline/data/resources`` (e.g. ``uci_heart/heart_disease_uci.csv``)."""
    resource = files(RESOURCE_PACKAGE).joinpath(relative_path)
    if not resource.is_file():
        raise FileNotFoundError(
            f"Packaged resource {relative_path!r} not found in {RESOURCE_PACKAGE}; "
            "reinstall the package so that its package data is included."
        )
    return resource.read_bytes()


def write_manifest(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` as the cohort's manifest CSV: UTF-8, no index, ``\\n`` line endings.

    Columns must already hold strings (or integers) so that no float formatting is applied;
    missing values are written as empty cells.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    float_columns = [column for column in frame.columns if pd.api.types.is_float_dtype(frame[column])]
    if float_columns:
        raise TypeError(
            f"write_manifest: columns {float_columns} are floats; format them as strings first so "
            "that the manifest is byte-identical across builds."
        )

    frame.to_csv(path, index=False, lineterminator="\n", encoding="utf-8", na_rep="")
    logger.info("Wrote manifest %s (%d subjects)", path, len(frame))
    return path


def write_nifti(
    array: np.ndarray, affine: np.ndarray, path: Path, description: str, time_step_ms: float | None = None
) -> Path:
    """Write ``array`` as a gzipped NIfTI-1 file with fixed header fields.

    The data type is the array's; no intensity scaling is stored (``scl_slope`` 1, ``scl_inter``
    0), so the values read back equal the values written. Spatial units are millimetres. For a 4D
    array, ``time_step_ms`` is stored as the fourth voxel size, in milliseconds.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, affine)
    header = image.header
    header.set_data_dtype(array.dtype)
    header.set_slope_inter(1.0, 0.0)
    if time_step_ms is None:
        header.set_xyzt_units(xyz="mm")
    else:
        header.set_zooms((*header.get_zooms()[:3], float(time_step_ms)))
        header.set_xyzt_units(xyz="mm", t="msec")
    header["descrip"] = description.encode("ascii")[:79]
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    nib.save(image, path)
    return path
