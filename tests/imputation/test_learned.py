"""Tests for the learned tabular imputer: determinism, valid levels, accuracy, image input, saving."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from pipeline.data.tabular import EncodedTable
from pipeline.imputation.learned import LearnedTabularImputer, _hidden_values

COLUMNS = ("sign", "band", "x", "y", "w")
CARDINALITIES = (2, 3)


def complete_rows(num_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return categorical ``(n, 2)`` and continuous ``(n, 3)`` columns that all follow one latent value.

    ``sign`` is the latent's sign, ``band`` its tercile with noise, and the continuous columns are
    noisy multiples of it, so every column can be predicted from the others.
    """
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=num_rows)
    noise = rng.normal(size=(num_rows, 3))
    continuous = np.stack(
        [latent + 0.2 * noise[:, 0], -latent + 0.2 * noise[:, 1], 0.5 * latent + 0.3 * noise[:, 2]], axis=1
    ).astype(np.float32)
    categorical = np.stack(
        [(latent > 0).astype(np.int64), np.digitize(latent + 0.3 * rng.normal(size=num_rows), [-0.7, 0.7])], axis=1
    ).astype(np.int64)
    return categorical, continuous


def with_missing(categorical: np.ndarray, continuous: np.ndarray, missing: np.ndarray) -> EncodedTable:
    """Build an EncodedTable that hides the values where ``missing`` ``(n, 5)`` is True."""
    categorical = categorical.copy()
    continuous = continuous.copy()
    categorical[missing[:, :2]] = -1
    continuous[missing[:, 2:]] = np.nan
    return EncodedTable(categorical=categorical, continuous=continuous, missing_values=missing.copy(), columns=COLUMNS)


