import pytest
import torch

from pipeline.networks.subsets import (
    all_subsets,
    describe_subset,
    mask_to_subset_index,
    subset_index_to_mask,
)


def test_all_subsets_order_for_two_modalities():
    expected = torch.tensor([[True, False], [False, True], [True, True]])

    assert torch.equal(all_subsets(2), expected)


def test_mask_and_index_round_trip():
    subsets = all_subsets(5)
    indices = mask_to_subset_index(subsets)

    assert torch.equal(indices, torch.arange(31))
    assert torch.equal(subset_index_to_mask(indices, 5), subsets)


def test_empty_mask_gives_minus_one():
    assert mask_to_subset_index(torch.zeros(1, 3, dtype=torch.bool)).item() == -1


def test_non_bool_mask_rejected():
    with pytest.raises(TypeError, match="int64"):
        mask_to_subset_index(torch.ones(2, 3, dtype=torch.long))


def test_too_many_modalities_rejected():
    with pytest.raises(ValueError, match="got 17"):
        all_subsets(17)


def test_describe_subset_names_modalities():
    assert describe_subset(torch.tensor([True, False, True]), ["image", "table", "ecg"]) == "{image, ecg}"
