"""Checks of number, device and batch-source arguments at the public entry points of the training layer."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch

# Device types whose availability can be checked through torch.accelerator. Other types
# (xla, privateuseone, ...) are passed on unchecked, because their backends register outside torch.
CHECKED_DEVICE_TYPES: tuple[str, ...] = ("cuda", "mps", "xpu")


def check_real(name: str, value: Any, *, minimum: float, strict: bool) -> float:
    """Return ``value`` as a float if it is a finite real number of at least ``minimum``.

    ``strict=True`` excludes ``minimum`` itself. A bool is rejected even though Python treats it
    as an int, because ``True`` passed as a rate or weight is always a mistake.

    Raises:
        TypeError: ``value`` is not an int or float (numpy scalars count), for example a str.
        ValueError: ``value`` is NaN, infinite or not above ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = ""
        if isinstance(value, str):
            hint = " Convert values read from text, such as a configuration file, with float()."
        raise TypeError(f"{name} must be an int or float, got {type(value).__name__} {value!r}.{hint}")

    number = float(value)
    below = number <= minimum if strict else number < minimum
    if not math.isfinite(number) or below:
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}.")
    return number


def check_int(name: str, value: Any, *, minimum: int) -> int:
    """Return ``value`` as an int if it is an integer (not a bool) of at least ``minimum``.

    Raises:
        TypeError: ``value`` is not an integer, for example a float or a str.
        ValueError: ``value`` is below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


def check_device(name: str, device: Any) -> torch.device:
    """Return ``device`` as a :class:`torch.device` after checking that this machine has it.

    Raises:
        TypeError: ``device`` is neither a str nor a :class:`torch.device`.
        ValueError: ``device`` is not a device name, or it names a CUDA, MPS or XPU device that
            this machine does not have.
    """
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"{name} must be a str such as 'cpu' or 'cuda:0', or a torch.device, got {type(device).__name__}."
        )
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"{name} must name a torch device such as 'cpu' or 'cuda:0', got {device!r}.") from error

    if resolved.type not in CHECKED_DEVICE_TYPES:
        return resolved
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    if accelerator is None or accelerator.type != resolved.type:
        found = "no accelerator" if accelerator is None else f"only a {accelerator.type} accelerator"
        raise ValueError(
            f"{name} is {str(resolved)!r}, but {resolved.type} is not available on this machine ({found} was "
            f"found). Pass {name}='cpu' or a device this machine has."
        )
    count = torch.accelerator.device_count()
    if resolved.index is not None and resolved.index >= count:
        raise ValueError(
            f"{name} is {str(resolved)!r}, but this machine has {count} {resolved.type} device(s), numbered from 0."
        )
    return resolved


def check_batch_source(name: str, batches: Any) -> None:
    """Raise ``TypeError`` for one batch (a mapping) in place of a collection, ``ValueError`` for an empty one.

    Emptiness is checked only for collections that have a length (lists, DataLoaders).
    """
    if isinstance(batches, Mapping):
        raise TypeError(
            f"{name} is a single batch (a mapping with keys {sorted(map(str, batches))}). Pass a list of "
            "batches or a DataLoader."
        )
    if hasattr(batches, "__len__") and len(batches) == 0:
        raise ValueError(f"{name} is empty; pass at least one batch.")
