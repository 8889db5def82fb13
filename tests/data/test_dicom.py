"""DICOM series indexing, selection and assembly on small written series and the real files."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from pipeline.data.dicom import DicomSeriesError, index_dicom_folder, read_series, select_series
FILES = Path(__file__).parent / "files"


def write_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    series_uid: str,
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    series_number: int = 1,
    description: str = "TEST",
    position: tuple[float, float, float] | None = (0.0, 0.0, 0.0),
    orientation: tuple[float, ...] | None = (1, 0, 0, 0, 1, 0),
    pixel_spacing: tuple[float, float] | None = (0.7, 0.7),
    slope: float | None = None,
    intercept: float | None = None,
    trigger_time: float | None = None,
    extra: dict | None = None,
) -> Path:
    """Write one single-frame uint16 MR image with the given geometry."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = MRImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientName = "Test^Subject"
    dataset.PatientID = "TEST-0001"
    dataset.Modality = "MR"
    dataset.StudyInstanceUID = study_uid
    dataset.SeriesInstanceUID = series_uid
    dataset.SeriesNumber = series_number
    dataset.SeriesDescription = description
    if position is not None:
        dataset.ImagePositionPatient = list(position)
    if orientation is not None:
        dataset.ImageOrientationPatient = list(orientation)
    if pixel_spacing is not None:
        dataset.PixelSpacing = list(pixel_spacing)
    dataset.SliceThickness = 2
    if slope is not None:
        dataset.RescaleSlope = slope
    if intercept is not None:
        dataset.RescaleIntercept = intercept
    if trigger_time is not None:
        dataset.TriggerTime = trigger_time

    pixels = np.ascontiguousarray(pixels, dtype=np.uint16)
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    dataset.PixelData = pixels.tobytes()
    for keyword, value in (extra or {}).items():
        setattr(dataset, keyword, value)

    dataset.save_as(path, enforce_file_format=True)
    return path


