"""NIfTI checks and loading on small files written by each test."""

from __future__ import annotations

import gzip
import logging

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImage

from pipeline.data.nifti import NiftiFileError, check_nifti, load_nifti


def _save(path, array, affine=None, **header):
    image = nib.Nifti1Image(array, np.eye(4) if affine is None else affine)
    for name, value in header.items():
        image.header[name] = value
    nib.save(image, path)
    return path


def test_zero_size_spatial_dimension_raises(tmp_path):
    path = _save(tmp_path / "zero_dim.nii", np.ones((8, 8, 4), np.int16))
    raw = bytearray(path.read_bytes())
    raw[44:46] = (0).to_bytes(2, "little")  # dim[2]
    path.write_bytes(bytes(raw))

    with pytest.raises(NiftiFileError) as error:
        load_nifti(path)

    assert str(path) in str(error.value)
    assert "(8, 0, 4)" in str(error.value)


def test_zero_fourth_dimension_read_as_3d(tmp_path, caplog):
    path = _save(tmp_path / "dim4_zero.nii", np.arange(256, dtype=np.int16).reshape(8, 8, 4))
    image = nib.load(path)
    header = image.header
    raw = bytearray(path.read_bytes())
    raw[40:42] = (4).to_bytes(2, "little")  # dim[0]
    raw[48:50] = (0).to_bytes(2, "little")  # dim[4]
    path.write_bytes(bytes(raw))
    assert header.get_data_shape() == (8, 8, 4)

    with caplog.at_level(logging.WARNING, logger="pipeline.data.nifti"):
        array, _, info = load_nifti(path)

    assert info["shape"] == (8, 8, 4)
    np.testing.assert_array_equal(array, np.arange(256).reshape(8, 8, 4))
    assert "read as 1" in caplog.text


def test_cine_4d_keeps_time_last(tmp_path):
    data = np.broadcast_to(np.arange(10, dtype=np.float32), (8, 8, 4, 10)).copy()
    image = nib.Nifti1Image(data, np.eye(4))
    image.header.set_zooms((1, 1, 1, 0.03))
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, tmp_path / "cine_4d.nii.gz")

    array, _, info = load_nifti(tmp_path / "cine_4d.nii.gz")

    assert array.shape == (8, 8, 4, 10)
    assert info["time_step"] == pytest.approx(0.03)
    assert info["time_unit"] == "sec"
    assert [array[0, 0, 0, t] for t in (0, 9)] == [0, 9]


def test_vector_5d_shape_reported(tmp_path):
    _save(tmp_path / "vector_5d.nii.gz", np.zeros((8, 8, 4, 1, 2), np.float32))

    info = check_nifti(tmp_path / "vector_5d.nii.gz")

    assert info["shape"] == (8, 8, 4, 1, 2)


