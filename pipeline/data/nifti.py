"""Check and load NIfTI files with nibabel, turning its failures into errors that name the file.

Affine precedence: the sform when ``sform_code > 0``, else the qform. This is nibabel's rule,
and nibabel is the only NIfTI reader used by this pipeline. When both codes are set and the two
matrices differ, a warning names the file and both codes.

Arrays come back as float32 with ``scl_slope``/``scl_inter`` applied, in the stored axis order:
``(X, Y, Z)`` for a volume and ``(X, Y, Z, T)`` for a 4D cine (time last).
"""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from nibabel.arrayproxy import ArrayProxy

ImageKind = Literal["2d", "2d+t", "3d"]

logger = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
# A quaternion (b, c, d) whose norm exceeds 1 by at most this much is rounding, and is renormalised.
QUATERNION_TOLERANCE = 1e-5
# qform and sform entries that differ by more than this (mm) count as a disagreement.
AFFINE_TOLERANCE = 1e-3


class NiftiFileError(ValueError):
    """A NIfTI file is missing, malformed or ambiguous."""


def _split_suffix(path: Path) -> tuple[str, str]:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], suffix
    raise NiftiFileError(f"{path}: expected a .nii or .nii.gz file name")


def _sniff(path: Path) -> tuple[bool, int]:
    """Return (gzip-compressed, header size) from the file's bytes."""
    with open(path, "rb") as handle:
        compressed = handle.read(2) == GZIP_MAGIC
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as handle:
            start = handle.read(348)
    except (OSError, EOFError) as error:
        raise NiftiFileError(f"{path}: cannot read the NIfTI header: {error}") from error

    if len(start) >= 348 and start[344:347] in (b"n+1", b"ni1"):
        return compressed, 348
    if len(start) >= 8 and start[4:7] in (b"n+2", b"ni2"):
        return compressed, 540
    raise NiftiFileError(f"{path}: not a NIfTI-1 or NIfTI-2 file (no magic string found)")


def _read_header(path: Path, header_size: int) -> nib.Nifti1Header:
    header_class = nib.Nifti1Header if header_size == 348 else nib.Nifti2Header
    with nib.openers.ImageOpener(path) as handle:
        return header_class.from_fileobj(handle, check=False)


def _check_twin(path: Path, stem: str, suffix: str) -> None:
    twin = path.with_name(stem + (".nii" if suffix == ".nii.gz" else ".nii.gz"))
    if twin.exists():
        raise NiftiFileError(
            f"Both {path} and {twin} exist; tools that strip the suffix may read either one. "
            "Remove or rename one of them"
        )


def _fixed_shape(path: Path, header: nib.Nifti1Header) -> tuple[int, ...]:
    """Return the data shape, reading a zero in a non-spatial dimension as 1."""
    dims = [int(value) for value in header["dim"]]
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise NiftiFileError(f"{path}: invalid dim[0] = {ndim} in the header")
    shape = dims[1 : ndim + 1]

    if any(size <= 0 for size in shape[:3]):
        raise NiftiFileError(f"{path}: zero-size spatial dimension in shape {tuple(shape)}")
    if any(size <= 0 for size in shape[3:]):
        logger.warning("%s: dimension of size 0 beyond the third in shape %s is read as 1", path, tuple(shape))
        shape = [max(size, 1) for size in shape]
    while len(shape) > 3 and shape[-1] == 1:
        shape.pop()
    return tuple(shape)


def _repair_quaternion(path: Path, header: nib.Nifti1Header) -> bool:
    """Renormalise a quaternion whose norm is a rounding error above 1; return True if changed."""
    quaternion = np.array([header["quatern_b"], header["quatern_c"], header["quatern_d"]], dtype=np.float64)
    norm_squared = float(quaternion @ quaternion)
    if norm_squared <= 1.0:
        return False
    if norm_squared - 1.0 > QUATERNION_TOLERANCE:
        raise NiftiFileError(
            f"{path}: invalid qform quaternion (b, c, d) = {quaternion.tolist()} has norm above 1; "
            "rewrite the header's qform (for example from the sform) or set qform_code to 0"
        )
    unit = quaternion / np.sqrt(norm_squared)
    header["quatern_b"], header["quatern_c"], header["quatern_d"] = unit
    logger.warning("%s: qform quaternion norm exceeds 1 by %.2g; renormalised it", path, norm_squared - 1)
    return True


