"""Tests of the iterative imputer on small hand-made tables."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from pipeline.data.tabular import EncodedTable
from pipeline.imputation.iterative import IterativeTabularImputer


def encoded(categorical: np.ndarray, continuous: np.ndarray, names: tuple[str, ...] | None = None) -> EncodedTable:
    categorical = np.asarray(categorical, dtype=np.int64)
    continuous = np.asarray(continuous, dtype=np.float32)
    missing = np.concatenate([categorical < 0, np.isnan(continuous)], axis=1)
    if names is None:
        names = tuple(f"cat{i}" for i in range(categorical.shape[1])) + tuple(
            f"num{i}" for i in range(continuous.shape[1])
        )
    return EncodedTable(categorical=categorical, continuous=continuous, missing_values=missing, columns=names)


def linked_table(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return a table whose level follows the sign of num0, and num1 = 2 * num0."""
    rng = np.random.default_rng(seed)
    num0 = rng.normal(size=rows)
    categorical = (num0 > 0).astype(np.int64)[:, None]
    continuous = np.stack([num0, 2.0 * num0], axis=1)
    return categorical, continuous


def small_imputer(seed: int = 0) -> IterativeTabularImputer:
    return IterativeTabularImputer(max_iter=3, n_estimators=20, random_state=seed)


def test_iterative_recovers_known_values() -> None:
    categorical, continuous = linked_table(60, seed=0)
    test_categorical = np.array([[-1], [-1], [1], [0]])
    test_continuous = np.array([[1.5, 3.0], [-1.5, -3.0], [0.5, np.nan], [-0.5, np.nan]])

    imputer = small_imputer().fit(encoded(categorical, continuous), [2])
    result = imputer.transform(encoded(test_categorical, test_continuous))

    assert result.categorical[:, 0].tolist() == [1, 0, 1, 0]
    assert result.continuous[2, 1] == pytest.approx(1.0, abs=0.1)
    assert result.continuous[3, 1] == pytest.approx(-1.0, abs=0.1)
    assert result.recovered.tolist() == [
        [True, False, False],
        [True, False, False],
        [False, False, True],
        [False, False, True],
    ]


def test_iterative_keeps_observed_values() -> None:
    categorical, continuous = linked_table(40, seed=1)
    table = encoded(categorical, continuous)

    result = small_imputer().fit_transform(table, [2])

    assert np.array_equal(result.categorical, table.categorical)
    assert np.array_equal(result.continuous, table.continuous)
    assert not result.recovered.any()


def test_iterative_same_seed_same_values() -> None:
    rng = np.random.default_rng(2)
    categorical = rng.integers(0, 3, size=(50, 2))
    continuous = rng.normal(size=(50, 2))
    categorical[rng.random((50, 2)) < 0.3] = -1
    continuous[rng.random((50, 2)) < 0.3] = np.nan
    table = encoded(categorical, continuous)

    first = small_imputer(seed=7).fit_transform(table, [3, 3])
    second = small_imputer(seed=7).fit_transform(table, [3, 3])

    assert np.array_equal(first.categorical, second.categorical)
    assert np.array_equal(first.continuous, second.continuous)


def test_iterative_categorical_output_valid_level() -> None:
    rng = np.random.default_rng(3)
    categorical = rng.integers(0, 4, size=(80, 3))
    categorical[:, 2] = rng.integers(1, 3, size=80)  # levels 0 and 3 of cat2 never occur in training
    continuous = rng.normal(size=(80, 1))
    categorical[rng.random((80, 3)) < 0.5] = -1
    table = encoded(categorical, continuous)

    result = small_imputer().fit_transform(table, [4, 4, 4])

    assert result.categorical.min() >= 0
    assert result.categorical.max() <= 3
    assert set(result.categorical[table.missing_values[:, 2], 2].tolist()) <= {1, 2}


def test_iterative_clips_to_training_range() -> None:
    categorical, continuous = linked_table(60, seed=4)
    imputer = small_imputer().fit(encoded(categorical, continuous), [2])
    test_continuous = np.array([[50.0, np.nan]])

    result = imputer.transform(encoded(np.array([[1]]), test_continuous))

    assert result.continuous[0, 1] == pytest.approx(continuous[:, 1].max(), rel=1e-6)


def test_iterative_fit_ignores_rows_not_passed() -> None:
    categorical, continuous = linked_table(80, seed=5)
    train = encoded(categorical[:60], continuous[:60])
    test = encoded(np.full((20, 1), -1), continuous[60:])
    altered = encoded(np.full((20, 1), -1), continuous[60:] * -3.0)

    fitted = small_imputer().fit(train, [2])
    before = fitted.transform(test).categorical.copy()
    fitted.transform(altered)
    after = fitted.transform(test).categorical

    assert np.array_equal(before, after)
    assert fitted.initial_.means_ == pytest.approx(np.nanmean(continuous[:60], axis=0).astype(np.float32))


