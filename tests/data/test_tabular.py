"""Tests for the tabular encoder: levels, standardisation, unseen and all-missing columns, saving."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.exceptions import NotFittedError

from pipeline.data.tabular import EncodedTable, TabularEncoder
from pipeline.networks import TabularTokenizer

LOGGER = "pipeline.data.tabular"


def make_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return training rows and test rows. The smoker level ``current`` occurs only in the test rows."""
    train = pd.DataFrame(
        {
            "smoker": ["never", "former", "never", None],
            "sex": ["Female", "Male", "Male", "Female"],
            "age": [40.0, 50.0, np.nan, 70.0],
            "chol": [200.0, 240.0, 220.0, 180.0],
        }
    )
    test = pd.DataFrame(
        {
            "smoker": ["current", "former", "never", "current"],
            "sex": ["Male", None, "Female", "Male"],
            "age": [60.0, 40.0, np.nan, 50.0],
            "chol": [210.0, np.nan, 230.0, 200.0],
        }
    )
    return train, test


def make_encoder(**levels: list[str]) -> TabularEncoder:
    return TabularEncoder(["smoker", "sex"], ["age", "chol"], categorical_levels=levels or None)


def test_fit_uses_only_given_rows():
    train, test = make_frames()
    encoder = make_encoder().fit(train)

    encoded = encoder.transform(test)

    assert encoder.levels_["smoker"] == ["former", "never"]
    assert encoded.categorical[:, 0].tolist() == [-1, 0, 1, -1]
    assert encoded.missing_values[:, 0].tolist() == [True, False, False, True]
    assert encoder.unseen_counts_ == {"smoker": {"current": 2}}


def test_observed_levels_are_sorted():
    frame = pd.DataFrame({"code": [10, 2, "b", "A", 2.0], "x": [0.0, 1.0, 2.0, 3.0, 4.0]})
    encoder = TabularEncoder(["code"], ["x"]).fit(frame)

    assert encoder.levels_["code"] == ["2", "10", "A", "b"]


def test_given_levels_keep_their_order():
    train, test = make_frames()
    encoder = make_encoder(sex=["Male", "Female"]).fit(train)

    encoded = encoder.transform(test)

    assert encoder.levels_["sex"] == ["Male", "Female"]
    assert encoded.categorical[:, 1].tolist() == [0, -1, 1, 0]


def test_case_and_whitespace_are_ignored():
    train = pd.DataFrame({"smoker": ["never", "former", "current"], "x": [1.0, 2.0, 3.0]})
    test = pd.DataFrame({"smoker": ["Current ", " NEVER", "former"], "x": [1.0, 2.0, 3.0]})
    encoder = TabularEncoder(["smoker"], ["x"]).fit(train)

    encoded = encoder.transform(test)

    assert encoded.categorical[:, 0].tolist() == [0, 2, 1]
    assert encoder.unseen_counts_ == {}


def test_integer_codes_match_their_float_form():
    train = pd.DataFrame({"cp": [0, 1, 2, 1], "x": [1.0, 2.0, 3.0, 4.0]})
    test = pd.DataFrame({"cp": [1.0, 3.0, np.nan, 0.0], "x": [1.0, 2.0, 3.0, 4.0]})
    encoder = TabularEncoder(["cp"], ["x"]).fit(train)

    encoded = encoder.transform(test)

    assert encoder.levels_["cp"] == ["0", "1", "2"]
    assert encoded.categorical[:, 0].tolist() == [1, -1, -1, 0]
    assert encoder.unseen_counts_ == {"cp": {"3": 1}}


