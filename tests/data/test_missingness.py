"""Tests for the seeded missingness simulation and the mask CSV files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.data.missingness import (
    mask_filename,
    masked_fraction,
    read_mask,
    simulate_modality_missingness,
    simulate_tabular_missingness,
    write_mask,
)


def subject_ids(count: int) -> list[str]:
    return [f"sub-{index:03d}" for index in range(count)]


def mask_values(frame: pd.DataFrame) -> np.ndarray:
    """Return the 0/1 columns after ``subject_id`` as a bool array."""
    return frame.iloc[:, 1:].to_numpy().astype(bool)


def random_flags(shape: tuple[int, int], probability: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) < probability


# Modality missingness


def test_modality_mask_layout():
    available = np.array([[True, True], [True, False]])

    mask = simulate_modality_missingness(["a", "b"], ["cine", "clinical"], available, eta=0.5, seed=0)

    assert list(mask.columns) == ["subject_id", "cine", "clinical"]
    assert mask["subject_id"].tolist() == ["a", "b"]
    assert all(mask[column].dtype == np.int64 for column in ["cine", "clinical"])


def test_modality_mask_keeps_one_modality():
    available = random_flags((300, 3), 0.6, seed=1)
    available[:5] = False

    mask = mask_values(simulate_modality_missingness(subject_ids(300), ["a", "b", "c"], available, eta=0.9, seed=0))

    remaining = available & ~mask
    has_any = available.any(axis=1)
    assert remaining[has_any].any(axis=1).all()
    assert not (mask & ~available).any()
    assert not mask[:5].any()


def test_modality_mask_eta_one_keeps_exactly_one():
    available = random_flags((100, 4), 0.5, seed=2)

    mask = mask_values(simulate_modality_missingness(subject_ids(100), list("abcd"), available, eta=1.0, seed=3))

    remaining = available & ~mask
    has_any = available.any(axis=1)
    assert (remaining.sum(axis=1)[has_any] == 1).all()
    assert (remaining.sum(axis=1)[~has_any] == 0).all()


def test_modality_mask_eta_zero_masks_nothing():
    available = random_flags((50, 3), 0.7, seed=4)

    mask = mask_values(simulate_modality_missingness(subject_ids(50), list("abc"), available, eta=0.0, seed=0))

    assert not mask.any()


def test_modality_mask_is_seeded():
    available = random_flags((200, 3), 0.8, seed=5)
    ids = subject_ids(200)

    first = simulate_modality_missingness(ids, list("abc"), available, eta=0.4, seed=7)
    second = simulate_modality_missingness(ids, list("abc"), available, eta=0.4, seed=7)
    other = simulate_modality_missingness(ids, list("abc"), available, eta=0.4, seed=8)

    pd.testing.assert_frame_equal(first, second)
    assert not first.equals(other)


@pytest.mark.parametrize("num_modalities", [2, 8])
def test_modality_rate_matches_expectation(num_modalities):
    # With k available modalities a subject loses k * eta - eta ** k of them on average, because
    # one modality comes back when all k were removed.
    eta = 0.4
    available = np.ones((20000, num_modalities), dtype=bool)
    names = [f"m{index}" for index in range(num_modalities)]

    mask = simulate_modality_missingness(subject_ids(20000), names, available, eta=eta, seed=0)

    expected = (num_modalities * eta - eta**num_modalities) / num_modalities
    assert masked_fraction(mask_values(mask), available) == pytest.approx(expected, abs=0.01)


def test_modality_rate_near_eta_many_modalities():
    available = np.ones((20000, 8), dtype=bool)

    mask = simulate_modality_missingness(subject_ids(20000), list("abcdefgh"), available, eta=0.4, seed=1)

    assert masked_fraction(mask_values(mask), available) == pytest.approx(0.4, abs=0.01)


# Tabular missingness


def test_value_mode_exact_cell_count():
    observed = np.ones((5, 4), dtype=bool)
    observed[0, 0] = observed[2, 3] = observed[4, 1] = False  # 17 observed cells

    mask = mask_values(simulate_tabular_missingness(subject_ids(5), list("abcd"), observed, 0.3, "value", seed=0))

    assert mask.sum() == 5  # int(17 * 0.3) = int(5.1)
    assert not (mask & ~observed).any()


@pytest.mark.parametrize("gamma", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_value_mode_count_on_larger_table(gamma):
    observed = random_flags((40, 7), 0.8, seed=6)

    mask = mask_values(simulate_tabular_missingness(subject_ids(40), list("abcdefg"), observed, gamma, "value", 2))

    assert mask.sum() == int(observed.sum() * gamma)
    assert not (mask & ~observed).any()


def test_value_mode_count_survives_float_rounding():
    # 100 * 0.29 is 28.999999999999996 in binary floating point.
    observed = np.ones((10, 10), dtype=bool)

    mask = mask_values(simulate_tabular_missingness(subject_ids(10), list("abcdefghij"), observed, 0.29, "value", 0))

    assert mask.sum() == 29


def test_feature_mode_exact_column_count():
    observed = random_flags((30, 10), 0.9, seed=7)
    observed[0] = True  # every column has an observed cell
    names = [f"c{index}" for index in range(10)]

    mask = mask_values(simulate_tabular_missingness(subject_ids(30), names, observed, 0.3, "feature", seed=1))

    masked_columns = np.flatnonzero(mask.any(axis=0))
    assert len(masked_columns) == 3  # int(10 * 0.3)
    np.testing.assert_array_equal(mask[:, masked_columns], observed[:, masked_columns])
    assert not (mask & ~observed).any()


@pytest.mark.parametrize("mode", ["value", "feature"])
def test_gamma_zero_masks_nothing(mode):
    observed = random_flags((20, 5), 0.7, seed=8)

    mask = mask_values(simulate_tabular_missingness(subject_ids(20), list("abcde"), observed, 0.0, mode, seed=0))

    assert not mask.any()


@pytest.mark.parametrize("mode", ["value", "feature"])
def test_gamma_one_masks_every_observed_cell(mode):
    observed = random_flags((20, 5), 0.7, seed=9)

    mask = mask_values(simulate_tabular_missingness(subject_ids(20), list("abcde"), observed, 1.0, mode, seed=0))

    np.testing.assert_array_equal(mask, observed)


@pytest.mark.parametrize("mode", ["value", "feature"])
def test_tabular_mask_is_seeded(mode):
    observed = random_flags((50, 6), 0.8, seed=10)
    ids = subject_ids(50)

    first = simulate_tabular_missingness(ids, list("abcdef"), observed, 0.5, mode, seed=3)
    second = simulate_tabular_missingness(ids, list("abcdef"), observed, 0.5, mode, seed=3)
    other = simulate_tabular_missingness(ids, list("abcdef"), observed, 0.5, mode, seed=4)

    pd.testing.assert_frame_equal(first, second)
    assert not first.equals(other)


def test_masked_fraction_hand_worked():
    masked = np.array([[True, False], [False, False]])
    eligible = np.array([[True, True], [False, True]])

    assert masked_fraction(masked, eligible) == pytest.approx(1 / 3)
    assert masked_fraction(np.zeros((1, 1), bool), np.zeros((1, 1), bool)) == 0.0


# File names


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (("modality", 0.4, 0), "modality_eta0.40_seed0.csv"),
        (("modality", 1, 12), "modality_eta1.00_seed12.csv"),
        (("tabular", 0.1, 0, "value"), "tabular_value_gamma0.10_seed0.csv"),
        (("tabular", 0.7, 3, "feature"), "tabular_feature_gamma0.70_seed3.csv"),
    ],
)
def test_mask_filename(arguments, expected):
    assert mask_filename(*arguments) == expected


@pytest.mark.parametrize(
    "arguments, message",
    [
        (("image", 0.4, 0), "kind must be one of"),
        (("modality", 0.125, 0), "more than two decimals"),
        (("modality", 0.4, 0, "value"), "take no mode"),
        (("tabular", 0.4, 0), "mode must be one of"),
        (("tabular", 0.4, 0, "cells"), "mode must be one of"),
        (("tabular", 1.5, 0, "value"), r"gamma must be in \[0, 1\]"),
        (("modality", 0.4, -1), "non-negative int"),
    ],
)
def test_mask_filename_rejects_invalid_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        mask_filename(*arguments)


# CSV files


def test_written_mask_is_hand_checkable(tmp_path):
    mask = pd.DataFrame({"subject_id": ["a", "b"], "cine": [1, 0], "clinical": [0, 0]})

    path = write_mask(mask, tmp_path / "missingness" / "modality_eta0.40_seed0.csv")

    assert path.read_bytes() == b"subject_id,cine,clinical\na,1,0\nb,0,0\n"


def test_written_mask_is_byte_identical(tmp_path):
    observed = random_flags((60, 5), 0.8, seed=11)
    ids = subject_ids(60)

    first = write_mask(simulate_tabular_missingness(ids, list("abcde"), observed, 0.3, "value", 0), tmp_path / "1.csv")
    second = write_mask(simulate_tabular_missingness(ids, list("abcde"), observed, 0.3, "value", 0), tmp_path / "2.csv")

    assert first.read_bytes() == second.read_bytes()


def test_read_mask_round_trip_reorders(tmp_path):
    available = random_flags((20, 3), 0.8, seed=12)
    ids = subject_ids(20)
    mask = simulate_modality_missingness(ids, ["cine", "lge", "clinical"], available, eta=0.5, seed=0)
    path = write_mask(mask, tmp_path / "mask.csv")

    read_back = read_mask(path, ids[::-1], ["clinical", "cine", "lge"])

    assert read_back["subject_id"].tolist() == ids[::-1]
    assert list(read_back.columns) == ["subject_id", "clinical", "cine", "lge"]
    expected = mask.iloc[::-1][["subject_id", "clinical", "cine", "lge"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(read_back, expected)


def test_read_mask_keeps_leading_zero_ids(tmp_path):
    path = tmp_path / "mask.csv"
    path.write_text("subject_id,a\n007,1\n010,0\n", encoding="utf-8")

    read_back = read_mask(path, ["007", "010"], ["a"])

    assert read_back["subject_id"].tolist() == ["007", "010"]
    assert read_back["a"].tolist() == [1, 0]


def test_read_mask_rejects_other_subjects(tmp_path):
    path = tmp_path / "mask.csv"
    path.write_text("subject_id,a\ns1,0\ns2,1\ns9,0\n", encoding="utf-8")

    message = r"subject ids do not match.*missing from the file \['s3'\].*not in the cohort \['s9'\]"
    with pytest.raises(ValueError, match=message):
        read_mask(path, ["s1", "s2", "s3"], ["a"])


def test_read_mask_rejects_other_columns(tmp_path):
    path = tmp_path / "mask.csv"
    path.write_text("subject_id,a,b\ns1,0,1\n", encoding="utf-8")

    message = r"columns do not match.*missing from the file \['c'\].*not in the cohort \['b'\]"
    with pytest.raises(ValueError, match=message):
        read_mask(path, ["s1"], ["a", "c"])


def test_read_mask_rejects_duplicate_subjects(tmp_path):
    path = tmp_path / "mask.csv"
    path.write_text("subject_id,a\ns1,0\ns1,1\n", encoding="utf-8")

    with pytest.raises(ValueError, match=r"listed more than once \['s1'\]"):
        read_mask(path, ["s1"], ["a"])


def test_read_mask_rejects_invalid_value(tmp_path):
    path = tmp_path / "mask.csv"
    path.write_text("subject_id,a\ns1,0\ns2,2\n", encoding="utf-8")

    with pytest.raises(ValueError, match="column 'a' of subject 's2' is '2', expected 0 or 1"):
        read_mask(path, ["s1", "s2"], ["a"])


def test_read_mask_requires_subject_id_first(tmp_path):
    path = tmp_path / "mask.csv"
    path.write_text("a,subject_id\n0,s1\n", encoding="utf-8")

    with pytest.raises(ValueError, match="first column must be 'subject_id'"):
        read_mask(path, ["s1"], ["a"])


def test_write_mask_rejects_invalid_value(tmp_path):
    mask = pd.DataFrame({"subject_id": ["a", "b"], "cine": [1, 2]})

    with pytest.raises(ValueError, match="'cine' has the value 2 for subject 'b'"):
        write_mask(mask, tmp_path / "mask.csv")


def test_write_mask_requires_subject_id_first(tmp_path):
    mask = pd.DataFrame({"cine": [1], "subject_id": ["a"]})

    with pytest.raises(ValueError, match="first column must be 'subject_id'"):
        write_mask(mask, tmp_path / "mask.csv")


# Argument checks


@pytest.mark.parametrize("eta", [-0.1, 1.1, float("nan")])
def test_invalid_eta_raises(eta):
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
        simulate_modality_missingness(["a"], ["m"], np.ones((1, 1), bool), eta=eta, seed=0)


def test_eta_must_be_number():
    with pytest.raises(TypeError, match="eta must be a number"):
        simulate_modality_missingness(["a"], ["m"], np.ones((1, 1), bool), eta="0.4", seed=0)


@pytest.mark.parametrize("gamma", [-0.5, 2.0])
def test_invalid_gamma_raises(gamma):
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\]"):
        simulate_tabular_missingness(["a"], ["x"], np.ones((1, 1), bool), gamma, "value", seed=0)


def test_invalid_mode_raises():
    with pytest.raises(ValueError, match=r"mode must be one of \['value', 'feature'\], got 'cells'"):
        simulate_tabular_missingness(["a"], ["x"], np.ones((1, 1), bool), 0.5, "cells", seed=0)


def test_invalid_seed_raises():
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        simulate_tabular_missingness(["a"], ["x"], np.ones((1, 1), bool), 0.5, "value", seed=1.5)


def test_non_bool_flags_raise():
    with pytest.raises(TypeError, match="available must be a bool array"):
        simulate_modality_missingness(["a"], ["m"], np.ones((1, 1)), eta=0.4, seed=0)


def test_flag_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"observed must have shape \(2, 1\).*got \(1, 1\)"):
        simulate_tabular_missingness(["a", "b"], ["x"], np.ones((1, 1), bool), 0.5, "value", seed=0)


def test_duplicate_subject_ids_raise():
    with pytest.raises(ValueError, match=r"subject_ids must be unique, but \['a'\]"):
        simulate_modality_missingness(["a", "a"], ["m"], np.ones((2, 1), bool), eta=0.4, seed=0)


def test_subject_id_as_column_name_raises():
    with pytest.raises(ValueError, match="must not contain 'subject_id'"):
        simulate_tabular_missingness(["a"], ["subject_id"], np.ones((1, 1), bool), 0.5, "value", seed=0)