def test_qform_sform_mismatch_uses_sform(tmp_path, caplog):
    data = np.zeros((8, 8, 4), np.float32)
    data[1, 2, 3] = 1000
    sform = np.diag([1.0, 1.0, 2.0, 1.0])
    rotation = np.array([[0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    image = nib.Nifti1Image(data, None)
    image.header.set_sform(sform, code=2)
    image.header.set_qform(rotation @ sform, code=1)
    path = tmp_path / "qs_mismatch.nii.gz"
    nib.save(image, path)

    with caplog.at_level(logging.WARNING, logger="pipeline.data.nifti"):
        array, affine, _ = load_nifti(path)
    monai_image = LoadImage(image_only=True, reader="NibabelReader")(path)

    np.testing.assert_allclose(affine, sform)
    marker = np.argwhere(array == 1000)[0]
    world = affine @ np.append(marker, 1)
    monai_marker = np.argwhere(monai_image.numpy() == 1000)[0]
    np.testing.assert_allclose(monai_image.affine.numpy() @ np.append(monai_marker, 1), world)
    assert str(path) in caplog.text
    assert "code 1" in caplog.text
    assert "code 2" in caplog.text


def _qbad(path, quatern_d):
    image = nib.Nifti1Image(np.ones((8, 8, 4), np.float32), None)
    image.header.set_qform(np.eye(4), code=1)
    image.header.set_sform(np.eye(4), code=0)
    nib.save(image, path)
    raw = bytearray(path.read_bytes())
    # quatern_b, quatern_c, quatern_d are float32 at bytes 256, 260, 264.
    raw[256:268] = np.array([0.0, 0.0, quatern_d], "<f4").tobytes()
    path.write_bytes(bytes(raw))
    return path


def test_quaternion_rounding_renormalised(tmp_path, caplog):
    path = _qbad(tmp_path / "qbad.nii", 1.0000005)

    with caplog.at_level(logging.WARNING, logger="pipeline.data.nifti"):
        array, affine, _ = load_nifti(path)

    assert array.shape == (8, 8, 4)
    np.testing.assert_allclose(affine[:3, :3], np.diag([-1.0, -1.0, 1.0]), atol=1e-5)
    assert "renormalised" in caplog.text


def test_invalid_quaternion_raises_with_fix(tmp_path):
    path = _qbad(tmp_path / "qworse.nii", 1.1)

    with pytest.raises(NiftiFileError) as error:
        load_nifti(path)

    assert str(path) in str(error.value)
    assert "qform_code" in str(error.value)


def test_gz_suffix_on_plain_file_raises(tmp_path):
    plain = _save(tmp_path / "plain.nii", np.ones((4, 4, 2), np.float32))
    fake = tmp_path / "fake_gz.nii.gz"
    fake.write_bytes(plain.read_bytes())

    with pytest.raises(NiftiFileError, match="suffix is .nii.gz but the content is uncompressed"):
        load_nifti(fake)


def test_nii_suffix_on_gzip_file_raises(tmp_path):
    plain = _save(tmp_path / "plain.nii", np.ones((4, 4, 2), np.float32))
    true_gz = tmp_path / "true_gz.nii"
    true_gz.write_bytes(gzip.compress(plain.read_bytes()))

    with pytest.raises(NiftiFileError, match="rename it to true_gz.nii.gz"):
        load_nifti(true_gz)


def test_twin_files_raise_naming_both(tmp_path):
    (tmp_path / "twins").mkdir()
    one = _save(tmp_path / "twins" / "A.nii", np.ones((4, 4, 2), np.float32))
    two = _save(tmp_path / "twins" / "A.nii.gz", np.full((4, 4, 2), 2, np.float32))

    with pytest.raises(NiftiFileError) as error:
        load_nifti(two)

    assert str(one) in str(error.value)
    assert str(two) in str(error.value)


def test_not_nifti_and_missing_file_raise(tmp_path):
    (tmp_path / "text.nii").write_text("x" * 400)

    with pytest.raises(NiftiFileError, match="no magic"):
        check_nifti(tmp_path / "text.nii")
    with pytest.raises(NiftiFileError, match="not found"):
        check_nifti(tmp_path / "missing.nii.gz")


def test_truncated_data_raises_named_error(tmp_path):
    path = _save(tmp_path / "short.nii", np.ones((8, 8, 4), np.float32))
    path.write_bytes(path.read_bytes()[:400])

    with pytest.raises(NiftiFileError, match="cannot read the image data"):
        load_nifti(path)


@pytest.mark.parametrize(
    ("name", "dtype", "values", "header", "expected"),
    [
        ("int16_extremes.nii.gz", np.int16, (-32768, 32767), {}, (-32768, 32767)),
        ("uint16_high.nii.gz", np.uint16, (0, 65535), {}, (0, 65535)),
        ("int16_slope4.nii.gz", np.int16, (0, 32767), {"scl_slope": 4, "scl_inter": 0}, (0, 131068)),
    ],
)
def test_integer_extremes_exact_in_float32(tmp_path, name, dtype, values, header, expected):
    data = np.zeros((8, 8, 4), dtype)
    data[0, 0, 0], data[1, 0, 0] = values
    image = nib.Nifti1Image(data, np.eye(4), dtype=dtype)
    nib.save(image, tmp_path / "plain.nii")
    raw = bytearray((tmp_path / "plain.nii").read_bytes())
    if header:
        # scl_slope and scl_inter are float32 at bytes 112 and 116; nibabel resets them on save.
        raw[112:120] = np.array([header["scl_slope"], header["scl_inter"]], "<f4").tobytes()
    (tmp_path / name).write_bytes(gzip.compress(bytes(raw)))

    array, _, _ = load_nifti(tmp_path / name)

    assert array.dtype == np.float32
    assert (array.min(), array.max()) == expected
