"""Tests of the MoPoE-VAE image imputer on small images that share a 4-d latent code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from pipeline.imputation.mopoe import MoPoEImputer, product_of_experts, sample_subsets
from pipeline.imputation.persistence import load_imputer, save_imputer

NUM_MODALITIES = 3
IMAGE_SIZE = 8


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    # On a machine with few busy cores, one thread runs these tiny convolutions faster than several.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def shared_code_images(num_rows: int, seed: int = 0) -> np.ndarray:
    """Return ``(num_rows, 3, 1, 8, 8)`` images, each modality a fixed linear map of one 4-d code plus noise."""
    rng = np.random.default_rng(seed)
    maps = np.random.default_rng(100).normal(size=(NUM_MODALITIES, IMAGE_SIZE * IMAGE_SIZE, 4)) / 2
    code = rng.normal(size=(num_rows, 4))
    pixels = np.einsum("mpk,nk->nmp", maps, code) + 0.1 * rng.normal(size=(num_rows, NUM_MODALITIES, IMAGE_SIZE**2))
    return pixels.reshape(num_rows, NUM_MODALITIES, 1, IMAGE_SIZE, IMAGE_SIZE).astype(np.float32)


def random_present(num_rows: int, seed: int = 0) -> np.ndarray:
    """Return ``(num_rows, 3)`` bool with about 30% absent entries and at least one present per row."""
    rng = np.random.default_rng(seed)
    present = rng.random((num_rows, NUM_MODALITIES)) > 0.3
    present[~present.any(axis=1), 0] = True
    return present


@pytest.fixture(scope="module")
def training_data() -> tuple[np.ndarray, np.ndarray]:
    images = shared_code_images(200, seed=0)
    present = random_present(200, seed=0)
    images[~present] = np.nan  # absent entries must never be read
    return images, present


@pytest.fixture(scope="module")
def fitted(training_data: tuple[np.ndarray, np.ndarray]) -> MoPoEImputer:
    images, present = training_data
    imputer = MoPoEImputer(latent_dim=8, channels=8, max_epochs=15, batch_size=40, learning_rate=1e-2, random_state=0)
    return imputer.fit(images, present)


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    return shared_code_images(60, seed=1), random_present(60, seed=1)


def small_imputer(**params: object) -> MoPoEImputer:
    return MoPoEImputer(**{"latent_dim": 4, "channels": 4, "max_epochs": 2, "batch_size": 50, **params})


@pytest.mark.parametrize("modality", range(NUM_MODALITIES))
def test_mopoe_beats_mean_image_baseline(
    fitted: MoPoEImputer, training_data: tuple[np.ndarray, np.ndarray], modality: int
) -> None:
    images, present = training_data
    truth = shared_code_images(60, seed=1)
    test_present = np.ones((60, NUM_MODALITIES), dtype=bool)
    test_present[:, modality] = False

    generated = fitted.transform(truth, test_present)[:, modality]
    mean_image = images[present[:, modality], modality].mean(axis=0)
    model_error = float(((generated - truth[:, modality]) ** 2).mean())
    baseline_error = float(((mean_image - truth[:, modality]) ** 2).mean())

    assert model_error < 0.5 * baseline_error


def test_mopoe_present_modalities_bit_identical(fitted: MoPoEImputer, held_out: tuple[np.ndarray, np.ndarray]) -> None:
    images, present = held_out

    output = fitted.transform(images, present)

    assert output.dtype == np.float32
    assert output.shape == images.shape
    assert np.array_equal(output[present].view(np.uint32), images[present].view(np.uint32))


def test_mopoe_absent_entries_filled(fitted: MoPoEImputer, held_out: tuple[np.ndarray, np.ndarray]) -> None:
    images, present = held_out
    images = images.copy()
    images[~present] = np.nan

    output = fitted.transform(images, present)

    assert np.isfinite(output).all()
    assert not np.array_equal(output[~present], np.zeros_like(output[~present]))


def test_mopoe_transform_keeps_input(fitted: MoPoEImputer, held_out: tuple[np.ndarray, np.ndarray]) -> None:
    images, present = held_out
    before = images.copy()

    fitted.transform(images, present)

    assert np.array_equal(images, before)


def test_mopoe_grouped_equals_per_row(fitted: MoPoEImputer, held_out: tuple[np.ndarray, np.ndarray]) -> None:
    images, present = held_out
    assert len(np.unique(present, axis=0)) > 3  # several patterns, so grouping is exercised

    batched = fitted.transform(images, present)
    per_row = np.concatenate([fitted.transform(images[row : row + 1], present[row : row + 1]) for row in range(len(images))])

    np.testing.assert_allclose(batched, per_row, rtol=0, atol=1e-6)


def test_mopoe_chunks_equal_one_batch(fitted: MoPoEImputer, held_out: tuple[np.ndarray, np.ndarray]) -> None:
    images, present = held_out
    whole = fitted.transform(images, present)

    fitted.set_params(batch_size=3)
    try:
        in_chunks = fitted.transform(images, present)
    finally:
        fitted.set_params(batch_size=40)

    np.testing.assert_allclose(in_chunks, whole, rtol=0, atol=1e-6)


def test_mopoe_transform_deterministic(fitted: MoPoEImputer, held_out: tuple[np.ndarray, np.ndarray]) -> None:
    images, present = held_out

    assert np.array_equal(fitted.transform(images, present), fitted.transform(images, present))


def test_mopoe_accepts_tensors(fitted: MoPoEImputer, held_out: tuple[np.ndarray, np.ndarray]) -> None:
    images, present = held_out

    from_tensors = fitted.transform(torch.from_numpy(images), torch.from_numpy(present))

    assert np.array_equal(from_tensors, fitted.transform(images, present))


def test_mopoe_fitted_attributes(fitted: MoPoEImputer) -> None:
    assert fitted.num_modalities_ == NUM_MODALITIES
    assert fitted.image_shape_ == (1, IMAGE_SIZE, IMAGE_SIZE)
    assert not fitted.network_.training
    assert 1 <= fitted.best_epoch_ <= 15
    assert len(fitted.history_) >= fitted.best_epoch_
    assert set(fitted.history_[0]) == {"train_loss", "validation_loss"}
    assert fitted.history_[-1]["validation_loss"] < fitted.history_[0]["validation_loss"]


def test_mopoe_same_seed_same_weights(training_data: tuple[np.ndarray, np.ndarray]) -> None:
    images, present = training_data

    first = small_imputer(random_state=3).fit(images, present)
    second = small_imputer(random_state=3).fit(images, present)
    third = small_imputer(random_state=4).fit(images, present)

    first_state, second_state = first.network_.state_dict(), second.network_.state_dict()
    assert all(torch.equal(first_state[name], second_state[name]) for name in first_state)
    assert np.array_equal(first.transform(images, present), second.transform(images, present))
    assert first.history_ == second.history_
    assert not torch.equal(first_state["decoders.0.0.weight"], third.network_.state_dict()["decoders.0.0.weight"])


def test_mopoe_fit_keeps_global_random_state(training_data: tuple[np.ndarray, np.ndarray]) -> None:
    images, present = training_data
    torch.manual_seed(11)
    expected = torch.rand(3)

    torch.manual_seed(11)
    small_imputer().fit(images, present)

    assert torch.equal(torch.rand(3), expected)


def test_mopoe_default_present_all_true() -> None:
    images = shared_code_images(40, seed=2)

    implicit = small_imputer().fit(images)
    explicit = small_imputer().fit(images, np.ones((40, NUM_MODALITIES), dtype=bool))

    assert implicit.history_ == explicit.history_


def test_mopoe_without_validation_keeps_last_epoch(training_data: tuple[np.ndarray, np.ndarray]) -> None:
    images, present = training_data

    imputer = small_imputer(validation_fraction=0.0, max_epochs=3).fit(images, present)

    assert imputer.best_epoch_ == 3
    assert len(imputer.history_) == 3
    assert all(np.isnan(epoch["validation_loss"]) for epoch in imputer.history_)


def test_mopoe_skips_rows_without_modalities(training_data: tuple[np.ndarray, np.ndarray]) -> None:
    images, present = training_data
    present = present.copy()
    present[:5] = False

    imputer = small_imputer().fit(images, present)

    assert np.isfinite(imputer.history_[0]["train_loss"])


def test_mopoe_works_on_rectangular_images() -> None:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(20, 2, 2, 4, 12)).astype(np.float32)
    present = np.array([[True, False], [False, True]] * 10)

    output = small_imputer().fit(images, present).transform(images, present)

    assert output.shape == (20, 2, 2, 4, 12)
    assert np.isfinite(output).all()


def test_mopoe_row_without_modality_raises(fitted: MoPoEImputer, held_out: tuple[np.ndarray, np.ndarray]) -> None:
    images, present = held_out
    present = present.copy()
    present[[1, 4]] = False

    with pytest.raises(ValueError, match=r"rows \[1, 4\] have no present modality"):
        fitted.transform(images, present)


def test_mopoe_transform_before_fit_raises(held_out: tuple[np.ndarray, np.ndarray]) -> None:
    images, present = held_out

    with pytest.raises(NotFittedError):
        MoPoEImputer().transform(images, present)


@pytest.mark.parametrize(
    ("images", "present", "message"),
    [
        (np.zeros((10, 3, 8, 8), np.float32), None, r"shape \(n, M, C, H, W\).*got \(10, 3, 8, 8\)"),
        (np.zeros((0, 3, 1, 8, 8), np.float32), None, "no empty axis"),
        (np.zeros((10, 3, 1, 10, 8), np.float32), None, "divisible by 4.*got 10 x 8"),
        (np.zeros((10, 3, 1, 8, 8), np.float32), np.ones((10, 2), bool), r"present must be a bool array of shape"),
        (np.zeros((10, 3, 1, 8, 8), np.float32), np.ones((10, 3), int), r"present must be a bool array.*int64"),
        (np.full((10, 3, 1, 8, 8), np.nan, np.float32), None, "NaN or infinite values"),
    ],
)
def test_mopoe_fit_rejects_bad_inputs(images: np.ndarray, present: np.ndarray | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        small_imputer().fit(images, present)


def test_mopoe_fit_rejects_modality_never_present() -> None:
    images = shared_code_images(20)
    present = np.ones((20, NUM_MODALITIES), dtype=bool)
    present[:, 2] = False

    with pytest.raises(ValueError, match=r"modalities \[2\] are absent from every row"):
        small_imputer().fit(images, present)


def test_mopoe_fit_rejects_single_row() -> None:
    images = shared_code_images(3)
    present = np.zeros((3, NUM_MODALITIES), dtype=bool)
    present[0] = True

    with pytest.raises(ValueError, match="at least 2 rows with a present modality, got 1"):
        small_imputer().fit(images, present)


@pytest.mark.parametrize(
    ("row_shape", "message"),
    [((2, 1, 8, 8), r"\(3, 1, 8, 8\) as in fit, got \(2, 1, 8, 8\)"), ((3, 1, 12, 8), r"as in fit, got \(3, 1, 12, 8\)")],
)
def test_mopoe_transform_rejects_other_shape(fitted: MoPoEImputer, row_shape: tuple[int, ...], message: str) -> None:
    images = np.zeros((4, *row_shape), np.float32)

    with pytest.raises(ValueError, match=message):
        fitted.transform(images, np.ones((4, row_shape[0]), dtype=bool))


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        ({"latent_dim": 0}, ValueError, "latent_dim must be an int of at least 1, got 0"),
        ({"channels": 2.5}, ValueError, "channels must be an int"),
        ({"batch_size": True}, ValueError, "batch_size must be an int"),
        ({"beta": -1.0}, ValueError, "beta must be a non-negative number, got -1.0"),
        ({"beta": "1"}, TypeError, "beta must be a number, got str"),
        ({"learning_rate": 0.0}, ValueError, "learning_rate must be a positive number"),
        ({"validation_fraction": 1.0}, ValueError, r"validation_fraction must be in \[0, 1\), got 1.0"),
        ({"device": "gpu0"}, ValueError, "device must be a torch device name"),
    ],
)
def test_mopoe_rejects_bad_parameters(params: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        small_imputer(**params).fit(shared_code_images(10))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_mopoe_rejects_cuda_without_gpu() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        small_imputer(device="cuda").fit(shared_code_images(10))


def test_mopoe_save_load_round_trip(
    fitted: MoPoEImputer, held_out: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    images, present = held_out

    loaded = MoPoEImputer.load(fitted.save(tmp_path / "mopoe.pt"))

    assert loaded.get_params() == fitted.get_params()
    assert loaded.image_shape_ == fitted.image_shape_
    assert loaded.best_epoch_ == fitted.best_epoch_
    assert loaded.history_ == fitted.history_
    assert not loaded.network_.training
    assert np.array_equal(loaded.transform(images, present), fitted.transform(images, present))


def test_mopoe_round_trip_through_save_imputer(
    fitted: MoPoEImputer, held_out: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    images, present = held_out

    loaded = load_imputer(save_imputer(fitted, tmp_path / "mopoe.pt"))

    assert isinstance(loaded, MoPoEImputer)
    assert np.array_equal(loaded.transform(images, present), fitted.transform(images, present))


def test_mopoe_flipped_byte_rejected(fitted: MoPoEImputer, tmp_path: Path) -> None:
    path = save_imputer(fitted, tmp_path / "mopoe.pt")
    data = bytearray(path.read_bytes())
    offset = data.find(b"data/0") + 400  # inside the first tensor's storage
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(ValueError, match="mopoe.pt"):
        load_imputer(path)


def test_product_of_experts_hand_worked() -> None:
    mu = torch.tensor([[[2.0], [4.0], [10.0]]])  # (B=1, M=3, L=1)
    logvar = torch.tensor([[[0.0], [0.0], [np.log(0.5)]]])  # variances 1, 1, 0.5
    subset = torch.tensor([[True, True, False]])

    mean, log_variance = product_of_experts(mu, logvar, subset)

    # Precisions 1 (prior) + 1 + 1 = 3, so the mean is (0 + 2 + 4) / 3.
    torch.testing.assert_close(mean, torch.tensor([[2.0]], dtype=mean.dtype))
    torch.testing.assert_close(log_variance, torch.tensor([[-np.log(3.0)]], dtype=log_variance.dtype))


def test_product_of_experts_empty_subset_is_prior() -> None:
    mean, log_variance = product_of_experts(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool))

    assert torch.equal(mean, torch.zeros(2, 4))
    assert torch.equal(log_variance, torch.zeros(2, 4))


def test_sample_subsets_inside_present_and_uniform() -> None:
    present = torch.tensor([[True, False, True, True], [False, True, False, False]])
    generator = torch.Generator().manual_seed(0)

    subsets = sample_subsets(present, 7000, generator)  # (K, B, M)

    assert subsets.shape == (7000, 2, 4)
    assert not (subsets & ~present).any()
    assert subsets.any(dim=-1).all()
    assert subsets[:, 1].equal(present[1].expand(7000, 4))
    patterns, counts = torch.unique(subsets[:, 0], dim=0, return_counts=True)
    assert len(patterns) == 7  # every non-empty subset of the 3 present modalities
    assert (counts - 1000).abs().max() < 150