def test_iterative_constant_column_warns(caplog: pytest.LogCaptureFixture) -> None:
    categorical, continuous = linked_table(30, seed=6)
    categorical = np.concatenate([categorical, np.full((30, 1), 2)], axis=1)
    continuous = np.concatenate([continuous, np.full((30, 1), 0.5)], axis=1)

    with caplog.at_level(logging.WARNING):
        imputer = small_imputer().fit(encoded(categorical, continuous), [2, 3])
    result = imputer.transform(encoded(np.array([[0, -1]]), np.array([[0.1, 0.2, np.nan]])))

    assert "'cat1' is constant in training" in caplog.text
    assert "'num2' is constant in training" in caplog.text
    assert result.categorical[0, 1] == 2
    assert result.continuous[0, 2] == pytest.approx(0.5)


def test_iterative_all_missing_column_warns(caplog: pytest.LogCaptureFixture) -> None:
    categorical, continuous = linked_table(30, seed=8)
    continuous = np.concatenate([continuous, np.full((30, 1), np.nan)], axis=1)

    with caplog.at_level(logging.WARNING):
        result = small_imputer().fit_transform(encoded(categorical, continuous), [2])

    assert "'num2' has no observed value in training" in caplog.text
    assert np.all(result.continuous[:, 2] == 0.0)
    assert result.recovered[:, 3].all()


def test_iterative_unseen_level_warns(caplog: pytest.LogCaptureFixture) -> None:
    categorical, continuous = linked_table(30, seed=9)
    imputer = small_imputer().fit(encoded(categorical, continuous), [3])

    with caplog.at_level(logging.WARNING):
        result = imputer.transform(encoded(np.array([[2]]), np.array([[0.1, np.nan]])))

    assert "level indices [2] were never observed in training" in caplog.text
    assert result.categorical[0, 0] == 2


def test_iterative_rejects_invalid_max_iter() -> None:
    categorical, continuous = linked_table(10, seed=10)

    with pytest.raises(ValueError, match="max_iter must be a positive int"):
        IterativeTabularImputer(max_iter=0).fit(encoded(categorical, continuous), [2])


def test_iterative_transform_requires_fit() -> None:
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        IterativeTabularImputer().transform(encoded(np.zeros((1, 1)), np.zeros((1, 1))))


