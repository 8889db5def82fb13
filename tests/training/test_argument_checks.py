"""Tests for the argument checks shared by the training entry points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.training.argument_checks import check_batch_source, check_device, check_int, check_real


@pytest.fixture
def one_cuda_device(monkeypatch):
    """Make torch report one available CUDA device, so the device checks can run without one."""
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: torch.device("cuda"))
    monkeypatch.setattr(torch.accelerator, "device_count", lambda: 1)


@pytest.mark.parametrize(("value", "expected"), [(1, 1.0), (0.25, 0.25), (np.float32(0.5), 0.5)])
def test_check_real_returns_float(value, expected):
    result = check_real("rate", value, minimum=0.0, strict=True)

    assert result == expected
    assert type(result) is float


def test_check_real_allows_minimum_unless_strict():
    assert check_real("weight", 0, minimum=0.0, strict=False) == 0.0
    with pytest.raises(ValueError, match="rate must be a finite number > 0.0, got 0"):
        check_real("rate", 0, minimum=0.0, strict=True)


def test_check_int_accepts_numpy_integer():
    result = check_int("epochs", np.int64(4), minimum=1)

    assert result == 4
    assert type(result) is int


def test_check_int_rejects_bool():
    with pytest.raises(TypeError, match="epochs must be an int, got bool"):
        check_int("epochs", True, minimum=0)


def test_check_device_accepts_cpu_and_meta():
    assert check_device("device", "cpu") == torch.device("cpu")
    assert check_device("device", torch.device("meta")) == torch.device("meta")


def test_check_device_accepts_existing_accelerator(one_cuda_device):
    assert check_device("device", "cuda:0") == torch.device("cuda:0")


def test_check_device_rejects_missing_index(one_cuda_device):
    with pytest.raises(ValueError, match=r"device is 'cuda:1', but this machine has 1 cuda device\(s\)"):
        check_device("device", "cuda:1")


def test_check_device_rejects_other_accelerator(one_cuda_device):
    with pytest.raises(ValueError, match="device is 'mps', but mps is not available .*only a cuda accelerator"):
        check_device("device", "mps")


def test_check_batch_source_rejects_mapping():
    with pytest.raises(TypeError, match=r"batches is a single batch \(a mapping with keys \['label', 'present'\]\)"):
        check_batch_source("batches", {"present": torch.ones(1, 1, dtype=torch.bool), "label": torch.zeros(1)})
