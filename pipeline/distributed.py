"""Process-group helpers for runs started by ``torchrun`` (one process per GPU, or several on a CPU).

A run is distributed when ``torchrun`` set ``WORLD_SIZE`` above 1 in the environment. Then
:func:`init_from_environment` joins the process group with ``nccl`` when the process has a CUDA
device and ``gloo`` otherwise, and every other helper here works on that group. Without
``torchrun`` (or with one process) every helper acts as on a single process: rank 0 of a world of
one, reductions and gathers return their input, barriers return at once. So the same code runs
in both cases.

This module imports only torch, so every layer of the package may use it.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

T = TypeVar("T")

# torchrun sets these for every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """True when the environment describes a world of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device: str | torch.device = "cpu", timeout_minutes: float = 30.0) -> torch.device:
    """Join the process group described by torchrun's environment and return this process's device.

    Args:
        device: the device the job asked for. ``"cuda"`` becomes ``cuda:<LOCAL_RANK>``, so each
            process of a machine drives its own GPU; ``"cpu"`` stays the CPU.
        timeout_minutes: how long a collective operation may wait for the other processes
            before it fails (a crashed process then stops the others instead of hanging them).

    Returns:
        The device of this process. Outside torchrun it is ``device`` unchanged.

    Raises:
        ValueError: ``timeout_minutes`` is not a positive number.
        RuntimeError: ``WORLD_SIZE`` is above 1 but a torchrun variable is missing (the job was
            not started by torchrun); the message names the missing variables.
    """
    if isinstance(timeout_minutes, bool) or not isinstance(timeout_minutes, (int, float)) or not timeout_minutes > 0:
        raise ValueError(f"timeout_minutes must be a positive number of minutes, got {timeout_minutes!r}.")
    device = torch.device(device)
    if not launched_by_torchrun() or dist.is_initialized():
        return _local_device(device)

    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} are not set. Start "
            "distributed jobs with `torchrun --nproc_per_node=N -m monai.bundle run ...`, or unset "
            "WORLD_SIZE to run in one process."
        )
    device = _local_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    logger.info(
        "Joined the process group: rank %d of %d, backend %s, device %s.", rank(), world_size(), backend, device
    )
    return device


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True when this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank, 0 outside a process group."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Processes in the group, 1 outside a process group."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0, which alone writes checkpoints, reports and MLflow runs."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process reaches this point."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place and return it (unchanged on one process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(value: T) -> list[T]:
    """Collect one picklable value from every process, in rank order, on every process.

    The values travel through pickle between the processes of this job only; never pass
    anything read from an untrusted file.
    """
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def shard(items: Sequence[T]) -> list[T]:
    """Return this process's share of ``items``: every ``world_size``-th item starting at ``rank``.

    Slicing with step ``world_size`` from each rank puts every item in exactly one share, and the
    share sizes differ by at most one.
    """
    return list(items[rank() :: world_size()])


def _local_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device