def _affine(path: Path, header: nib.Nifti1Header) -> np.ndarray:
    qform_code = int(header["qform_code"])
    sform_code = int(header["sform_code"])
    if qform_code > 0:
        _repair_quaternion(path, header)

    if qform_code > 0 and sform_code > 0:
        qform = header.get_qform()
        sform = header.get_sform()
        if not np.allclose(qform, sform, atol=AFFINE_TOLERANCE, rtol=0):
            logger.warning(
                "%s: qform (code %d) and sform (code %d) disagree; using the sform", path, qform_code, sform_code
            )
    try:
        return np.asarray(header.get_best_affine(), dtype=np.float64)
    except ValueError as error:
        raise NiftiFileError(f"{path}: invalid affine in the header: {error}") from error


def check_nifti(path: str | Path) -> dict[str, Any]:
    """Check a NIfTI file's name, bytes and header without reading the image data.

    Returns:
        ``shape`` (zero sizes beyond the third axis read as 1, trailing singletons beyond the
        third dropped), ``affine`` (RAS, 4x4), ``pixdim``, ``qform_code``, ``sform_code``,
        ``time_step`` and ``time_unit`` (4D only) and ``header`` (the checked nibabel header).

    Raises:
        NiftiFileError: missing file, a ``.nii``/``.nii.gz`` twin next to it, a suffix that
            disagrees with the gzip magic bytes, no NIfTI magic, a zero-size spatial dimension,
            or an invalid affine.
    """
    path = Path(path)
    if not path.is_file():
        raise NiftiFileError(f"NIfTI file not found: {path}")
    stem, suffix = _split_suffix(path)
    _check_twin(path, stem, suffix)

    compressed, header_size = _sniff(path)
    if compressed != (suffix == ".nii.gz"):
        content = "gzip-compressed" if compressed else "uncompressed"
        fixed = stem + (".nii.gz" if compressed else ".nii")
        raise NiftiFileError(f"{path}: the suffix is {suffix} but the content is {content}; rename it to {fixed}")

    header = _read_header(path, header_size)
    shape = _fixed_shape(path, header)
    affine = _affine(path, header)

    zooms = [float(value) for value in header["pixdim"][1 : len(shape) + 1]]
    info: dict[str, Any] = {
        "path": path,
        "shape": shape,
        "affine": affine,
        "pixdim": tuple(zooms),
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
        "header": header,
    }
    if len(shape) >= 4:
        info["time_step"] = zooms[3]
        info["time_unit"] = header.get_xyzt_units()[1]
    return info


def load_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Check and load a NIfTI file as float32 with intensity scaling applied.

    Returns:
        ``(array, affine, metadata)``: ``(X, Y, Z)`` or ``(X, Y, Z, T)`` float32 (more axes are
        returned as stored), the RAS affine and :func:`check_nifti`'s dict without the header.

    Raises:
        NiftiFileError: any :func:`check_nifti` failure, or image data that cannot be read
            (for example a truncated file).
    """
    info = check_nifti(path)
    header = info.pop("header").copy()
    header.set_data_shape(info["shape"])

    try:
        data = np.asanyarray(ArrayProxy(info["path"], header), dtype=None)
    except (OSError, EOFError, ValueError, struct.error) as error:
        raise NiftiFileError(f"{info['path']}: cannot read the image data: {error}") from error

    array = np.asarray(data, dtype=np.float32)
    return array, info["affine"], info


def arrange_for_kind(array: np.ndarray, kind: ImageKind, path: Path, frame: int | None = None) -> np.ndarray:
    """Rearrange a loaded NIfTI array into the spatial layout of ``kind``, without a channel axis.

    - ``"3d"``: ``(X, Y, Z)``; a 4D cine needs ``frame`` to pick one time point.
    - ``"2d+t"``: a 4D ``(X, Y, 1, T)`` cine becomes ``(X, Y, T)``.
    - ``"2d"``: ``(X, Y)`` or ``(X, Y, 1)``; a single-slice 4D cine needs ``frame``.

    Raises:
        ValueError: naming the file, its shape and the kind, for any other layout.
    """
    shape = array.shape
    rejected = ValueError(f"{path}: image of shape {shape} does not fit kind {kind!r}")

    if kind == "3d":
        if array.ndim == 3:
            return array
        if array.ndim == 4 and frame is not None:
            return array[..., frame]
        raise rejected

    if kind == "2d+t":
        if array.ndim == 4 and shape[2] == 1:
            return array[:, :, 0, :]
        raise ValueError(
            f"{path}: image of shape {shape} does not fit kind '2d+t', which expects a 4D single-slice "
            "cine (X, Y, 1, T) with time last"
        )

    if array.ndim == 2:
        return array
    if array.ndim == 3 and shape[2] == 1:
        return array[:, :, 0]
    if array.ndim == 4 and shape[2] == 1 and frame is not None:
        return array[:, :, 0, frame]
    raise rejected
