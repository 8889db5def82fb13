"""The ``cad_demo`` cohort: the real UCI clinical table plus a semi-synthetic cine MRI per patient.

Subjects, splits and labels are those of ``uci_heart`` built with the same seed. A subject with
both ``ca`` and ``thal`` recorded gets a cine rendered from one real cine MR scan by
:func:`pipeline.data.cohorts.cine_rendering.render_cine`. Every other subject has an empty image
path, because the rendering has nothing of theirs to show. Every ``DICOM_EVERY``-th subject with an
image (the 1st, 11th, 21st, ... in row order) is also written as a DICOM series, and the manifest
points at that folder instead of the NIfTI file, so both image readers are exercised.

Image files: ``images/<subject>.nii.gz``, a 4-D single-slice cine NIfTI ``(rows, columns, 1, T)``
= ``(64, 64, 1, 16)`` int16: array axes in DICOM row-major order, the third axis the 10 mm slice
and the fourth the cardiac phase (``pixdim[4]`` = 69.47 ms). The affine maps rows and columns to
RAS as the DICOM geometry of the share does. This is the array and affine that the image cache
writes for the cine DICOM series, so both read paths give the same tensor.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.cohorts.cine_rendering import (
    FRAME_TIME_MS,
    PIXEL_SPACING_MM,
    render_cine,
)
from pipeline.data.cohorts.dicom_series import write_cine_series
from pipeline.data.cohorts.files import write_manifest, write_nifti
from pipeline.data.cohorts.uci_heart import (
    CLINICAL_COLUMNS,
    LABEL_COLUMN,
    assign_uci_splits,
    load_uci_table,
)

logger = logging.getLogger(__name__)

IMAGE_COLUMN = "cine_path"
DICOM_EVERY = 10
# NIfTI axes are (DICOM row, DICOM column, slice, phase). With the share's orientation
# (1, 0, 0, 0, 1, 0) in LPS, a step along a row index moves -y in RAS and a step along a column
# index moves -x. The slice is 10 mm thick, as in the DICOM share.
SLICE_THICKNESS_MM = 10.0
NIFTI_AFFINE = np.array(
    [
        [0.0, -PIXEL_SPACING_MM, 0.0, 0.0],
        [-PIXEL_SPACING_MM, 0.0, 0.0, 0.0],
        [0.0, 0.0, SLICE_THICKNESS_MM, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
NIFTI_DESCRIPTION = f"semi-synthetic cine; axis 4 is cardiac phase, {FRAME_TIME_MS} ms apart"


def build_cad_demo(output_dir: Path, *, seed: int = 0, limit: int | None = None) -> Path:
    """Write the ``cad_demo`` manifest, NIfTI cines and DICOM series under ``output_dir``.

    Manifest columns: ``subject_id``, ``split``, ``num``, ``cine_path``, the clinical columns of
    ``uci_heart``, then ``ca`` and ``thal`` as extra columns (they drive the rendering and are not
    declared in the schema).

    Args:
        output_dir: cohort folder; created when missing.
        seed: seeds the split and the per-subject rendering.
        limit: keep only the first ``limit`` rows of the raw UCI table (a slice for smoke tests).

    Returns:
        The manifest path.
    """
    output_dir = Path(output_dir)
    table = load_uci_table(limit)
    table.insert(1, "split", assign_uci_splits(table, seed))

    has_image = (table["ca"] != "") & (table["thal"] != "")
    image_paths: list[str] = []
    imaged_count = 0

    for row, recorded in zip(table.itertuples(index=False), has_image):
        if not recorded:
            image_paths.append("")
            continue

        frames = render_cine(row.subject_id, int(float(row.ca)), row.thal, seed)
        nifti_path = Path("images") / f"{row.subject_id}.nii.gz"
        volume = np.ascontiguousarray(frames[:, :, None, :])  # (rows, columns, 1, T)
        write_nifti(volume, NIFTI_AFFINE, output_dir / nifti_path, NIFTI_DESCRIPTION, time_step_ms=FRAME_TIME_MS)

        if imaged_count % DICOM_EVERY == 0:
            dicom_folder = Path("dicom") / row.subject_id
            write_cine_series(frames, output_dir / dicom_folder, row.subject_id, seed, PIXEL_SPACING_MM, FRAME_TIME_MS)
            image_paths.append(dicom_folder.as_posix())
        else:
            image_paths.append(nifti_path.as_posix())

        imaged_count += 1
        if imaged_count % 50 == 0:
            logger.info("cad_demo: rendered %d of %d cines", imaged_count, int(has_image.sum()))

    table[IMAGE_COLUMN] = image_paths
    columns = ["subject_id", "split", LABEL_COLUMN, IMAGE_COLUMN, *CLINICAL_COLUMNS, "ca", "thal"]
    logger.info(
        "cad_demo: %d subjects, %d with a cine (%d as DICOM series)",
        len(table), imaged_count, (imaged_count + DICOM_EVERY - 1) // DICOM_EVERY,
    )
    return write_manifest(pd.DataFrame(table[columns]), output_dir / "manifest.csv")
