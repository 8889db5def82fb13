"""Tests for the image-token imputers: accuracy against the mean-token baseline, determinism, saving."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from pipeline.imputation.image_features import MeanTokenImputer, TokenImputer
from pipeline.networks import MaskedFusionTransformer

NUM_IMAGE_TOKENS, TOKEN_DIM = 2, 8


def make_cohort(num_subjects: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return table tokens ``(n, 6, 8)``, image tokens ``(n, 2, 8)`` and presence flags ``(n,)``.

    Both token sets are functions of four hidden clinical values: the table tokens a tanh of a
    random mixing, the image tokens a tanh of another mixing plus noise of standard deviation
    0.1. About 80% of the subjects have an image.
    """
    rng = np.random.default_rng(seed)
    clinical = rng.normal(size=(num_subjects, 4))
    table_tokens = np.tanh(clinical @ rng.normal(size=(4, 6 * TOKEN_DIM))).reshape(num_subjects, 6, TOKEN_DIM)
    image_mixing = rng.normal(size=(4, NUM_IMAGE_TOKENS * TOKEN_DIM)) / 2
    image = np.tanh(clinical @ image_mixing) + 0.1 * rng.normal(size=(num_subjects, NUM_IMAGE_TOKENS * TOKEN_DIM))
    present = rng.random(num_subjects) < 0.8
    return (
        table_tokens.astype(np.float32),
        image.reshape(num_subjects, NUM_IMAGE_TOKENS, TOKEN_DIM).astype(np.float32),
        present,
    )


def mean_squared_error(predicted: np.ndarray, expected: np.ndarray) -> float:
    return float(np.mean((predicted - expected) ** 2))


@pytest.mark.parametrize("pooling", ["flatten", "mean"])
def test_token_imputer_beats_mean_tokens(pooling: str) -> None:
    source, tokens, present = make_cohort(240, seed=0)
    train, test = slice(0, 180), slice(180, 240)

    imputer = TokenImputer(source_pooling=pooling, random_state=0).fit(tokens[train], source[train], present[train])
    baseline = MeanTokenImputer().fit(tokens[train], source[train], present[train])
    learned_error = mean_squared_error(imputer.transform(source[test]), tokens[test])
    baseline_error = mean_squared_error(baseline.transform(source[test]), tokens[test])

    assert learned_error < 0.5 * baseline_error


def test_token_imputer_same_seed_same_tokens() -> None:
    source, tokens, present = make_cohort(60, seed=1)
    first = TokenImputer(max_epochs=5, random_state=2).fit(tokens, source, present).transform(source)
    second = TokenImputer(max_epochs=5, random_state=2).fit(tokens, source, present).transform(source)

    np.testing.assert_array_equal(first, second)


def test_token_imputer_output_shape_and_type() -> None:
    source, tokens, present = make_cohort(60, seed=1)
    predicted = TokenImputer(max_epochs=2).fit(tokens, source, present).transform(source[:7])

    assert predicted.shape == (7, NUM_IMAGE_TOKENS, TOKEN_DIM)
    assert predicted.dtype == np.float32
    assert np.isfinite(predicted).all()


def test_token_imputer_ignores_rows_without_image() -> None:
    """Rows without an image may contain NaN tokens, so the fit must not read them."""
    source, tokens, present = make_cohort(60, seed=1)
    tokens[~present] = np.nan
    imputer = TokenImputer(max_epochs=3, random_state=0).fit(tokens, source, present)

    assert np.isfinite(imputer.transform(source)).all()


def test_token_imputer_starts_from_mean_tokens() -> None:
    """With a learning rate of 0 the weights keep their initial values, which predict the mean tokens."""
    source, tokens, present = make_cohort(60, seed=1)
    imputer = TokenImputer(max_epochs=1, learning_rate=0.0, random_state=0).fit(tokens, source, present)
    expected = tokens[present].mean(axis=0)

    np.testing.assert_allclose(imputer.transform(source[:3]), np.repeat(expected[None], 3, axis=0), atol=1e-6)


def test_token_imputer_with_fusion_network_tokens() -> None:
    """Source and target are the projected tokens of a fusion network's table and image modalities."""
    torch.manual_seed(0)
    network = MaskedFusionTransformer(
        [
            {"name": "table", "encoder": "features", "in_features": 4, "num_tokens": 3, "out_features": 8},
            {"name": "image", "encoder": "features", "in_features": 6, "num_tokens": 2, "out_features": 8},
        ],
        num_classes=2,
        dim=16,
        depth=1,
        heads=2,
        projection_dim=8,
    ).eval()
    generator = torch.Generator().manual_seed(1)
    table = torch.randn(200, 4, generator=generator)
    image = torch.tanh(table @ torch.randn(4, 6, generator=generator)) + 0.05 * torch.randn(200, 6, generator=generator)
    with torch.no_grad():
        source = network.encode_modality("table", table).numpy()  # (200, 3, 16)
        tokens = network.encode_modality("image", image).numpy()  # (200, 2, 16)
    present = np.ones(200, dtype=bool)

    imputer = TokenImputer(random_state=0).fit(tokens[:150], source[:150], present[:150])
    baseline = MeanTokenImputer().fit(tokens[:150], source[:150], present[:150])
    predicted = imputer.transform(source[150:])

    assert predicted.shape == (50, 2, 16)
    baseline_error = mean_squared_error(baseline.transform(source[150:]), tokens[150:])
    assert mean_squared_error(predicted, tokens[150:]) < 0.5 * baseline_error


