"""Tests for per-sample subset sampling."""

from __future__ import annotations

import pytest
import torch

from pipeline.networks.subsets import mask_to_subset_index
from pipeline.training.subset_sampling import available_subsets, sample_subsets


def random_present(num_samples: int, num_modalities: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(num_samples, num_modalities, generator=generator) < 0.6


def test_available_subsets_hand_case():
    present = torch.tensor([[True, False], [True, True], [False, False]])

    available = available_subsets(present)

    # Subset order for M = 2: {0}, {1}, {0, 1}.
    expected = torch.tensor([[True, False, False], [True, True, True], [False, False, False]])
    assert torch.equal(available, expected)


def test_draws_stay_within_present_modalities():
    present = random_present(256, 4, seed=1)
    generator = torch.Generator().manual_seed(0)

    masks, valid = sample_subsets(present, 3, generator)

    assert masks.shape == (3, 256, 4)
    assert valid.shape == (3, 256)
    assert not (masks & ~present[None]).any()
    assert masks[valid].any(dim=-1).all()


def test_draws_are_distinct_per_sample():
    present = random_present(256, 4, seed=2)
    generator = torch.Generator().manual_seed(0)

    masks, valid = sample_subsets(present, 5, generator)

    subset_index = mask_to_subset_index(masks)  # (A, B)
    for sample in range(present.shape[0]):
        drawn = subset_index[valid[:, sample], sample].tolist()
        assert len(set(drawn)) == len(drawn), f"sample {sample} drew {drawn}"


def test_valid_draws_count_available_subsets():
    present = random_present(256, 3, seed=3)
    generator = torch.Generator().manual_seed(0)

    masks, valid = sample_subsets(present, 4, generator)

    expected = (2 ** present.sum(dim=1) - 1).clamp(max=4)
    assert torch.equal(valid.sum(dim=0), expected)
    assert not masks[~valid].any()
    # Valid draws come first, so a sample's invalid draws are its last ones.
    assert torch.equal(valid, torch.arange(4)[:, None] < expected[None, :])


def test_more_draws_than_subsets_are_invalid():
    present = torch.ones(8, 2, dtype=torch.bool)

    masks, valid = sample_subsets(present, 5, torch.Generator().manual_seed(0))

    assert masks.shape == (5, 8, 2)
    assert valid[:3].all()
    assert not valid[3:].any()
    assert not masks[3:].any()


@pytest.mark.parametrize("num_draws", [1, 3])
def test_complete_data_draws_are_uniform(num_draws):
    num_samples = 7000
    present = torch.ones(num_samples, 3, dtype=torch.bool)

    masks, valid = sample_subsets(present, num_draws, torch.Generator().manual_seed(0))

    assert valid.all()
    counts = torch.bincount(mask_to_subset_index(masks).flatten(), minlength=7)
    # Each of the 7 subsets is drawn by a sample with probability num_draws / 7. The standard
    # deviation of a count is at most sqrt(7000 / 4) = 42, so 200 is more than 4 of them.
    expected = num_samples * num_draws / 7
    assert (counts - expected).abs().max() < 200, counts.tolist()


def test_same_seed_repeats_draws():
    present = random_present(64, 3, seed=4)

    first = sample_subsets(present, 2, torch.Generator().manual_seed(7))
    second = sample_subsets(present, 2, torch.Generator().manual_seed(7))

    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])


def test_non_bool_present_mask_is_rejected():
    with pytest.raises(TypeError, match="bool"):
        sample_subsets(torch.ones(4, 2), 1)


def test_one_dimensional_present_mask_is_rejected():
    with pytest.raises(ValueError, match=r"\(B, M\)"):
        sample_subsets(torch.ones(4, dtype=torch.bool), 1)


def test_zero_draws_are_rejected():
    with pytest.raises(ValueError, match="num_draws"):
        sample_subsets(torch.ones(4, 2, dtype=torch.bool), 0)


def test_non_int_draws_are_rejected():
    with pytest.raises(TypeError, match="num_draws"):
        sample_subsets(torch.ones(4, 2, dtype=torch.bool), 1.5)
