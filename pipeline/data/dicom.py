"""Index the DICOM series in a folder and assemble one series into an array with a RAS affine.

Array layouts (``H`` rows, ``W`` columns of the DICOM image):

- ``(H, W, D)``: a volume, ``D`` slices ordered along the slice normal (``D = 1`` for one image).
- ``(H, W, T)``: a single-slice cine, ``T`` frames in acquisition order, time as the last axis.

The affine maps ``(row, column, slice)`` indices to RAS millimetres (DICOM's LPS with x and y
negated). For a cine, its third column is the slice normal scaled by the slice thickness, so the
matrix stays invertible. Frame times live in the metadata, not in the affine.

Only header fields describing geometry, series and pixel encoding go into logs and errors, plus
file paths. Patient attributes (name, id, birth date) are never read into messages.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import UID

logger = logging.getLogger(__name__)

SpacingSource = Literal["pixel_spacing", "imager_pixel_spacing", "assumed"]

# Philips MR stores a private scale slope in (2005,100E). Only the standard RescaleSlope and
# RescaleIntercept are applied, so intensities match what other standard readers produce.
PHILIPS_PRIVATE_SCALE_SLOPE = (0x2005, 0x100E)

# Positions closer than this along the slice normal are one slice position.
SAME_POSITION_MM = 0.01


class DicomSeriesError(ValueError):
    """A DICOM folder or series cannot be turned into one well-defined image."""


@dataclass(frozen=True)
class DicomSeries:
    """Header summary of one DICOM series found in a folder.

    ``is_cine`` is True when the series has more frames than slice positions: a multi-frame file
    without distinct per-frame positions, or several files at one ImagePositionPatient.
    """

    folder: Path
    uid: str
    number: int | None
    description: str
    files: tuple[Path, ...]
    transfer_syntaxes: tuple[str, ...]
    is_cine: bool
    frame_count: int
    has_trigger_time: bool = False
    position_count: int = 0

    @property
    def file_count(self) -> int:
        return len(self.files)

    def describe(self) -> str:
        """Return one line with the UID, SeriesNumber, SeriesDescription and file count."""
        syntaxes = ", ".join(f"{UID(uid).name} ({uid})" for uid in self.transfer_syntaxes)
        kind = "cine" if self.is_cine else "images"
        return (
            f"SeriesInstanceUID {self.uid}, SeriesNumber {self.number}, "
            f"SeriesDescription {self.description!r}, {self.file_count} files, {self.frame_count} frames "
            f"({kind}), transfer syntax {syntaxes}"
        )


def _number(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _floats(dataset: Dataset, keyword: str, count: int) -> np.ndarray | None:
    """Return the tag as ``count`` floats, or None when it is absent, empty or malformed."""
    value = dataset.get(keyword)
    if value is None or value == "":
        return None
    try:
        array = np.asarray([float(item) for item in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.shape == (count,) else None


def index_dicom_folder(folder: str | Path) -> list[DicomSeries]:
    """Group the DICOM files under ``folder`` (recursively) by SeriesInstanceUID, reading headers only.

    Files that are not DICOM are skipped and counted in a debug log. Series are returned sorted by
    SeriesNumber, then UID.

    Raises:
        DicomSeriesError: the folder does not exist or contains no DICOM file with a
            SeriesInstanceUID.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomSeriesError(f"DICOM folder not found: {folder}")

    headers: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    skipped = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            skipped += 1
            continue
        uid = str(dataset.get("SeriesInstanceUID", "") or "")
        if not uid or "Rows" not in dataset:
            if _declares_image(dataset):
                raise DicomSeriesError(
                    f"{path}: the file declares an image ({_sop_class(dataset).name}) but has no "
                    f"{'SeriesInstanceUID' if not uid else 'Rows'} element, so it is truncated or damaged. "
                    "Replace it from the original export, or remove it from the series folder."
                )
            # DICOMDIR files, structured reports and other objects without an image.
            skipped += 1
            continue
        headers[uid].append((path, dataset))

    if skipped:
        logger.debug("Skipped %d files without a DICOM image under %s", skipped, folder)
    if not headers:
        raise DicomSeriesError(f"No DICOM image files with a SeriesInstanceUID found under {folder}")

    series = [_summarise(folder, uid, members) for uid, members in headers.items()]
    return sorted(series, key=lambda item: (item.number if item.number is not None else 1 << 30, item.uid))


