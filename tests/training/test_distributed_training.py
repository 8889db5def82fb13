"""Training with two CPU processes under torchrun (gloo) against one process on the same global batches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.training.trainer import SubsetTrainer
from pipeline.workflows.training import _EpochShuffler
from tests.conftest import build_network
from tests.training.distributed_fit import PROCESSES, TRAINER_SETTINGS, global_batches, validation_batches
from tests.workflows.test_training_batches import preloaded

REPOSITORY = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    """Run distributed_fit.py with two processes and return what each rank wrote."""
    output = tmp_path_factory.mktemp("distributed_fit")
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [str(TORCHRUN), "--standalone", f"--nproc_per_node={PROCESSES}", "tests/training/distributed_fit.py", str(output)],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    return [torch.load(output / f"rank{rank}.pt", weights_only=True) for rank in range(PROCESSES)]


@pytest.fixture(scope="module")
def single_process() -> SubsetTrainer:
    trainer = SubsetTrainer(build_network(seed=0), **TRAINER_SETTINGS)
    trainer.history = trainer.fit(global_batches(), validation_batches())
    return trainer


def test_two_processes_give_single_process_prototypes(rank_results, single_process):
    torch.testing.assert_close(rank_results[0]["prototypes"], single_process.prototypes, rtol=0, atol=1e-5)


def test_two_processes_give_single_process_weights(rank_results, single_process):
    for name, tensor in single_process.network.state_dict().items():
        torch.testing.assert_close(rank_results[0]["state_dict"][name], tensor, rtol=0, atol=1e-5, msg=name)


def test_two_processes_give_single_process_history(rank_results, single_process):
    history = rank_results[0]["history"]

    assert history["val_metric"] == pytest.approx(single_process.history.val_metric, abs=1e-6)
    assert history["train_loss"] == pytest.approx(single_process.history.train_loss, abs=1e-6)
    assert history["best_epoch"] == single_process.history.best_epoch


def test_ranks_end_with_identical_networks(rank_results):
    first, second = rank_results

    assert torch.equal(first["prototypes"], second["prototypes"])
    for name, tensor in first["state_dict"].items():
        assert torch.equal(tensor, second["state_dict"][name]), name
    assert first["history"] == second["history"]


@pytest.mark.parametrize(
    ("count", "images", "batch_size", "world_size"),
    [(552, 179, 32, 2), (100, 5, 16, 2), (64, 64, 16, 2), (90, 30, 8, 4), (40, 2, 8, 2)],
)
def test_shuffler_shares_are_equal_and_disjoint(count, images, batch_size, world_size):
    shares = [
        _EpochShuffler(preloaded(count, images, batch_size), seed=0, rank=rank, world_size=world_size)
        for rank in range(world_size)
    ]

    for _ in range(3):
        batches = [[batch["row"].tolist() for batch in share] for share in shares]
        assert len({len(rank_batches) for rank_batches in batches}) == 1
        rows = [row for rank_batches in batches for batch in rank_batches for row in batch]
        assert len(rows) == len(set(rows))
        for rank_batches in batches:
            for batch in rank_batches:
                assert sum(row < images for row in batch) != 1


def test_shuffler_shares_cover_every_subject():
    shares = [_EpochShuffler(preloaded(100, 30, 16), seed=0, rank=rank, world_size=2) for rank in range(2)]

    rows = [row for share in shares for batch in share for row in batch["row"].tolist()]

    assert sorted(rows) == list(range(100))


def test_shuffler_rejects_rank_outside_world():
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size\) = \[0, 2\), got 2"):
        _EpochShuffler(preloaded(32, 8, 16), seed=0, rank=2, world_size=2)