def test_standardisation_matches_numpy():
    train, test = make_frames()
    encoder = make_encoder().fit(train)

    encoded = encoder.transform(test)

    age = train["age"].to_numpy()
    chol = train["chol"].to_numpy()
    expected = np.stack(
        [
            (test["age"].to_numpy() - np.nanmean(age)) / np.nanstd(age),
            (test["chol"].to_numpy() - chol.mean()) / chol.std(),
        ],
        axis=1,
    )
    np.testing.assert_allclose(encoded.continuous, expected.astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(encoder.mean_, [np.nanmean(age), chol.mean()])
    assert encoded.missing_values[:, 2:].tolist() == [[False, False], [False, True], [True, False], [False, False]]


def test_standardisation_hand_worked():
    frame = pd.DataFrame({"x": [1.0, 3.0, np.nan]})
    encoder = TabularEncoder([], ["x"]).fit(frame)

    encoded = encoder.transform(pd.DataFrame({"x": [2.0, 4.0, None]}))

    assert encoder.mean_.tolist() == [2.0]
    assert encoder.scale_.tolist() == [1.0]
    np.testing.assert_array_equal(encoded.continuous[:, 0], np.array([0.0, 2.0, np.nan], dtype=np.float32))


def test_zero_spread_column_scales_by_one(caplog):
    frame = pd.DataFrame({"flag": [0.1, 0.1, 0.1, np.nan], "x": [1.0, 2.0, 3.0, 4.0]})
    encoder = TabularEncoder([], ["flag", "x"])

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        encoder.fit(frame)
    encoded = encoder.transform(pd.DataFrame({"flag": [0.1, 0.6], "x": [1.0, 2.0]}))

    assert encoder.scale_[0] == 1.0
    np.testing.assert_allclose(encoded.continuous[:, 0], [0.0, 0.5], atol=1e-7)
    assert "'flag' has zero spread" in caplog.text


def test_unseen_levels_warn_once_per_column(caplog):
    train = pd.DataFrame({"smoker": ["never", "former", "current"], "sex": ["F", "M", "M"], "x": [1.0, 2.0, 3.0]})
    test = pd.DataFrame(
        {
            "smoker": ["unknown", "3", "unknown", "never", "unknown"],
            "sex": ["F", "X", "M", "F", "M"],
            "x": [1.0, 2.0, 3.0, 4.0, 5.0],
        }
    )
    encoder = TabularEncoder(["smoker", "sex"], ["x"]).fit(train)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        encoded = encoder.transform(test)

    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2
    assert "'smoker'" in warnings[0]
    assert "'3': 1, 'unknown': 3" in warnings[0]
    assert "'sex'" in warnings[1]
    assert "'X': 1" in warnings[1]
    assert encoder.unseen_counts_ == {"smoker": {"3": 1, "unknown": 3}, "sex": {"X": 1}}
    assert encoded.categorical[:, 0].tolist() == [-1, -1, -1, 2, -1]


def test_unseen_counts_reset_each_transform():
    train, test = make_frames()
    encoder = make_encoder().fit(train)

    encoder.transform(test)
    encoder.transform(train)

    assert encoder.unseen_counts_ == {}


def test_all_missing_columns(caplog):
    train = pd.DataFrame(
        {"smoker": [None, None, None], "sex": ["F", "M", "M"], "hba1c": [np.nan] * 3, "age": [1.0, 2.0, 3.0]}
    )
    test = pd.DataFrame({"smoker": ["never", None], "sex": ["M", "F"], "hba1c": [5.5, 6.1], "age": [2.0, 2.0]})
    encoder = TabularEncoder(["smoker", "sex"], ["hba1c", "age"])

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        encoder.fit(train)
    fit_log = caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        encoded = encoder.transform(test)

    assert encoder.all_missing_columns_ == ["smoker", "hba1c"]
    assert "['smoker', 'hba1c']" in fit_log
    assert encoder.levels_["smoker"] == []
    assert np.isnan(encoder.mean_[0])
    assert np.isnan(encoder.scale_[0])
    assert encoded.categorical.shape == (2, 2)
    assert encoded.continuous.shape == (2, 2)
    assert encoded.missing_values.tolist() == [[True, False, True, False], [True, False, True, False]]
    assert encoded.categorical[:, 0].tolist() == [-1, -1]
    assert np.isnan(encoded.continuous[:, 0]).all()
    assert "'hba1c' was missing in every training row" in caplog.text
    assert encoder.cardinalities == (1, 2)


def test_all_missing_column_feeds_tokenizer():
    train = pd.DataFrame({"smoker": [None, None], "age": [1.0, 3.0]})
    encoder = TabularEncoder(["smoker"], ["age"]).fit(train)
    tokenizer = TabularTokenizer(categorical_cardinalities=encoder.cardinalities, num_continuous=1, dim=8, heads=2)

    tokens = tokenizer(**encoder.transform(pd.DataFrame({"smoker": ["never"], "age": [2.0]})).to_tensors())

    assert tokens.shape == (1, 2, 8)
    assert torch.isfinite(tokens).all()


def test_to_tensors_dtypes_and_shapes():
    train, test = make_frames()
    encoder = make_encoder().fit(train)

    tensors = encoder.transform(test).to_tensors()

    assert set(tensors) == {"categorical", "continuous", "missing_values"}
    assert tensors["categorical"].dtype == torch.int64
    assert tensors["continuous"].dtype == torch.float32
    assert tensors["missing_values"].dtype == torch.bool
    assert tuple(tensors["categorical"].shape) == (4, 2)
    assert tuple(tensors["continuous"].shape) == (4, 2)
    assert tuple(tensors["missing_values"].shape) == (4, 4)


def test_tokenizer_accepts_encoded_rows():
    train, test = make_frames()
    encoder = make_encoder().fit(train)
    tokenizer = TabularTokenizer(categorical_cardinalities=encoder.cardinalities, num_continuous=2, dim=8, heads=2)

    tokens = tokenizer(**encoder.transform(test).to_tensors())

    assert encoder.cardinalities == (2, 2)
    assert tokens.shape == (4, 4, 8)


def test_encoded_columns_list_categorical_first():
    train, test = make_frames()

    encoded = make_encoder().fit(train).transform(test)

    assert isinstance(encoded, EncodedTable)
    assert encoded.columns == ("smoker", "sex", "age", "chol")


def test_round_trip_gives_identical_outputs():
    train, test = make_frames()
    train["hba1c"] = np.nan
    test["hba1c"] = [1.0, 2.0, 3.0, 4.0]
    encoder = TabularEncoder(["smoker", "sex"], ["age", "chol", "hba1c"], {"sex": ["Male", "Female"]}).fit(train)

    saved = json.loads(json.dumps(encoder.to_dict(), allow_nan=False))
    restored = TabularEncoder.from_dict(saved)
    expected = encoder.transform(test)
    actual = restored.transform(test)

    assert restored.get_params() == encoder.get_params()
    assert restored.cardinalities == encoder.cardinalities
    assert restored.all_missing_columns_ == ["hba1c"]
    np.testing.assert_array_equal(actual.categorical, expected.categorical)
    np.testing.assert_array_equal(actual.continuous, expected.continuous)
    np.testing.assert_array_equal(actual.missing_values, expected.missing_values)


def test_from_dict_rejects_other_format():
    with pytest.raises(ValueError, match="format"):
        TabularEncoder.from_dict({"format": "something else", "version": 1})


def test_from_dict_rejects_wrong_statistics_length():
    train, _ = make_frames()
    saved = make_encoder().fit(train).to_dict()
    saved["mean"] = saved["mean"][:1]

    with pytest.raises(ValueError, match="saved mean has length 1, expected 2"):
        TabularEncoder.from_dict(saved)


def test_inverse_transform_restores_units():
    train, test = make_frames()
    encoder = make_encoder().fit(train)

    restored = encoder.inverse_transform(encoder.transform(test).continuous)

    expected = test[["age", "chol"]].to_numpy()
    np.testing.assert_allclose(restored, expected, rtol=1e-5)
    assert np.isnan(restored[2, 0])


def test_inverse_transform_rejects_wrong_width():
    train, _ = make_frames()
    encoder = make_encoder().fit(train)

    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        encoder.inverse_transform(np.zeros((3, 3)))


def test_transform_before_fit_raises():
    train, _ = make_frames()

    with pytest.raises(NotFittedError):
        make_encoder().transform(train)


def test_missing_column_raises():
    train, _ = make_frames()

    with pytest.raises(ValueError, match=r"no columns \['chol'\]"):
        make_encoder().fit(train.drop(columns="chol"))


def test_non_numeric_continuous_value_raises():
    frame = pd.DataFrame({"x": ["1.5", "12,5"]}, index=["a", "b"])

    with pytest.raises(ValueError, match="'12,5' in row 'b'"):
        TabularEncoder([], ["x"]).fit(frame)


def test_infinite_continuous_value_raises():
    frame = pd.DataFrame({"x": [1.0, np.inf]})

    with pytest.raises(ValueError, match="infinite"):
        TabularEncoder([], ["x"]).fit(frame)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (([], []), "at least one"),
        ((["a"], ["a"]), "both categorical and continuous"),
        ((["a", "a"], []), "more than once"),
        ((["a"], [], {"b": ["x"]}), "not in categorical_columns"),
        ((["a"], [], {"a": []}), "non-empty list"),
        ((["a"], [], {"a": ["Yes", "yes "]}), "equal once case"),
    ],
)
def test_invalid_parameters_raise(arguments, message):
    frame = pd.DataFrame({"a": ["x"], "b": ["y"]})

    with pytest.raises(ValueError, match=message):
        TabularEncoder(*arguments).fit(frame)


def test_column_list_must_not_be_string():
    with pytest.raises(TypeError, match="sequence of column names"):
        TabularEncoder("sex", []).fit(pd.DataFrame({"sex": ["F"]}))