def _sop_class(dataset: Dataset) -> UID:
    """Return the file's SOP class: from its file meta information, else from the dataset."""
    meta = getattr(dataset, "file_meta", None)
    value = (meta.get("MediaStorageSOPClassUID") if meta is not None else None) or dataset.get("SOPClassUID")
    return UID(str(value or ""))


def _declares_image(dataset: Dataset) -> bool:
    """True when the SOP class is an image storage class (MR Image Storage, Enhanced CT Image Storage, ...)."""
    return "Image Storage" in _sop_class(dataset).name


def _summarise(folder: Path, uid: str, members: list[tuple[Path, Dataset]]) -> DicomSeries:
    first = members[0][1]
    frame_count = sum(_number(dataset.get("NumberOfFrames")) or 1 for _, dataset in members)

    positions: set[tuple[float, ...]] = set()
    for _, dataset in members:
        position = _floats(dataset, "ImagePositionPatient", 3)
        if position is not None:
            positions.add(tuple(np.round(position / SAME_POSITION_MM).astype(int).tolist()))
    position_count = max(len(positions), 1)

    syntaxes = sorted({str(dataset.file_meta.get("TransferSyntaxUID", "")) for _, dataset in members})
    return DicomSeries(
        folder=folder,
        uid=uid,
        number=_number(first.get("SeriesNumber")),
        description=str(first.get("SeriesDescription", "") or ""),
        files=tuple(path for path, _ in members),
        transfer_syntaxes=tuple(syntaxes),
        is_cine=frame_count > position_count,
        frame_count=frame_count,
        has_trigger_time=any("TriggerTime" in dataset for _, dataset in members),
        position_count=position_count,
    )


def _listing(series_list: Sequence[DicomSeries]) -> str:
    return "\n".join(f"  - {series.describe()}" for series in series_list)


def select_series(series_list: Sequence[DicomSeries], rule: str | None = None) -> DicomSeries:
    """Choose the series to read from a folder's index.

    Args:
        series_list: output of :func:`index_dicom_folder` for one folder.
        rule: None to require exactly one series in the folder, or a regular expression searched
            (case-sensitive, ``re.search``) in each SeriesDescription; exactly one series must match.

    Raises:
        DicomSeriesError: naming the folder and listing every series with its UID, SeriesNumber,
            SeriesDescription and file count, when the choice is not unique.
    """
    if not series_list:
        raise DicomSeriesError("No DICOM series to select from")
    folder = series_list[0].folder

    if rule is None:
        if len(series_list) == 1:
            return series_list[0]
        raise DicomSeriesError(
            f"{folder} contains {len(series_list)} DICOM series but no series rule is set; set a "
            f"SeriesDescription regular expression to choose one:\n{_listing(series_list)}"
        )

    try:
        pattern = re.compile(rule)
    except re.error as error:
        raise DicomSeriesError(f"Invalid series rule {rule!r}: {error}") from error

    matches = [series for series in series_list if pattern.search(series.description)]
    if len(matches) == 1:
        chosen = matches[0]
        logger.info(
            "Series rule %r chose SeriesNumber %s (%r, %d files) in %s out of %d series",
            rule, chosen.number, chosen.description, chosen.file_count, folder, len(series_list),
        )
        return chosen
    outcome = "matches no series" if not matches else f"matches {len(matches)} series"
    raise DicomSeriesError(f"Series rule {rule!r} {outcome} in {folder}:\n{_listing(series_list)}")


@dataclass
class _Frame:
    """One 2D image of the series with its source file and header values."""

    path: Path
    index_in_file: int
    pixels: np.ndarray
    slope: float
    intercept: float
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: np.ndarray | None
    imager_pixel_spacing: np.ndarray | None
    trigger_time: float | None


def _decode(path: Path, dataset: Dataset) -> np.ndarray:
    """Decode the pixel data as ``(frames, H, W)``, with a clear error when no decoder is usable."""
    syntax = UID(str(dataset.file_meta.get("TransferSyntaxUID", "")))
    where = f"{path} (transfer syntax {syntax.name}, {syntax})"
    if syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError as error:
            raise DicomSeriesError(f"No pixel data decoder exists in pydicom for {where}") from error
        if not decoder.is_available:
            options = "; ".join(decoder.missing_dependencies) or "an optional pydicom plugin"
            raise DicomSeriesError(
                f"Cannot decode {where}: no decoder installed. Install one of: {options}"
            )

    try:
        pixels = dataset.pixel_array
    except Exception as error:  # pydicom raises many types from its plugins
        raise DicomSeriesError(f"Failed to decode pixel data of {where}: {error}") from error

    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
        raise DicomSeriesError(f"{where} has colour pixels; only single-channel images are supported")
    frames = _number(dataset.get("NumberOfFrames")) or 1
    pixels = np.asarray(pixels)
    return pixels.reshape(frames, *pixels.shape[-2:])


