"""DICOM-to-NIfTI cache, modality loading, absent placeholders, preprocessing and collation."""

from __future__ import annotations

import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, LoadImage, Orientation
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from pipeline.data.dicom import index_dicom_folder, read_series, select_series
from pipeline.data.image_cache import cache_series_as_nifti, read_cache_metadata
from pipeline.data.nifti import load_nifti
from pipeline.data.transforms import RAS_LABELS, LoadModalityImaged, MarkAbsentModalityd, image_preprocessing
from tests.data.test_dicom import FILES, write_slice, write_stack


@pytest.fixture
def brain_folder(tmp_path):
    folder = tmp_path / "brain"
    shutil.copytree(FILES / "brain_mr_series", folder)
    return folder


@pytest.fixture
def cine_folder(tmp_path):
    folder = tmp_path / "cine"
    folder.mkdir()
    shutil.copy(FILES / "cardiac_cine_mr.dcm", folder)
    return folder


def test_cache_round_trip_volume(tmp_path, brain_folder):
    expected, affine, _ = read_series(select_series(index_dicom_folder(brain_folder)))

    path = cache_series_as_nifti(brain_folder, tmp_path / "cache")
    array, cached_affine, _ = load_nifti(path)

    np.testing.assert_array_equal(array, expected)
    np.testing.assert_allclose(cached_affine, affine, atol=1e-4)


def test_cache_round_trip_cine(tmp_path, cine_folder):
    options = {"assume_missing_geometry": True}
    expected, _, _ = read_series(select_series(index_dicom_folder(cine_folder)), **options)

    path = cache_series_as_nifti(cine_folder, tmp_path / "cache", **options)
    array, _, info = load_nifti(path)

    assert array.shape == (256, 256, 1, 16)
    np.testing.assert_array_equal(array[:, :, 0, :], expected)
    assert info["time_step"] == pytest.approx(69.47, abs=1e-3)
    assert read_cache_metadata(path)["spacing_source"] == "assumed"


def test_cache_reused_until_files_change(tmp_path):
    folder = tmp_path / "series"
    paths = write_stack(folder, np.ones((8, 8, 2)), [0.0, 2.0])
    cache = tmp_path / "cache"

    first = cache_series_as_nifti(folder, cache)
    mtime = first.stat().st_mtime_ns
    again = cache_series_as_nifti(folder, cache)
    other_rule = cache_series_as_nifti(folder, cache, rule="TEST")
    os.utime(paths[0], ns=(paths[0].stat().st_atime_ns, paths[0].stat().st_mtime_ns + 10**9))
    changed = cache_series_as_nifti(folder, cache)

    assert again == first
    assert again.stat().st_mtime_ns == mtime
    assert other_rule != first
    assert changed != first
    assert not list(cache.glob("*.partial*"))


def _lps_volume() -> np.ndarray:
    volume = np.zeros((8, 8, 4), np.uint8)
    volume[0, 0, 0] = 255
    volume[7, 0, 0] = 128
    return volume


def test_orientation_agrees_for_nifti_and_dicom(tmp_path):
    volume = _lps_volume()
    nifti_path = tmp_path / "orient_lps.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([-1.0, -1.0, 2.0, 1.0])), nifti_path)
    # NIfTI voxel (i, j, k) lies at LPS (i, j, 2k), so with IOP [1,0,0,0,1,0] it is DICOM row j, column i.
    write_stack(tmp_path / "orient_dcm", np.transpose(volume, (1, 0, 2)).astype(np.uint16), [0, 2, 4, 6],
                pixel_spacing=(1.0, 1.0))

    loader = LoadModalityImaged(["image"], tmp_path / "cache")
    orientation = Orientation(axcodes="RAS", labels=RAS_LABELS)
    images = {
        "nifti": orientation(loader({"image": str(nifti_path)})["image"]),
        "dicom": orientation(loader({"image": str(tmp_path / "orient_dcm")})["image"]),
        "monai": orientation(LoadImage(image_only=True, ensure_channel_first=True)(nifti_path)),
    }

    transform = ornt_transform(io_orientation(np.diag([-1.0, -1.0, 2.0, 1.0])), axcodes2ornt("RAS"))
    predicted = np.argwhere(apply_orientation(volume, transform) == 255)[0]
    for name, image in images.items():
        assert np.argwhere(image[0].numpy() == 255)[0].tolist() == predicted.tolist(), name
        np.testing.assert_allclose(image.affine.numpy(), images["monai"].affine.numpy(), atol=1e-5, err_msg=name)


def test_nifti_and_dicom_give_same_tensor(tmp_path, brain_folder):
    nifti_path = cache_series_as_nifti(brain_folder, tmp_path / "elsewhere")
    steps = Compose([
        LoadModalityImaged("image", tmp_path / "cache", kind="3d"),
        MarkAbsentModalityd("image", spatial_shape=(32, 32, 8)),
        image_preprocessing("image", spatial_shape=(32, 32, 8), kind="3d"),
    ])

    from_dicom = steps({"image": str(brain_folder)})["image"]
    from_nifti = steps({"image": str(nifti_path)})["image"]

    assert from_dicom.shape == (1, 32, 32, 8)
    torch.testing.assert_close(from_dicom, from_nifti)