def noise_and_signal_table(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return a table whose cat0 is independent noise (levels 0/1 at 0.75/0.25) and num1 = 2 * num0."""
    rng = np.random.default_rng(seed)
    num0 = rng.normal(size=rows)
    categorical = (rng.random(rows) < 0.25).astype(np.int64)[:, None]
    continuous = np.stack([num0, 2.0 * num0], axis=1)
    return categorical, continuous


def calibrated_imputer(seed: int = 0, fraction: float = 0.3) -> IterativeTabularImputer:
    return IterativeTabularImputer(max_iter=3, n_estimators=20, random_state=seed, calibration_fraction=fraction)


def hide_at_random(categorical: np.ndarray, continuous: np.ndarray, rate: float, seed: int) -> EncodedTable:
    rng = np.random.default_rng(seed)
    categorical = np.where(rng.random(categorical.shape) < rate, -1, categorical)
    continuous = np.where(rng.random(continuous.shape) < rate, np.nan, continuous)
    return encoded(categorical, continuous)


def test_shrinkage_noise_column_low_weight() -> None:
    categorical, continuous = noise_and_signal_table(500, seed=11)

    imputer = calibrated_imputer().fit(encoded(categorical, continuous), [2])
    fitted_bins = imputer.calibration_cells_[0] >= imputer.min_calibration_cells

    # Below the weight at which the forest's level first wins, every weight gives the mode, so
    # the held-out accuracy is flat there and a bin of noise cells can land above 0 by chance.
    assert fitted_bins.any()
    assert imputer.shrinkage_[0, fitted_bins].min() == 0.0
    assert imputer.shrinkage_[0, fitted_bins].max() <= 0.7


def test_shrinkage_deterministic_column_near_one() -> None:
    categorical, continuous = noise_and_signal_table(500, seed=12)

    imputer = calibrated_imputer().fit(encoded(categorical, continuous), [2])

    # Bin 4 contains the cells whose two other columns are both observed, so num0 gives num1 exactly.
    assert imputer.calibration_cells_[2, 4] >= imputer.min_calibration_cells
    assert imputer.shrinkage_[2, 4] >= 0.9


def test_shrinkage_weights_nondecreasing() -> None:
    categorical, continuous = noise_and_signal_table(500, seed=13)

    imputer = calibrated_imputer().fit(encoded(categorical, continuous), [2])

    for column in imputer.order_:
        assert np.all(np.diff(imputer.shrinkage_[column]) >= 0), f"column {column}: {imputer.shrinkage_[column]}"


def test_shrinkage_noise_column_filled_with_mode() -> None:
    categorical, continuous = noise_and_signal_table(500, seed=14)
    test_categorical, test_continuous = noise_and_signal_table(200, seed=15)
    test_table = hide_at_random(test_categorical, test_continuous, rate=0.5, seed=16)

    result = calibrated_imputer().fit(encoded(categorical, continuous), [2]).transform(test_table)
    filled = result.categorical[test_table.missing_values[:, 0], 0]

    assert filled.size > 0
    assert np.mean(filled == 0) >= 0.95


def test_shrinkage_moves_values_toward_mean() -> None:
    categorical, continuous = noise_and_signal_table(500, seed=17)
    table = encoded(categorical, continuous)
    test_categorical, test_continuous = noise_and_signal_table(200, seed=18)
    test_table = hide_at_random(test_categorical, test_continuous, rate=0.6, seed=19)

    plain = calibrated_imputer(fraction=0.0).fit(table, [2])
    shrunk = calibrated_imputer(fraction=0.3).fit(table, [2])
    plain_values = plain.transform(test_table).continuous
    shrunk_values = shrunk.transform(test_table).continuous

    # The final models do not depend on the calibration, so the outputs differ only by the weights.
    mean = shrunk.initial_.means_
    observed = (~test_table.missing_values).sum(axis=1)
    bins = np.minimum((observed / 2 * shrunk.calibration_bins).astype(int), shrunk.calibration_bins - 1)
    for index in range(2):
        rows = test_table.missing_values[:, 1 + index]
        weights = shrunk.shrinkage_[1 + index, bins[rows]]
        expected = mean[index] + weights * (plain_values[rows, index] - mean[index])
        assert shrunk_values[rows, index] == pytest.approx(expected, abs=1e-5)


def test_calibration_fraction_zero_leaves_weights_one() -> None:
    categorical, continuous = noise_and_signal_table(300, seed=20)

    imputer = calibrated_imputer(fraction=0.0).fit(encoded(categorical, continuous), [2])

    assert np.all(imputer.shrinkage_ == 1.0)
    assert not imputer.calibration_cells_.any()


def test_calibrated_same_seed_same_values() -> None:
    categorical, continuous = noise_and_signal_table(300, seed=21)
    table = encoded(categorical, continuous)
    test_table = hide_at_random(categorical[:100], continuous[:100], rate=0.7, seed=22)

    first = calibrated_imputer(seed=3).fit(table, [2])
    second = calibrated_imputer(seed=3).fit(table, [2])

    assert np.array_equal(first.shrinkage_, second.shrinkage_)
    assert np.array_equal(first.transform(test_table).categorical, second.transform(test_table).categorical)
    assert np.array_equal(first.transform(test_table).continuous, second.transform(test_table).continuous)


def test_calibrated_save_load_same_values(tmp_path) -> None:
    from pipeline.imputation.persistence import load_imputer, save_imputer

    categorical, continuous = noise_and_signal_table(300, seed=23)
    test_table = hide_at_random(categorical[:100], continuous[:100], rate=0.7, seed=24)
    imputer = IterativeTabularImputer(max_iter=2, n_estimators=5, random_state=0, calibration_fraction=0.3)
    imputer.fit(encoded(categorical, continuous), [2])

    loaded = load_imputer(save_imputer(imputer, tmp_path / "calibrated.skops"))

    assert np.array_equal(loaded.shrinkage_, imputer.shrinkage_)
    assert np.array_equal(loaded.transform(test_table).categorical, imputer.transform(test_table).categorical)
    assert np.array_equal(loaded.transform(test_table).continuous, imputer.transform(test_table).continuous)


def test_calibration_too_few_rows_warns(caplog: pytest.LogCaptureFixture) -> None:
    categorical, continuous = linked_table(3, seed=25)

    with caplog.at_level(logging.WARNING):
        imputer = calibrated_imputer(fraction=0.1).fit(encoded(categorical, continuous), [2])

    assert "too few to hold out a calibration fraction" in caplog.text
    assert np.all(imputer.shrinkage_ == 1.0)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, True])
def test_iterative_rejects_invalid_calibration_fraction(fraction: float) -> None:
    categorical, continuous = linked_table(10, seed=26)

    with pytest.raises(ValueError, match="calibration_fraction must be a number in"):
        IterativeTabularImputer(calibration_fraction=fraction).fit(encoded(categorical, continuous), [2])