def _check_not_blank(path: Path, dataset: Dataset, pixels: np.ndarray) -> None:
    """Reject an all-zero decode when the header says the stored image has non-zero pixels.

    Some decoders fail softly and return zeros. LargestImagePixelValue, when written, records the
    real maximum.
    """
    largest = dataset.get("LargestImagePixelValue")
    if largest is None or np.any(pixels):
        return
    if int(largest) > 0:
        syntax = UID(str(dataset.file_meta.get("TransferSyntaxUID", "")))
        raise DicomSeriesError(
            f"{path} decoded to an all-zero image, but LargestImagePixelValue is {int(largest)} "
            f"(transfer syntax {syntax.name}, {syntax}); the decoder failed without an error"
        )


def _read_frames(path: Path) -> list[_Frame]:
    dataset = pydicom.dcmread(path)
    if "PerFrameFunctionalGroupsSequence" in dataset:
        # NOTE: enhanced multi-frame objects keep geometry and rescale values per frame in
        # functional groups; reading them is not implemented.
        raise DicomSeriesError(
            f"{path} is an enhanced multi-frame object (per-frame functional groups); "
            "convert it to classic single-frame files first"
        )

    pixels = _decode(path, dataset)
    _check_not_blank(path, dataset, pixels)
    if PHILIPS_PRIVATE_SCALE_SLOPE in dataset:
        logger.warning(
            "%s has the Philips private scale slope (2005,100E); it is ignored and only "
            "RescaleSlope/RescaleIntercept are applied",
            path,
        )

    slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
    trigger = dataset.get("TriggerTime")
    common = dict(
        path=path,
        slope=slope,
        intercept=intercept,
        position=_floats(dataset, "ImagePositionPatient", 3),
        orientation=_floats(dataset, "ImageOrientationPatient", 6),
        pixel_spacing=_floats(dataset, "PixelSpacing", 2),
        imager_pixel_spacing=_floats(dataset, "ImagerPixelSpacing", 2),
        trigger_time=float(trigger) if trigger not in (None, "") else None,
    )
    return [_Frame(index_in_file=index, pixels=frame, **common) for index, frame in enumerate(pixels)]


def _agreed_vector(
    frames: list[_Frame], attribute: str, tag: str, folder: Path, tolerance: float
) -> np.ndarray | None:
    """Return the value every frame shares, None when no frame has it, else raise naming the file."""
    values = [getattr(frame, attribute) for frame in frames]
    present = [value for value in values if value is not None]
    if not present:
        return None

    reference = present[0]
    for frame, value in zip(frames, values):
        if value is None:
            raise DicomSeriesError(f"{frame.path} has no {tag} while other files of the series in {folder} do")
        if not np.allclose(value, reference, atol=tolerance, rtol=0):
            raise DicomSeriesError(
                f"{frame.path} has {tag} {value.tolist()} but other files of the series in {folder} "
                f"have {reference.tolist()}"
            )
    return reference


@dataclass
class _Geometry:
    row_spacing: float
    column_spacing: float
    row_direction: np.ndarray
    column_direction: np.ndarray
    spacing_source: SpacingSource
    assumed: list[str]


def _geometry(frames: list[_Frame], folder: Path, assume_missing_geometry: bool, assumed_spacing: float) -> _Geometry:
    assumed: list[str] = []

    spacing = _agreed_vector(frames, "pixel_spacing", "PixelSpacing", folder, 1e-4)
    source: SpacingSource = "pixel_spacing"
    if spacing is None:
        spacing = _agreed_vector(frames, "imager_pixel_spacing", "ImagerPixelSpacing", folder, 1e-4)
        source = "imager_pixel_spacing"
        if spacing is not None:
            logger.warning("%s has no PixelSpacing; using ImagerPixelSpacing %s", folder, spacing.tolist())
    if spacing is None:
        if not assume_missing_geometry:
            raise DicomSeriesError(
                f"{folder}: PixelSpacing and ImagerPixelSpacing are missing; allow assumed geometry "
                f"to use {assumed_spacing} mm"
            )
        spacing = np.array([assumed_spacing, assumed_spacing])
        source = "assumed"
        assumed.append(f"PixelSpacing {spacing.tolist()}")
    if np.any(spacing <= 0):
        raise DicomSeriesError(f"{folder}: PixelSpacing {spacing.tolist()} is not positive")

    orientation = _agreed_vector(frames, "orientation", "ImageOrientationPatient", folder, 1e-4)
    if orientation is None:
        if not assume_missing_geometry:
            raise DicomSeriesError(f"{folder}: ImageOrientationPatient is missing from every file")
        orientation = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
        assumed.append(f"ImageOrientationPatient {orientation.tolist()}")

    row_direction, column_direction = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row_direction) - 1) > 1e-3 or abs(np.linalg.norm(column_direction) - 1) > 1e-3:
        raise DicomSeriesError(f"{folder}: ImageOrientationPatient {orientation.tolist()} is not two unit vectors")
    return _Geometry(float(spacing[0]), float(spacing[1]), row_direction, column_direction, source, assumed)


