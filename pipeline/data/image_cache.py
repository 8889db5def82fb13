"""Convert a DICOM series folder to a NIfTI file once and reuse it.

The cache key is a SHA-256 over the folder's relative file names, sizes and modification times,
the series rule and the read options, so editing, adding or removing a file converts again.
Files are named by the key alone, so no folder name (which may contain a patient name) reaches
the cache directory.

Layouts written: a volume ``(H, W, D)`` as a 3D NIfTI, a single-slice cine ``(H, W, T)`` as
``(H, W, 1, T)`` with the median frame interval in ``pixdim[4]`` (milliseconds).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from pipeline.data.dicom import index_dicom_folder, read_series, select_series

logger = logging.getLogger(__name__)

# Change when the written layout changes, so old cache entries are not reused.
CACHE_FORMAT_VERSION = 1


def _cache_key(folder: Path, rule: str | None, read_options: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    # The folder's own path is part of the key: copies of different subjects' series can share
    # file names, sizes and (after a copy that keeps whole seconds only) modification times.
    digest.update(f"format {CACHE_FORMAT_VERSION}\nfolder {folder.resolve()}\nrule {rule!r}\n".encode())
    digest.update(json.dumps(read_options, sort_keys=True).encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"\n{path.relative_to(folder).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _write_atomically(directory: Path, target: Path, write) -> None:
    """Write through a temporary file in ``directory`` and rename it, so readers never see a partial file."""
    handle, temporary = tempfile.mkstemp(dir=directory, suffix=".partial" + "".join(target.suffixes))
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _to_nifti(array: np.ndarray, affine: np.ndarray, metadata: dict[str, Any]) -> nib.Nifti1Image:
    if metadata["layout"] == "HWT":
        array = array[:, :, np.newaxis, :]
    image = nib.Nifti1Image(array.astype(np.float32), affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)

    times = metadata.get("frame_times_ms")
    if metadata["layout"] == "HWT":
        interval = float(np.median(np.diff(times))) if times and len(times) > 1 else 0.0
        zooms = list(image.header.get_zooms())
        zooms[3] = interval
        image.header.set_zooms(zooms)
        image.header.set_xyzt_units("mm", "msec")
    else:
        image.header.set_xyzt_units("mm")
    return image


def cache_series_as_nifti(
    folder: str | Path,
    cache_dir: str | Path,
    rule: str | None = None,
    **read_options: Any,
) -> Path:
    """Return the cached NIfTI of the series chosen by ``rule`` in ``folder``, converting it if needed.

    A JSON sidecar with the same stem stores the metadata of :func:`read_series` that does not
    identify the patient (layout, spacing and its source, frame times, series number and
    description, transfer syntaxes).

    Args:
        folder: a DICOM folder.
        cache_dir: where the NIfTI files are kept; created if missing.
        rule: series rule of :func:`select_series`.
        read_options: keyword arguments of :func:`read_series`.

    Raises:
        DicomSeriesError: the errors of :func:`index_dicom_folder`, :func:`select_series` and
            :func:`read_series`.
    """
    folder = Path(folder)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)

    key = _cache_key(folder, rule, read_options)
    target = cache_dir / f"{key}.nii.gz"
    if target.exists():
        logger.debug("Reusing cached NIfTI %s for %s", target.name, folder)
        return target

    series = select_series(index_dicom_folder(folder), rule)
    array, affine, metadata = read_series(series, **read_options)
    image = _to_nifti(array, affine, metadata)

    sidecar = {name: value for name, value in metadata.items() if name != "source_files"}
    sidecar["source_file_count"] = len(metadata["source_files"])
    _write_atomically(cache_dir, cache_dir / f"{key}.json", lambda path: path.write_text(json.dumps(sidecar, indent=1)))
    _write_atomically(cache_dir, target, lambda path: nib.save(image, path))
    logger.info("Converted series %s of %s to %s", series.number, folder, target)
    return target


def read_cache_metadata(nifti_path: str | Path) -> dict[str, Any] | None:
    """Return the sidecar metadata of a cached NIfTI, or None when there is none."""
    path = Path(nifti_path)
    sidecar = path.with_name(path.name.removesuffix(".nii.gz") + ".json")
    return json.loads(sidecar.read_text()) if sidecar.exists() else None