def test_rescaled_dicom_and_nifti_twin_agree(tmp_path):
    folder = tmp_path / "rescale"
    folder.mkdir()
    stored = np.linspace(0, 4000, 64).reshape(8, 8).astype(np.uint16)
    for k, slope in enumerate([2.5, 1.0, 0.5]):
        write_slice(folder / f"IM{k}", stored, series_uid="1.2.3.4", position=(0, 0, 2.0 * k), slope=slope,
                    intercept=-1024)
    expected = np.stack([stored * slope - 1024.0 for slope in [2.5, 1.0, 0.5]], axis=-1).astype(np.float32)
    twin = tmp_path / "dicom_rescale_expected.nii.gz"
    _, affine, _ = read_series(select_series(index_dicom_folder(folder)))
    nib.save(nib.Nifti1Image(expected, affine), twin)

    loader = LoadModalityImaged("image", tmp_path / "cache")
    from_dicom = loader({"image": folder})["image"]
    from_twin = loader({"image": twin})["image"]

    np.testing.assert_array_equal(from_dicom[0].numpy(), expected)
    torch.testing.assert_close(from_dicom.as_tensor(), from_twin.as_tensor())


def test_cine_kind_loads_channel_first_time_last(tmp_path, cine_folder):
    loader = LoadModalityImaged("cine", tmp_path / "cache", kind="2d+t",
                                read_options={"assume_missing_geometry": True})

    image = loader({"cine": cine_folder})["cine"]

    assert tuple(image.shape) == (1, 256, 256, 16)


def test_layout_not_fitting_kind_raises(tmp_path):
    path = tmp_path / "vector_5d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 1, 2), np.float32), np.eye(4)), path)
    cine = tmp_path / "cine_4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 10), np.float32), np.eye(4)), cine)

    with pytest.raises(ValueError, match=r"shape \(8, 8, 4, 1, 2\)"):
        LoadModalityImaged("image", tmp_path, kind="3d")({"image": path})
    with pytest.raises(ValueError, match="single-slice cine"):
        LoadModalityImaged("image", tmp_path, kind="2d+t")({"image": cine})
    frame = LoadModalityImaged("image", tmp_path, kind="3d", frame=3)({"image": cine})["image"]
    assert tuple(frame.shape) == (1, 8, 8, 4)


def _subjects(tmp_path):
    subjects = []
    for index in range(4):
        path = tmp_path / f"s{index}.nii.gz"
        nib.save(nib.Nifti1Image(np.random.default_rng(index).random((10, 12, 1, 5)).astype(np.float32), np.eye(4)),
                 path)
        subjects.append({"subject_id": f"S{index}", "cine": str(path)})
    subjects[1]["cine"] = None
    subjects[3]["cine"] = ""
    return subjects


def test_mixed_presence_batch_collates(tmp_path):
    steps = Compose([
        LoadModalityImaged("cine", tmp_path / "cache", kind="2d+t"),
        MarkAbsentModalityd("cine", spatial_shape=(8, 8, 4)),
        image_preprocessing("cine", spatial_shape=(8, 8, 4), kind="2d+t", intensity="scale"),
    ])
    loader = DataLoader(Dataset(_subjects(tmp_path), transform=steps), batch_size=4)

    batch = next(iter(loader))

    assert batch["subject_id"] == ["S0", "S1", "S2", "S3"]
    assert batch["cine"].shape == (4, 1, 8, 8, 4)
    assert batch["present_cine"].tolist() == [True, False, True, False]
    assert batch["present"]["cine"].tolist() == [True, False, True, False]
    assert torch.count_nonzero(batch["cine"][1]) == 0
    assert batch["cine"][0].min() >= 0.0
    assert batch["cine"][0].max() <= 1.0


def test_placeholder_untouched_by_preprocessing():
    steps = Compose([
        MarkAbsentModalityd("image", spatial_shape=(4, 4, 2)),
        image_preprocessing("image", spatial_shape=(4, 4, 2), kind="3d"),
    ])

    item = steps({"image": None})

    assert torch.equal(item["image"], torch.zeros(1, 4, 4, 2))
    assert not item["present_image"]


def test_wrong_output_shape_names_file(tmp_path):
    path = tmp_path / "two_channel.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.eye(4)), path)
    steps = Compose([
        LoadModalityImaged("image", tmp_path),
        MarkAbsentModalityd("image", spatial_shape=(4, 4, 2), channels=2),
        image_preprocessing("image", spatial_shape=(4, 4, 2), channels=2),
    ])

    with pytest.raises(RuntimeError) as error:
        steps({"image": str(path)})

    # MONAI's Compose wraps the error of a transform in a RuntimeError.
    cause = error.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, ValueError)
    assert "two_channel.nii.gz" in str(cause)
    assert "(1, 4, 4, 2)" in str(cause)
    assert "(2, 4, 4, 2)" in str(cause)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"spatial_shape": (4, 4), "kind": "3d"}, "needs 3 sizes"),
        ({"spatial_shape": (4, 4, 2), "kind": "4d"}, "kind must be one of"),
        ({"spatial_shape": (4, 4, 2), "intensity": "zscore"}, "intensity must be"),
    ],
)
def test_preprocessing_rejects_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        image_preprocessing("image", **arguments)


def test_cache_keeps_copies_of_series_apart(tmp_path):
    """Two folders whose files share names, sizes and modification times are cached separately."""
    first, second = tmp_path / "s1", tmp_path / "s2"
    write_stack(first, np.arange(8 * 8 * 3, dtype=np.uint16).reshape(8, 8, 3), [0.0, 8.0, 16.0])
    write_stack(second, np.arange(8 * 8 * 3, dtype=np.uint16).reshape(8, 8, 3)[::-1].copy(), [0.0, 8.0, 16.0])
    for copy in second.iterdir():
        original = first / copy.name
        os.utime(copy, ns=(original.stat().st_atime_ns, original.stat().st_mtime_ns))

    cached_first = cache_series_as_nifti(first, tmp_path / "cache")
    cached_second = cache_series_as_nifti(second, tmp_path / "cache")

    assert cached_first != cached_second
