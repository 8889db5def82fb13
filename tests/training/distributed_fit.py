"""One SubsetTrainer.fit per process under torchrun, on each process's half of every global batch.

``test_distributed_training.py`` starts this script with
``torchrun --standalone --nproc_per_node=2 tests/training/distributed_fit.py OUTPUT`` and compares
what each rank writes to ``OUTPUT/rank<r>.pt`` with one process trained on the global batches.

The setting makes both runs compute the same mean gradient and the same class means. Every
sample is drawn under all ``S = 3`` subsets of its two modalities, so the random draws change
only the order of rows. The network has no dropout and no BatchNorm. Both halves of every global
batch have the same number of rows, so the average of the processes' mean gradients is the mean
gradient of the global batch.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from pipeline import distributed
from pipeline.training.trainer import SubsetTrainer
from tests.conftest import build_network, make_batches

PROCESSES = 2
TRAINER_SETTINGS = {
    "subsets_per_batch": 3,
    "learning_rate": 1e-2,
    "max_epochs": 3,
    "patience": 3,
    "prototype_warmup_epochs": 1,
    "selection_start_epoch": 2,
    "seed": 5,
}


def global_batches() -> list[dict[str, Any]]:
    """Four global batches of 16 samples each."""
    return make_batches(64, seed=1, batch_size=16)


def validation_batches() -> list[dict[str, Any]]:
    return make_batches(48, seed=2)


def rank_share(batches: list[dict[str, Any]], rank: int, world_size: int) -> list[dict[str, Any]]:
    """Rows ``[rank * b, (rank + 1) * b)`` of every batch, with ``b`` the batch size over ``world_size``."""
    shares = []
    for batch in batches:
        size = len(batch["label"]) // world_size
        rows = slice(rank * size, (rank + 1) * size)
        shares.append({key: value[rows] for key, value in batch.items()})
    return shares


def main(output: Path) -> None:
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    distributed.init_from_environment("cpu")
    rank, world_size = distributed.rank(), distributed.world_size()
    if world_size != PROCESSES:
        raise RuntimeError(f"run this script with torchrun --nproc_per_node={PROCESSES}, got {world_size} processes.")

    trainer = SubsetTrainer(build_network(seed=0), **TRAINER_SETTINGS)
    history = trainer.fit(rank_share(global_batches(), rank, world_size), validation_batches())
    torch.save(
        {
            "prototypes": trainer.prototypes,
            "state_dict": trainer.network.state_dict(),
            "history": dataclasses.asdict(history),
        },
        output / f"rank{rank}.pt",
    )
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