def test_token_imputer_save_and_load(tmp_path) -> None:
    source, tokens, present = make_cohort(60, seed=1)
    imputer = TokenImputer(max_epochs=3, source_pooling="mean", random_state=0).fit(tokens, source, present)
    loaded = TokenImputer.load(imputer.save(tmp_path / "tokens.pt"))

    np.testing.assert_array_equal(loaded.transform(source), imputer.transform(source))
    assert loaded.get_params() == imputer.get_params()


def test_token_imputer_load_rejects_other_version(tmp_path) -> None:
    path = tmp_path / "tokens.pt"
    torch.save({"format": "pipeline.imputation.TokenImputer", "version": 99}, path)

    with pytest.raises(ValueError, match="expected version 1"):
        TokenImputer.load(path)


def test_mean_token_imputer_hand_worked() -> None:
    tokens = np.array([[[1.0, 2.0]], [[3.0, 4.0]], [[np.nan, np.nan]]], dtype=np.float32)  # (3, 1, 2)
    present = np.array([True, True, False])
    source = np.zeros((3, 5), dtype=np.float32)

    predicted = MeanTokenImputer().fit(tokens, source, present).transform(source[:2])

    np.testing.assert_array_equal(predicted, np.array([[[2.0, 3.0]], [[2.0, 3.0]]], dtype=np.float32))


def test_mean_token_imputer_requires_an_image() -> None:
    with pytest.raises(ValueError, match="at least 1 subject with an image"):
        MeanTokenImputer().fit(np.zeros((2, 1, 2)), np.zeros((2, 3)), np.zeros(2, dtype=bool))


def test_transform_before_fit_raises() -> None:
    with pytest.raises(NotFittedError):
        TokenImputer().transform(np.zeros((2, 3)))
    with pytest.raises(NotFittedError):
        MeanTokenImputer().transform(np.zeros((2, 3)))


def test_fit_requires_two_subjects_with_image() -> None:
    source, tokens, _ = make_cohort(10, seed=1)
    present = np.zeros(10, dtype=bool)
    present[0] = True

    with pytest.raises(ValueError, match="at least 2 subjects with an image"):
        TokenImputer().fit(tokens, source, present)


def test_fit_rejects_source_of_other_rows() -> None:
    source, tokens, present = make_cohort(10, seed=1)
    with pytest.raises(ValueError, match="n=10 rows"):
        TokenImputer().fit(tokens, source[:9], present)


def test_fit_rejects_present_of_wrong_type() -> None:
    source, tokens, present = make_cohort(10, seed=1)
    with pytest.raises(ValueError, match="present must be a bool array"):
        TokenImputer().fit(tokens, source, present.astype(int))


def test_fit_rejects_tokens_of_wrong_rank() -> None:
    source, tokens, present = make_cohort(10, seed=1)
    with pytest.raises(ValueError, match="tokens must have shape"):
        TokenImputer().fit(tokens.reshape(10, -1), source, present)


def test_fit_rejects_non_finite_source() -> None:
    source, tokens, present = make_cohort(10, seed=1)
    source[3, 0, 0] = np.nan
    with pytest.raises(ValueError, match="source contains NaN"):
        TokenImputer().fit(tokens, source, present)


def test_transform_rejects_other_source_shape() -> None:
    source, tokens, present = make_cohort(20, seed=1)
    imputer = TokenImputer(max_epochs=1).fit(tokens, source, present)
    with pytest.raises(ValueError, match=r"source rows must have shape \(6, 8\)"):
        imputer.transform(source[:, :5])


@pytest.mark.parametrize(
    ("parameter", "value", "message"),
    [
        ("source_pooling", "max", "source_pooling must be one of"),
        ("depth", -1, "depth must be an int of at least 0"),
        ("batch_size", 0, "batch_size must be an int of at least 1"),
        ("validation_fraction", 1.0, r"validation_fraction must be in \[0, 1\)"),
        ("weight_decay", -0.1, "weight_decay must be a non-negative number"),
    ],
)
def test_fit_rejects_invalid_parameter(parameter: str, value: object, message: str) -> None:
    source, tokens, present = make_cohort(10, seed=1)
    with pytest.raises(ValueError, match=message):
        TokenImputer(**{parameter: value}).fit(tokens, source, present)
