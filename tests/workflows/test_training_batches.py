"""Regrouping of preloaded training batches so that no batch gives BatchNorm a single image."""

from __future__ import annotations

import pytest
import torch

from pipeline.workflows.training import _EpochShuffler


def preloaded(count: int, images: int, batch_size: int) -> list[dict]:
    present = torch.zeros(count, 2, dtype=torch.bool)
    present[:images, 0] = True
    present[:, 1] = True
    rows = torch.arange(count)
    return [
        {
            "label": rows[start : start + batch_size] % 2,
            "present": present[start : start + batch_size],
            "row": rows[start : start + batch_size],
            "subject_id": [f"s{row}" for row in range(start, min(start + batch_size, count))],
        }
        for start in range(0, count, batch_size)
    ]


@pytest.mark.parametrize(("count", "images", "batch_size"), [(552, 179, 32), (100, 5, 16), (40, 2, 8), (33, 33, 16)])
def test_no_batch_holds_one_image(count, images, batch_size):
    shuffler = _EpochShuffler(preloaded(count, images, batch_size), seed=0)

    for _ in range(3):
        batches = list(shuffler)
        image_counts = [int(batch["present"][:, 0].sum()) for batch in batches]
        assert 1 not in image_counts
        assert sum(image_counts) == images


def test_shuffler_keeps_each_subject_once():
    shuffler = _EpochShuffler(preloaded(100, 30, 16), seed=0)

    batches = list(shuffler)
    rows = torch.cat([batch["row"] for batch in batches])

    assert sorted(rows.tolist()) == list(range(100))
    for batch in batches:
        assert batch["subject_id"] == [f"s{row}" for row in batch["row"].tolist()]
        assert torch.equal(batch["label"], batch["row"] % 2)


def test_epochs_differ_and_seed_repeats():
    first = [batch["row"].tolist() for batch in _EpochShuffler(preloaded(64, 20, 16), seed=3)]
    again = [batch["row"].tolist() for batch in _EpochShuffler(preloaded(64, 20, 16), seed=3)]
    shuffler = _EpochShuffler(preloaded(64, 20, 16), seed=3)
    list(shuffler)
    second_epoch = [batch["row"].tolist() for batch in shuffler]

    assert first == again
    assert first != second_epoch
