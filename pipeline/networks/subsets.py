"""Modality subsets and the one conversion between a presence mask and a subset index.

A *presence mask* is a boolean tensor of shape ``(..., M)`` where ``True`` means the modality is
used. A *subset index* numbers the ``S = 2**M - 1`` non-empty subsets: subset ``s`` is the
modality set whose bits spell ``s + 1`` (bit ``j`` is modality ``j``). With ``M = 2`` the order is
``{0}``, ``{1}``, ``{0, 1}``. Every layer of the package converts through this module only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# 2**MAX_MODALITIES - 1 subsets are enumerated in memory; 16 keeps tables under 65536 rows.
MAX_MODALITIES = 16


def check_num_modalities(num_modalities: int) -> None:
    """Raise ``ValueError`` unless ``1 <= num_modalities <= MAX_MODALITIES``."""
    if not 1 <= num_modalities <= MAX_MODALITIES:
        raise ValueError(
            f"num_modalities must be between 1 and {MAX_MODALITIES}, got {num_modalities}."
        )


def all_subsets(num_modalities: int) -> torch.Tensor:
    """Return every non-empty subset as a presence mask of shape ``(S, M)``, in subset-index order."""
    check_num_modalities(num_modalities)
    codes = torch.arange(1, 2**num_modalities)
    bits = 2 ** torch.arange(num_modalities)
    return (codes[:, None] & bits[None, :]) != 0


def mask_to_subset_index(present_mask: torch.Tensor) -> torch.Tensor:
    """Convert presence masks ``(..., M)`` to subset indices ``(...)``; an empty mask gives ``-1``."""
    if present_mask.dtype != torch.bool:
        raise TypeError(f"present_mask must be a bool tensor, got dtype {present_mask.dtype}.")
    num_modalities = present_mask.shape[-1]
    check_num_modalities(num_modalities)

    bits = 2 ** torch.arange(num_modalities, device=present_mask.device)
    return (present_mask.long() * bits).sum(dim=-1) - 1


def subset_index_to_mask(subset_index: torch.Tensor, num_modalities: int) -> torch.Tensor:
    """Convert subset indices ``(...)`` to presence masks ``(..., M)``."""
    check_num_modalities(num_modalities)
    bits = 2 ** torch.arange(num_modalities, device=subset_index.device)
    return ((subset_index[..., None] + 1) & bits) != 0


def describe_subset(present_mask: torch.Tensor, modality_names: Sequence[str]) -> str:
    """Name the modalities of one presence mask ``(M,)``, e.g. ``'{image, table}'``."""
    names = [name for name, used in zip(modality_names, present_mask.tolist()) if used]
    return "{" + ", ".join(names) + "}"