def random_missing(num_rows: int, probability: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((num_rows, len(COLUMNS))) < probability


@pytest.fixture(scope="module")
def cohort() -> dict[str, object]:
    """Fit one imputer on 300 training rows and keep 200 test rows with 30% of values hidden.

    Module fixtures run before the per-test single-thread fixture, so this one sets it itself.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    categorical, continuous = complete_rows(500, seed=0)
    train = with_missing(categorical[:300], continuous[:300], random_missing(300, 0.2, seed=1))
    test_missing = random_missing(200, 0.3, seed=2)
    test = with_missing(categorical[300:], continuous[300:], test_missing)
    imputer = LearnedTabularImputer(max_epochs=80, random_state=0).fit(train, CARDINALITIES)
    torch.set_num_threads(previous)
    return {
        "imputer": imputer,
        "train": train,
        "test": test,
        "test_missing": test_missing,
        "truth_categorical": categorical[300:],
        "truth_continuous": continuous[300:],
    }


def small_table(seed: int = 5) -> EncodedTable:
    categorical, continuous = complete_rows(40, seed=seed)
    return with_missing(categorical, continuous, random_missing(40, 0.3, seed=seed + 1))


def test_same_seed_same_values() -> None:
    table = small_table()
    first = LearnedTabularImputer(max_epochs=5, random_state=3).fit_transform(table, CARDINALITIES)
    second = LearnedTabularImputer(max_epochs=5, random_state=3).fit_transform(table, CARDINALITIES)

    np.testing.assert_array_equal(first.categorical, second.categorical)
    np.testing.assert_array_equal(first.continuous, second.continuous)
    np.testing.assert_array_equal(first.recovered, second.recovered)


def test_other_seed_other_values() -> None:
    table = small_table()
    first = LearnedTabularImputer(max_epochs=5, random_state=3).fit_transform(table, CARDINALITIES)
    other = LearnedTabularImputer(max_epochs=5, random_state=4).fit_transform(table, CARDINALITIES)

    assert not np.array_equal(first.continuous, other.continuous)


def test_recovered_categorical_is_valid_level(cohort: dict) -> None:
    test = cohort["test"]
    result = cohort["imputer"].transform(test)

    assert result.categorical.dtype == np.int64
    for index, cardinality in enumerate(CARDINALITIES):
        assert result.categorical[:, index].min() >= 0
        assert result.categorical[:, index].max() < cardinality
    assert np.isfinite(result.continuous).all()


def test_recovered_mask_and_observed_values(cohort: dict) -> None:
    test = cohort["test"]
    result = cohort["imputer"].transform(test)
    missing = cohort["test_missing"]

    np.testing.assert_array_equal(result.recovered, missing)
    assert not result.table.missing_values.any()
    assert result.columns == COLUMNS
    np.testing.assert_array_equal(result.categorical[~missing[:, :2]], test.categorical[~missing[:, :2]])
    np.testing.assert_array_equal(result.continuous[~missing[:, 2:]], test.continuous[~missing[:, 2:]])


def test_beats_mean_and_mode_filling(cohort: dict) -> None:
    train, missing = cohort["train"], cohort["test_missing"]
    truth_categorical, truth_continuous = cohort["truth_categorical"], cohort["truth_continuous"]
    result = cohort["imputer"].transform(cohort["test"])

    hidden_categorical, hidden_continuous = missing[:, :2], missing[:, 2:]
    learned_accuracy = (result.categorical[hidden_categorical] == truth_categorical[hidden_categorical]).mean()
    learned_error = np.mean((result.continuous[hidden_continuous] - truth_continuous[hidden_continuous]) ** 2)

    modes = np.array([np.bincount(column[column >= 0]).argmax() for column in train.categorical.T])
    means = np.nanmean(train.continuous, axis=0)
    mode_filled = np.broadcast_to(modes, truth_categorical.shape)
    mean_filled = np.broadcast_to(means, truth_continuous.shape)
    mode_accuracy = (mode_filled[hidden_categorical] == truth_categorical[hidden_categorical]).mean()
    mean_error = np.mean((mean_filled[hidden_continuous] - truth_continuous[hidden_continuous]) ** 2)

    assert learned_accuracy > mode_accuracy + 0.2
    assert learned_error < 0.5 * mean_error


def test_image_tokens_improve_recovery() -> None:
    """A continuous column that copies an image feature is recovered better when the image is given."""
    rng = np.random.default_rng(7)
    num_rows = 300
    image_tokens = rng.normal(size=(num_rows, 2, 4)).astype(np.float32)
    categorical, continuous = complete_rows(num_rows, seed=8)
    continuous[:, 2] = image_tokens[:, :, 0].mean(axis=1) + 0.05 * rng.normal(size=num_rows)
    missing = random_missing(num_rows, 0.2, seed=9)
    present = np.ones(num_rows, dtype=bool)
    train = with_missing(categorical[:200], continuous[:200], missing[:200])
    imputer = LearnedTabularImputer(max_epochs=80, random_state=0)
    imputer.fit(train, CARDINALITIES, image_tokens[:200], present[:200])

    hidden = np.zeros((100, len(COLUMNS)), dtype=bool)
    hidden[:, 4] = True
    test = with_missing(categorical[200:], continuous[200:], hidden)
    with_image = imputer.transform(test, image_tokens[200:], present[200:]).continuous[:, 2]
    without_image = imputer.transform(test).continuous[:, 2]
    flagged_absent = imputer.transform(test, image_tokens[200:], ~present[200:]).continuous[:, 2]

    error_with = np.mean((with_image - continuous[200:, 2]) ** 2)
    error_without = np.mean((without_image - continuous[200:, 2]) ** 2)
    assert error_with < 0.5 * error_without
    np.testing.assert_array_equal(flagged_absent, without_image)


def test_save_and_load_give_same_values(cohort: dict, tmp_path) -> None:
    imputer = cohort["imputer"]
    path = imputer.save(tmp_path / "imputer" / "learned.pt")
    loaded = LearnedTabularImputer.load(path)

    expected = imputer.transform(cohort["test"])
    result = loaded.transform(cohort["test"])
    np.testing.assert_array_equal(result.categorical, expected.categorical)
    np.testing.assert_array_equal(result.continuous, expected.continuous)
    assert loaded.get_params() == imputer.get_params()
    assert loaded.best_epoch_ == imputer.best_epoch_


def test_load_rejects_other_file(tmp_path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"format": "something.else", "version": 1}, path)
    with pytest.raises(ValueError, match="expected a file of format"):
        LearnedTabularImputer.load(path)


def test_all_missing_column_filled_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    table = small_table()
    missing = table.missing_values.copy()
    missing[:, 0] = True
    missing[:, 3] = True
    table = with_missing(table.categorical, table.continuous, missing)

    with caplog.at_level(logging.WARNING, logger="pipeline.imputation.learned"):
        result = LearnedTabularImputer(max_epochs=3, random_state=0).fit_transform(table, CARDINALITIES)

    assert "missing in every training row" in caplog.text
    assert (result.categorical[:, 0] == 0).all()
    assert (result.continuous[:, 1] == 0.0).all()
    assert result.recovered[:, 0].all()


def test_no_validation_trains_every_epoch() -> None:
    imputer = LearnedTabularImputer(max_epochs=4, validation_fraction=0.0, random_state=0)
    imputer.fit(small_table(), CARDINALITIES)

    assert len(imputer.history_) == 4
    assert imputer.best_epoch_ == 4


def test_transform_before_fit_raises() -> None:
    with pytest.raises(NotFittedError):
        LearnedTabularImputer().transform(small_table())


def test_transform_rejects_other_columns() -> None:
    table = small_table()
    imputer = LearnedTabularImputer(max_epochs=2).fit(table, CARDINALITIES)
    renamed = EncodedTable(table.categorical, table.continuous, table.missing_values, ("a", "b", "c", "d", "e"))

    with pytest.raises(ValueError, match="fitted on"):
        imputer.transform(renamed)


def test_fit_rejects_level_outside_cardinality() -> None:
    with pytest.raises(ValueError, match="cardinality"):
        LearnedTabularImputer(max_epochs=2).fit(small_table(), (2, 2))


def test_fit_rejects_image_tokens_without_flags() -> None:
    table = small_table()
    with pytest.raises(ValueError, match="given together"):
        LearnedTabularImputer(max_epochs=2).fit(table, CARDINALITIES, image_tokens=np.zeros((40, 1, 4)))


def test_fit_rejects_image_tokens_of_wrong_rows() -> None:
    table = small_table()
    with pytest.raises(ValueError, match="image_tokens must have shape"):
        LearnedTabularImputer(max_epochs=2).fit(table, CARDINALITIES, np.zeros((39, 1, 4)), np.ones(39, dtype=bool))


def test_transform_rejects_image_width_change() -> None:
    table = small_table()
    present = np.ones(40, dtype=bool)
    imputer = LearnedTabularImputer(max_epochs=2).fit(table, CARDINALITIES, np.zeros((40, 1, 4)), present)

    with pytest.raises(ValueError, match="width D=4"):
        imputer.transform(table, np.zeros((40, 1, 5)), present)


def test_fit_rejects_single_row() -> None:
    table = small_table()
    one_row = EncodedTable(table.categorical[:1], table.continuous[:1], table.missing_values[:1], COLUMNS)
    with pytest.raises(ValueError, match="at least 2 training rows"):
        LearnedTabularImputer().fit(one_row, CARDINALITIES)


@pytest.mark.parametrize(
    ("parameter", "value", "message"),
    [
        ("hidden", 0, "hidden must be a positive int"),
        ("max_epochs", 1.5, "max_epochs must be a positive int"),
        ("mask_probability", 0.0, "mask_probability must lie in"),
        ("image_drop_probability", 1.0, "image_drop_probability must be in"),
        ("validation_fraction", -0.1, "validation_fraction must be in"),
        ("learning_rate", -1.0, "learning_rate must be a non-negative number"),
    ],
)
def test_fit_rejects_invalid_parameter(parameter: str, value: float, message: str) -> None:
    imputer = LearnedTabularImputer(**{parameter: value})
    with pytest.raises(ValueError, match=message):
        imputer.fit(small_table(), CARDINALITIES)


def test_fit_rejects_dropout_of_wrong_type() -> None:
    with pytest.raises(TypeError, match="dropout must be a number"):
        LearnedTabularImputer(dropout="0.1").fit(small_table(), CARDINALITIES)


def test_hidden_rate_varies_per_row() -> None:
    torch.manual_seed(0)
    missing = torch.zeros(400, 50, dtype=torch.bool)

    hidden = _hidden_values(missing, (0.05, 0.95))
    row_rates = hidden.float().mean(dim=1)

    assert row_rates.min() < 0.2
    assert row_rates.max() > 0.8
    assert not bool((hidden & missing).any())


def test_fixed_hidden_rate() -> None:
    torch.manual_seed(0)

    hidden = _hidden_values(torch.zeros(400, 50, dtype=torch.bool), 0.25)

    assert abs(float(hidden.float().mean()) - 0.25) < 0.01


@pytest.mark.parametrize(
    "value, error, message",
    [
        ((0.9, 0.1), ValueError, "low <= high"),
        ("0.25", TypeError, "a number or a \\(low, high\\) pair"),
        ((0.1, 0.5, 0.9), TypeError, "a number or a \\(low, high\\) pair"),
    ],
)
def test_mask_probability_range_checked(value, error, message) -> None:
    with pytest.raises(error, match=message):
        LearnedTabularImputer(mask_probability=value).fit(small_table(), CARDINALITIES)