def write_stack(
    folder: Path,
    volume: np.ndarray,
    z_positions: list[float],
    names: list[str] | None = None,
    **kwargs,
) -> list[Path]:
    """Write ``volume`` ``(H, W, D)`` as one axial series, slice ``k`` at z = ``z_positions[k]``."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = kwargs.pop("series_uid", generate_uid())
    names = names or [f"IM{index + 1:04d}" for index in range(volume.shape[2])]
    keep_positions = kwargs.pop("position", True) is not None
    return [
        write_slice(
            folder / name,
            volume[:, :, index],
            series_uid=series_uid,
            position=(0.0, 0.0, z) if keep_positions else None,
            **kwargs,
        )
        for index, (name, z) in enumerate(zip(names, z_positions))
    ]



@pytest.fixture
def cine_folder(tmp_path) -> Path:
    folder = tmp_path / "cine_real"
    folder.mkdir()
    shutil.copy(FILES / "cardiac_cine_mr.dcm", folder)
    return folder


# ---------------------------------------------------------------------------------------------
# Tests


def _read(folder: Path, rule: str | None = None, **options):
    return read_series(select_series(index_dicom_folder(folder), rule), **options)


def _mixed_folder(folder: Path) -> Path:
    """Series SAX_TEST (4 axial slices, value 100*k) and LOC_TEST (3 sagittal slices, value 7), interleaved."""
    folder.mkdir()
    sax, loc = generate_uid(), generate_uid()
    names = iter(f"IM{index:04d}" for index in range(1, 8))
    for index in range(4):
        write_slice(folder / next(names), np.full((8, 8), 100 * index), series_uid=sax, series_number=5,
                    description="SAX_TEST", position=(0.0, 0.0, 8.0 * index))
        if index < 3:
            write_slice(folder / next(names), np.full((8, 8), 7), series_uid=loc, series_number=1,
                        description="LOC_TEST", position=(4.0 * index, 0.0, 0.0), orientation=(0, 1, 0, 0, 0, -1))
    return folder


def test_index_lists_mixed_series(tmp_path):
    series = index_dicom_folder(_mixed_folder(tmp_path / "mixed"))

    assert [item.description for item in series] == ["LOC_TEST", "SAX_TEST"]
    assert [item.file_count for item in series] == [3, 4]
    assert [item.is_cine for item in series] == [False, False]
    assert series[0].transfer_syntaxes == (ExplicitVRLittleEndian,)


def test_mixed_series_without_rule_raises(tmp_path):
    folder = _mixed_folder(tmp_path / "mixed")
    series = index_dicom_folder(folder)

    with pytest.raises(DicomSeriesError) as error:
        select_series(series)

    message = str(error.value)
    assert str(folder) in message
    for item in series:
        assert item.uid in message
        assert f"SeriesNumber {item.number}" in message
        assert f"{item.file_count} files" in message
    assert "SAX_TEST" in message
    assert "LOC_TEST" in message


def test_mixed_series_rule_selects_sax(tmp_path, caplog):
    folder = _mixed_folder(tmp_path / "mixed")

    with caplog.at_level(logging.INFO, logger="pipeline.data.dicom"):
        array, _, _ = _read(folder, "SAX")

    assert array.shape == (8, 8, 4)
    assert sorted(np.unique(array).tolist()) == [0, 100, 200, 300]
    assert [array[0, 0, k] for k in range(4)] == [0, 100, 200, 300]
    assert "SAX_TEST" in caplog.text


@pytest.mark.parametrize("rule", ["NOPE", "_TEST"])
def test_series_rule_not_unique_raises(tmp_path, rule):
    with pytest.raises(DicomSeriesError, match="matches"):
        select_series(index_dicom_folder(_mixed_folder(tmp_path / "mixed")), rule)


@pytest.mark.parametrize("keep_bytes", [300, 600])
def test_slice_truncated_in_header_raises(tmp_path, keep_bytes):
    folder = tmp_path / "series"
    paths = write_stack(folder, np.arange(4 * 64, dtype=np.uint16).reshape(8, 8, 4), [0.0, 2.0, 4.0, 6.0])
    paths[2].write_bytes(paths[2].read_bytes()[:keep_bytes])

    with pytest.raises(DicomSeriesError) as raised:
        index_dicom_folder(folder)

    assert str(paths[2]) in str(raised.value)
    assert "truncated or damaged" in str(raised.value)


def test_non_image_objects_are_skipped(tmp_path):
    folder = tmp_path / "series"
    write_stack(folder, np.zeros((8, 8, 2), dtype=np.uint16), [0.0, 2.0])
    (folder / "notes.txt").write_text("export log\n")

    (series,) = index_dicom_folder(folder)

    assert len(series.files) == 2


def test_slices_sorted_by_position_not_name(tmp_path):
    volume = np.stack([np.full((8, 8), value) for value in (10, 20, 30)], axis=-1)
    # File names and InstanceNumber run opposite to the slice positions.
    names = ["c", "b", "a"]
    write_stack(tmp_path / "s", volume, [4.0, 2.0, 0.0], names=names)
    for number, name in enumerate(names):
        path = tmp_path / "s" / name
        dataset = pydicom.dcmread(path)
        dataset.InstanceNumber = number + 1
        dataset.save_as(path)

    array, affine, metadata = _read(tmp_path / "s")

    assert [array[0, 0, k] for k in range(3)] == [30, 20, 10]
    assert metadata["slice_step"] == pytest.approx(2.0)
    np.testing.assert_allclose(affine[:3, 3], [0, 0, 0])


def test_missing_slice_raises_with_neighbours(tmp_path):
    folder = tmp_path / "gap"
    volume = np.stack([np.full((8, 8), 100 * k) for k in range(6)], axis=-1)
    write_stack(folder, volume, [0, 2, 4, 6, 8, 10])
    (folder / "IM0003").unlink()

    with pytest.raises(DicomSeriesError) as error:
        _read(folder)

    message = str(error.value)
    assert str(folder) in message
    assert "expected a step of 2 mm" in message
    assert "found 4 mm" in message
    assert "between IM0002 and IM0004" in message


def test_real_series_with_rounded_positions_loads():
    array, affine, metadata = _read(FILES / "brain_mr_series")

    assert array.shape == (256, 256, 20)
    assert metadata["spacing"][:2] == (0.859375, 0.859375)
    assert metadata["slice_step"] == pytest.approx(6.97, abs=0.01)
    first = pydicom.dcmread(FILES / "brain_mr_series" / "brain_001.dcm")
    np.testing.assert_array_equal(array[:, :, 0], first.pixel_array.astype(np.float32))
    # RAS origin is the first slice's LPS position with x and y negated.
    np.testing.assert_allclose(affine[:3, 3], [110.5, 78.3063, -72.7575])


def test_real_cine_needs_assumed_geometry(cine_folder):
    series = select_series(index_dicom_folder(cine_folder))

    assert series.is_cine
    assert series.frame_count == 16
    with pytest.raises(DicomSeriesError, match="PixelSpacing"):
        read_series(series)


def test_real_cine_frames_time_last(cine_folder, caplog):
    series = select_series(index_dicom_folder(cine_folder))

    with caplog.at_level(logging.WARNING, logger="pipeline.data.dicom"):
        array, affine, metadata = read_series(series, assume_missing_geometry=True)

    assert array.shape == (256, 256, 16)
    assert metadata["layout"] == "HWT"
    assert metadata["spacing_source"] == "assumed"
    assert metadata["frame_times_ms"][1] == pytest.approx(69.47)
    frames = pydicom.dcmread(FILES / "cardiac_cine_mr.dcm").pixel_array
    for index in (0, 7, 15):
        np.testing.assert_array_equal(array[:, :, index], frames[index])
    assert "assumed PixelSpacing" in caplog.text
    assert "Anonymized" not in caplog.text


def test_cine_files_ordered_by_trigger_time(tmp_path):
    folder = tmp_path / "cine"
    folder.mkdir()
    uid = generate_uid()
    for name, time, value in (("a", 300.0, 3), ("b", 100.0, 1), ("c", 200.0, 2)):
        write_slice(folder / name, np.full((8, 8), value), series_uid=uid, trigger_time=time)

    series = select_series(index_dicom_folder(folder))
    array, _, metadata = read_series(series)

    assert series.is_cine
    assert [array[0, 0, t] for t in range(3)] == [1, 2, 3]
    assert metadata["frame_times_ms"] == [100.0, 200.0, 300.0]


def test_missing_pixel_spacing_raises_or_assumes(tmp_path, caplog):
    folder = tmp_path / "geom_a"
    write_stack(folder, np.ones((8, 8, 3)), [0, 2, 4], pixel_spacing=None)

    with pytest.raises(DicomSeriesError, match="PixelSpacing"):
        _read(folder)
    with caplog.at_level(logging.WARNING, logger="pipeline.data.dicom"):
        _, affine, metadata = _read(folder, assume_missing_geometry=True, assumed_spacing=1.0)

    assert metadata["spacing_source"] == "assumed"
    assert str(folder) in caplog.text
    assert "PixelSpacing" in caplog.text
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [1.0, 1.0, 2.0])


def test_imager_pixel_spacing_fallback(tmp_path):
    folder = tmp_path / "imager"
    write_stack(folder, np.ones((8, 8, 2)), [0, 2], pixel_spacing=None, extra={"ImagerPixelSpacing": [0.5, 0.5]})

    _, _, metadata = _read(folder)

    assert metadata["spacing_source"] == "imager_pixel_spacing"
    assert metadata["spacing"][:2] == (0.5, 0.5)


def test_orientation_missing_on_one_file_raises(tmp_path):
    folder = tmp_path / "geom_b"
    paths = write_stack(folder, np.ones((8, 8, 3)), [0, 2, 4])
    dataset = pydicom.dcmread(paths[1])
    del dataset.ImageOrientationPatient
    dataset.save_as(paths[1])

    with pytest.raises(DicomSeriesError) as error:
        _read(folder, assume_missing_geometry=True)

    assert str(paths[1]) in str(error.value)
    assert "ImageOrientationPatient" in str(error.value)


def test_inconsistent_pixel_spacing_raises(tmp_path):
    folder = tmp_path / "geom_c"
    paths = write_stack(folder, np.ones((8, 8, 3)), [0, 2, 4])
    dataset = pydicom.dcmread(paths[2])
    dataset.PixelSpacing = [1.4, 1.4]
    dataset.save_as(paths[2])

    with pytest.raises(DicomSeriesError) as error:
        _read(folder)

    assert str(paths[2]) in str(error.value)
    assert "PixelSpacing" in str(error.value)


def test_missing_positions_raise_for_stack(tmp_path):
    folder = tmp_path / "no_ipp"
    write_stack(folder, np.ones((8, 8, 3)), [0, 2, 4], position=None)

    with pytest.raises(DicomSeriesError, match="ImagePositionPatient"):
        _read(folder, assume_missing_geometry=True)


def test_per_slice_rescale_in_float(tmp_path, caplog):
    folder = tmp_path / "rescale"
    stored = np.stack([np.linspace(0, 4000, 64).reshape(8, 8).astype(np.uint16)] * 3, axis=-1)
    slopes = [2.5, 1.0, 0.5]
    uid = generate_uid()
    folder.mkdir()
    for k, slope in enumerate(slopes):
        write_slice(folder / f"IM{k}", stored[:, :, k], series_uid=uid, position=(0, 0, 2.0 * k),
                    slope=slope, intercept=-1024)

    with caplog.at_level(logging.INFO, logger="pipeline.data.dicom"):
        array, _, metadata = _read(folder)

    assert array.dtype == np.float32
    for k, slope in enumerate(slopes):
        expected = stored[:, :, k].astype(np.float64) * slope - 1024
        np.testing.assert_array_equal(array[:, :, k], expected.astype(np.float32))
    assert array.min() == -1024
    assert metadata["rescaled"]
    assert "Applied RescaleSlope" in caplog.text


def test_philips_private_slope_ignored_with_warning(tmp_path, caplog):
    folder = tmp_path / "philips"
    paths = write_stack(folder, np.full((8, 8, 2), 10), [0, 2], slope=2.0)
    for path in paths:
        dataset = pydicom.dcmread(path)
        block = dataset.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
        block.add_new(0x0E, "FL", 0.25)
        dataset.save_as(path)

    with caplog.at_level(logging.WARNING, logger="pipeline.data.dicom"):
        array, _, _ = _read(folder)

    assert np.all(array == 20)
    assert "(2005,100E)" in caplog.text


def _reference_slice(tmp_path: Path) -> Path:
    folder = tmp_path / "reference"
    write_stack(folder, (np.arange(64).reshape(8, 8) * 50)[:, :, np.newaxis], [0.0])
    return folder / "IM0001"


def _compressed_copy(reference: Path, folder: Path, syntax) -> Path:
    folder.mkdir()
    dataset = pydicom.dcmread(reference)
    dataset.compress(syntax)
    target = folder / "IM0001"
    dataset.save_as(target)
    return target


def test_rle_lossless_decodes_to_reference(tmp_path):
    reference = _reference_slice(tmp_path)
    _compressed_copy(reference, tmp_path / "rle", RLELossless)

    expected, _, _ = _read(reference.parent)
    array, _, metadata = _read(tmp_path / "rle")

    np.testing.assert_array_equal(array, expected)
    assert metadata["transfer_syntaxes"] == [RLELossless]


def _encapsulated_copy(reference: Path, folder: Path, syntax, stream: bytes) -> Path:
    """Copy ``reference`` with ``stream`` as its one encapsulated frame under ``syntax``."""
    folder.mkdir()
    dataset = pydicom.dcmread(reference)
    dataset.file_meta.TransferSyntaxUID = syntax
    dataset.PixelData = encapsulate([stream])
    dataset["PixelData"].VR = "OB"
    target = folder / "IM0001"
    dataset.save_as(target)
    return target


def _jpeg2000_lossless(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint16)).save(buffer, "JPEG2000", irreversible=False, no_jp2=True)
    return buffer.getvalue()


@pytest.mark.skipif(not get_decoder(JPEG2000Lossless).is_available, reason="no JPEG 2000 decoder installed")
def test_jpeg2000_lossless_decodes_to_reference(tmp_path):
    reference = _reference_slice(tmp_path)
    pixels = pydicom.dcmread(reference).pixel_array
    _encapsulated_copy(reference, tmp_path / "j2k", JPEG2000Lossless, _jpeg2000_lossless(pixels))

    array, _, _ = _read(tmp_path / "j2k")

    np.testing.assert_array_equal(array[:, :, 0], pixels.astype(np.float32))


@pytest.mark.skipif(get_decoder(JPEGLosslessSV1).is_available, reason="a JPEG Lossless decoder is installed")
def test_missing_decoder_names_syntax_and_package(tmp_path):
    reference = _reference_slice(tmp_path)
    # The stream content does not matter: the decoder check runs before any decoding.
    target = _encapsulated_copy(reference, tmp_path / "jpegls", JPEGLosslessSV1, b"\xff\xd8\xff\xd9")

    with pytest.raises(DicomSeriesError) as error:
        _read(tmp_path / "jpegls")

    message = str(error.value)
    assert str(target) in message
    assert JPEGLosslessSV1 in message
    assert JPEGLosslessSV1.name in message
    assert "pylibjpeg-libjpeg" in message
    assert "gdcm" in message


def test_corrupt_stream_raises_named_error(tmp_path):
    reference = _reference_slice(tmp_path)
    target = _encapsulated_copy(reference, tmp_path / "corrupt", RLELossless, b"\0" * 16)

    with pytest.raises(DicomSeriesError) as error:
        _read(tmp_path / "corrupt")

    assert str(target) in str(error.value)
    assert "Failed to decode" in str(error.value)


def test_soft_decoder_failure_zero_image_raises(tmp_path):
    folder = tmp_path / "zeros"
    write_stack(folder, np.zeros((8, 8, 1)), [0.0], extra={"LargestImagePixelValue": 3150})

    with pytest.raises(DicomSeriesError, match="LargestImagePixelValue is 3150"):
        _read(folder)


def test_all_zero_series_raises(tmp_path):
    folder = tmp_path / "blank"
    write_stack(folder, np.zeros((8, 8, 2)), [0.0, 2.0])

    with pytest.raises(DicomSeriesError, match="all zeros"):
        _read(folder)


def test_dicom_affine_matches_lps_convention(tmp_path):
    # LPS x grows with the column index, LPS y with the row index; RAS negates both.
    folder = tmp_path / "orient"
    write_stack(folder, np.ones((8, 8, 4)), [0, 2, 4, 6], pixel_spacing=(0.5, 0.25))

    _, affine, _ = _read(folder)

    expected = np.array([[0, -0.25, 0, 0], [-0.5, 0, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(affine, expected)


def test_errors_do_not_contain_patient_attributes(tmp_path):
    folder = _mixed_folder(tmp_path / "mixed")

    with pytest.raises(DicomSeriesError) as error:
        select_series(index_dicom_folder(folder))

    assert "Test^Subject" not in str(error.value)
    assert "TEST-0001" not in str(error.value)


def test_empty_folder_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not DICOM")

    with pytest.raises(DicomSeriesError, match="No DICOM image files"):
        index_dicom_folder(tmp_path / "empty")
