"""Argument checks of MissingTableSweep, which run before any cohort or model file is read."""

from __future__ import annotations

import pytest

from pipeline.evaluation.methods import METHODS
from pipeline.workflows.inference import MissingTableSweep


def make_sweep(tmp_path, **options) -> MissingTableSweep:
    """Build a sweep on paths that do not exist, because the constructor reads none of them."""
    return MissingTableSweep(
        tmp_path / "manifest.csv",
        tmp_path / "schema.yaml",
        tmp_path / "models",
        tmp_path / "output",
        tmp_path / "cache",
        **options,
    )


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"gammas": [0.1, 1.5]}, "gamma"),
        ({"gammas": [-0.1]}, "gamma"),
        ({"gammas": [float("nan")]}, "gamma"),
        ({"gammas": "0.5"}, "gammas"),
        ({"gammas": []}, "gammas"),
        ({"gammas": ["0.5"]}, "gamma"),
        ({"gammas": [True]}, "gamma"),
        ({"methods": ["discard", "dymo_cosine_v2"]}, "methods"),
        ({"methods": []}, "methods"),
        ({"table_imputer": "mean"}, "table_imputer"),
        ({"mask_mode": "cells"}, "mask_mode"),
        ({"subject_limit": 1}, "subject_limit"),
        ({"subject_limit": 0}, "subject_limit"),
        ({"on_bad_subject": "ignore"}, "on_bad_subject"),
        ({"split": "holdout"}, "split"),
        ({"n_bootstrap": 0}, "n_bootstrap"),
        ({"n_bootstrap": 10.5}, "n_bootstrap"),
        ({"batch_size": 0}, "batch_size"),
        ({"calibration": "softmax"}, "calibration"),
    ],
)
def test_sweep_rejects_invalid_option(tmp_path, options, named):
    with pytest.raises(ValueError) as raised:
        make_sweep(tmp_path, **options)

    assert named in str(raised.value)


def test_sweep_message_names_bad_value(tmp_path):
    with pytest.raises(ValueError) as raised:
        make_sweep(tmp_path, methods=["discard", "dymo_cosine_v2"])

    assert "dymo_cosine_v2" in str(raised.value)
    assert "dymo_euclidean" in str(raised.value)


def test_sweep_accepts_valid_options(tmp_path):
    sweep = make_sweep(
        tmp_path,
        gammas=[0, 0.5, 0.5, 1],
        methods=["dymo_cosine", "discard", "dymo_cosine"],
        table_imputer="iterative",
        mask_mode="feature",
        subject_limit=2,
    )

    assert sweep.gammas == (0.0, 0.5, 1.0)
    assert sweep.methods == ["dymo_cosine", "discard"]
    assert sweep.table_imputer == "iterative"
    assert sweep.mask_mode == "feature"
    assert sweep.subject_limit == 2


def test_sweep_defaults_run_every_method(tmp_path):
    sweep = make_sweep(tmp_path)

    assert sweep.methods == list(METHODS)
    assert sweep.subject_limit is None
    assert sweep.gammas[0] == 0.0


def test_sweep_rejects_three_decimal_gamma(tmp_path):
    with pytest.raises(ValueError, match="gamma"):
        make_sweep(tmp_path, gammas=[0.125])


def test_digit_training_rejects_torchrun(tmp_path, monkeypatch):
    from pipeline.workflows.image_modalities import ImageModalitiesTraining

    monkeypatch.setenv("WORLD_SIZE", "2")
    training = ImageModalitiesTraining(tmp_path / "manifest.csv", tmp_path / "schema.yaml", tmp_path / "models", tmp_path / "cache")

    with pytest.raises(RuntimeError, match="runs in one process"):
        training.run()
    assert not (tmp_path / "models").exists()