def read_series(
    series: DicomSeries,
    *,
    assume_missing_geometry: bool = False,
    assumed_spacing: float = 1.0,
    relative_tolerance: float = 0.02,
    absolute_tolerance: float = 0.1,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a series into a float32 array, a RAS affine and metadata.

    Slices are sorted by ImagePositionPatient projected on the slice normal, never by file name
    or InstanceNumber. Every step between consecutive slices must match the median step within
    ``max(relative_tolerance * median, absolute_tolerance)``. The defaults allow for scanners that
    write positions rounded to 0.1 mm (the GE series in ``tests/data/files`` varies by 1.4 % for
    that reason) and still reject one missing slice, which doubles a step.

    Frames at one position form a cine ordered by TriggerTime, or, for one multi-frame file, by
    its frame order.

    Intensities are ``stored * RescaleSlope + RescaleIntercept`` computed per file in float64
    and returned as float32.

    Args:
        series: one entry of :func:`index_dicom_folder`.
        assume_missing_geometry: when PixelSpacing (and ImagerPixelSpacing), ImageOrientationPatient
            or, for a single position, ImagePositionPatient are missing from every file, assume
            ``assumed_spacing`` mm, axial orientation and the origin with a warning, and store
            ``spacing_source="assumed"``. Otherwise, raise.
        assumed_spacing: in-plane spacing in mm assumed when allowed.
        relative_tolerance: allowed deviation of a slice step from the median, as a fraction.
        absolute_tolerance: allowed deviation of a slice step from the median, in mm.

    Returns:
        ``(array, affine, metadata)``: ``(H, W, D)`` or ``(H, W, T)`` float32, a 4x4 RAS affine,
        and a dict with ``layout`` (``"HWD"`` or ``"HWT"``), ``spacing`` (mm), ``spacing_source``,
        ``slice_step`` (mm), ``frame_times_ms`` (cine), ``rescaled``, ``series_number``,
        ``series_description``, ``transfer_syntaxes`` and ``assumed``.

    Raises:
        DicomSeriesError: inconsistent or missing geometry, uneven slice steps, a transfer syntax
            without an installed decoder, an all-zero decode, or unsupported layouts.
    """
    folder = series.folder
    frames = [frame for path in series.files for frame in _read_frames(path)]

    shapes = {frame.pixels.shape for frame in frames}
    if len(shapes) != 1:
        raise DicomSeriesError(f"{folder}: images of the series have different sizes {sorted(shapes)}")

    geometry = _geometry(frames, folder, assume_missing_geometry, assumed_spacing)
    normal = np.cross(geometry.row_direction, geometry.column_direction)
    positions = _positions(frames, series, assume_missing_geometry, geometry.assumed)
    distances = positions @ normal

    position_keys = np.round(distances / SAME_POSITION_MM).astype(np.int64)
    unique_positions = np.unique(position_keys)
    if len(unique_positions) == len(frames) and len(frames) > 1:
        order = np.argsort(distances, kind="stable")
        step = _check_steps(frames, distances, order, folder, relative_tolerance, absolute_tolerance)
        layout, frame_times = "HWD", None
    elif len(unique_positions) == 1:
        order, frame_times = _cine_order(frames, series)
        step = float(series_thickness(series) or 1.0) if len(frames) > 1 else 1.0
        layout = "HWT" if len(frames) > 1 else "HWD"
    else:
        # NOTE: a cine stack (several slice positions, several frames each) would need an
        # (H, W, D, T) layout that no image encoder in this project accepts.
        raise DicomSeriesError(
            f"{folder}: {len(frames)} frames at {len(unique_positions)} slice positions; multi-slice "
            "cine series are not supported, export one slice position per folder"
        )

    volume = np.stack(
        [frames[i].pixels.astype(np.float64) * frames[i].slope + frames[i].intercept for i in order], axis=-1
    ).astype(np.float32)
    if not np.any(volume):
        raise DicomSeriesError(
            f"{folder}: series {series.number} ({series.description!r}) decoded to all zeros "
            f"(transfer syntax {', '.join(series.transfer_syntaxes)})"
        )

    rescaled = any(frame.slope != 1.0 or frame.intercept != 0.0 for frame in frames)
    if rescaled:
        logger.info("Applied RescaleSlope/RescaleIntercept per file to series %s in %s", series.number, folder)
    for item in geometry.assumed:
        logger.warning("%s: assumed %s because the tag is missing", folder, item)

    origin = positions[order[0]]
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = geometry.column_direction * geometry.row_spacing
    affine_lps[:3, 1] = geometry.row_direction * geometry.column_spacing
    affine_lps[:3, 2] = normal * step
    affine_lps[:3, 3] = origin
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps

    metadata = {
        "layout": layout,
        "spacing": (geometry.row_spacing, geometry.column_spacing, step),
        "spacing_source": "assumed" if geometry.assumed else geometry.spacing_source,
        "slice_step": step,
        "frame_times_ms": frame_times,
        "rescaled": rescaled,
        "series_number": series.number,
        "series_description": series.description,
        "transfer_syntaxes": list(series.transfer_syntaxes),
        "assumed": list(geometry.assumed),
        "source_files": [str(frames[i].path) for i in order],
    }
    return volume, affine_ras, metadata


def series_thickness(series: DicomSeries) -> float | None:
    """Return SliceThickness of the series' first file in mm, or None when absent."""
    dataset = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    value = dataset.get("SliceThickness")
    try:
        return float(value) if value not in (None, "") and float(value) > 0 else None
    except (TypeError, ValueError):
        return None


def _positions(frames: list[_Frame], series: DicomSeries, assume: bool, assumed: list[str]) -> np.ndarray:
    values = [frame.position for frame in frames]
    if all(value is not None for value in values):
        return np.stack(values)

    missing = [frame.path for frame, value in zip(frames, values) if value is None]
    if len(missing) < len(frames):
        raise DicomSeriesError(f"{missing[0]} has no ImagePositionPatient while other files of the series do")
    single_position = len(series.files) == 1
    if not (assume and single_position):
        raise DicomSeriesError(
            f"{series.folder}: ImagePositionPatient is missing from every file, so slices cannot be "
            "ordered" + ("" if single_position else "; this is only assumed for a single file")
        )
    assumed.append("ImagePositionPatient [0.0, 0.0, 0.0]")
    return np.zeros((len(frames), 3))


def _check_steps(
    frames: list[_Frame],
    distances: np.ndarray,
    order: np.ndarray,
    folder: Path,
    relative_tolerance: float,
    absolute_tolerance: float,
) -> float:
    steps = np.diff(distances[order])
    median = float(np.median(steps))
    tolerance = max(relative_tolerance * median, absolute_tolerance)
    for index, step in enumerate(steps):
        if abs(step - median) > tolerance:
            before, after = frames[order[index]].path.name, frames[order[index + 1]].path.name
            raise DicomSeriesError(
                f"{folder}: uneven slice spacing, expected a step of {median:.4g} mm but found "
                f"{step:.4g} mm between {before} and {after} (tolerance {tolerance:.3g} mm); "
                "a slice is missing or the folder mixes acquisitions"
            )
    return median


def _cine_order(frames: list[_Frame], series: DicomSeries) -> tuple[np.ndarray, list[float] | None]:
    """Order frames at one position: the frame order of a multi-frame file, else TriggerTime."""
    if len(series.files) == 1:
        dataset = pydicom.dcmread(series.files[0], stop_before_pixels=True)
        frame_time = dataset.get("FrameTime")
        vector = dataset.get("FrameTimeVector")
        times = None
        if vector not in (None, ""):
            times = np.cumsum([float(value) for value in vector]).tolist()
        elif frame_time not in (None, ""):
            times = [index * float(frame_time) for index in range(len(frames))]
        return np.arange(len(frames)), times

    if any(frame.trigger_time is None for frame in frames):
        raise DicomSeriesError(
            f"{series.folder}: {len(frames)} images at one slice position without TriggerTime, so the "
            "cine frame order is unknown"
        )
    times = np.array([frame.trigger_time for frame in frames])
    order = np.argsort(times, kind="stable")
    return order, times[order].tolist()
