"""Random modality subsets for training, drawn per sample from the modalities it has.

Shape letters: ``B`` batch, ``M`` modalities, ``S = 2**M - 1`` non-empty subsets, ``A`` subsets
drawn per sample.
"""

from __future__ import annotations

import torch

from pipeline.networks.subsets import all_subsets, check_num_modalities


def available_subsets(present_mask: torch.Tensor) -> torch.Tensor:
    """Flag, for each sample, the non-empty subsets of the modalities it has.

    Args:
        present_mask: ``(B, M)`` bool, ``True`` where the sample has the modality.

    Returns:
        ``(B, S)`` bool in subset-index order (see :func:`pipeline.networks.subsets.all_subsets`),
        ``True`` where every modality of subset ``s`` is present for the sample.
    """
    _check_present_mask(present_mask)
    table = all_subsets(present_mask.shape[1]).to(present_mask.device)  # (S, M)
    uses_absent = table[None, :, :] & ~present_mask[:, None, :]  # (B, S, M)
    return ~uses_absent.any(dim=-1)


def sample_subsets(
    present_mask: torch.Tensor,
    num_draws: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``A`` distinct non-empty subsets per sample, uniformly without replacement.

    Each sample draws from the subsets of the modalities in its own row of ``present_mask``, so
    a draw never uses a modality the sample lacks. With complete data every sample draws
    uniformly from all ``S`` subsets. The published DyMo scheme instead draws one subset per
    batch and applies it to every sample, so each sample's subsets are also uniform there, but
    the samples of a batch are not independent.

    All samples are drawn at once: every subset gets a uniform random key, subsets that are not
    available get ``+inf``, and the ``A`` smallest keys of each row are the draws. Draws beyond
    the number of subsets a sample has are flagged invalid and get an all-``False`` mask.

    Args:
        present_mask: ``(B, M)`` bool, ``True`` where the sample has the modality.
        num_draws: subsets ``A`` to draw per sample.
        generator: source of the random keys. It must be on the device of ``present_mask``.
            ``None`` uses the global torch generator.

    Returns:
        ``masks`` ``(A, B, M)`` bool presence masks, and ``valid`` ``(A, B)`` bool, ``False``
        for a draw that the sample had too few subsets for.
    """
    if isinstance(num_draws, bool) or not isinstance(num_draws, int):
        raise TypeError(f"num_draws must be an int, got {type(num_draws).__name__}.")
    if num_draws < 1:
        raise ValueError(f"num_draws must be at least 1, got {num_draws}.")
    available = available_subsets(present_mask)  # (B, S)
    batch_size, num_subsets = available.shape

    keys = torch.rand(available.shape, generator=generator, device=available.device)
    keys = keys.masked_fill(~available, float("inf"))
    drawn = keys.argsort(dim=1)[:, : min(num_draws, num_subsets)]  # (B, min(A, S))
    valid = available.gather(1, drawn)

    table = all_subsets(present_mask.shape[1]).to(present_mask.device)  # (S, M)
    masks = table[drawn] & valid[..., None]  # (B, min(A, S), M)

    missing_draws = num_draws - drawn.shape[1]
    if missing_draws > 0:
        masks = torch.cat([masks, masks.new_zeros(batch_size, missing_draws, masks.shape[2])], dim=1)
        valid = torch.cat([valid, valid.new_zeros(batch_size, missing_draws)], dim=1)
    return masks.transpose(0, 1), valid.transpose(0, 1)


def _check_present_mask(present_mask: torch.Tensor) -> None:
    if not isinstance(present_mask, torch.Tensor):
        raise TypeError(f"present_mask must be a tensor, got {type(present_mask).__name__}.")
    if present_mask.dtype != torch.bool:
        raise TypeError(f"present_mask must be a bool tensor, got dtype {present_mask.dtype}.")
    if present_mask.dim() != 2:
        raise ValueError(f"present_mask must have shape (B, M), got {tuple(present_mask.shape)}.")
    check_num_modalities(present_mask.shape[1])
