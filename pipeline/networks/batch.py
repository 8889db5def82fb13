"""Batch format shared by training, validation and prototype fitting, and the one function that reads it.

A batch is a mapping with one entry per modality name (a tensor, or for a tabular modality a
mapping with ``categorical``, ``continuous`` and ``missing_values``), a presence mask
``(B, M)`` bool (``True`` = the subject has the modality) and class labels ``(B,)``. A modality
the subject lacks still needs a placeholder input of the right shape so that the batch collates.
Training, validation and prototype fitting pass the presence mask to
:meth:`~pipeline.networks.fusion.MaskedFusionTransformer.encode`, which never runs an encoder on
a placeholder, so any value works (zeros are usual). A ``torch.utils.data.DataLoader`` with the
default collate function produces such batches from per-subject dicts.

Shape letters: ``B`` batch, ``M`` modalities.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from pipeline.networks.fusion import MaskedFusionTransformer, ModalityInput


def unpack_batch(
    batch: Mapping[str, Any],
    network: MaskedFusionTransformer,
    *,
    present_key: str = "present",
    label_key: str = "label",
    device: str | torch.device = "cpu",
) -> tuple[dict[str, ModalityInput], torch.Tensor, torch.Tensor]:
    """Check one batch against ``network`` and split it into inputs, presence mask and labels.

    Returns:
        The modality inputs moved to ``device`` (keyed by modality name, in the network's
        order), the presence mask ``(B, M)`` bool and the labels ``(B,)`` long. The mask and the
        labels stay on the device they arrived on, usually the CPU, because subset sampling
        draws from a CPU generator.
    """
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"a batch must be a mapping with the modality names, {present_key!r} and {label_key!r} as keys, "
            f"got {type(batch).__name__}."
        )
    required_keys = [*network.modality_names, present_key, label_key]
    missing = [key for key in required_keys if key not in batch]
    if missing:
        raise ValueError(f"batch is missing the keys {missing}. It has the keys {sorted(batch)}.")

    present_mask = batch[present_key]
    if not isinstance(present_mask, torch.Tensor) or present_mask.dtype != torch.bool:
        kind = present_mask.dtype if isinstance(present_mask, torch.Tensor) else type(present_mask).__name__
        raise TypeError(f"batch[{present_key!r}] must be a bool tensor, got {kind}.")
    if present_mask.dim() != 2 or present_mask.shape[1] != network.num_modalities:
        raise ValueError(
            f"batch[{present_key!r}] must have shape (B, {network.num_modalities}) for modalities "
            f"{network.modality_names}, got {tuple(present_mask.shape)}."
        )

    labels = _check_labels(batch[label_key], label_key, present_mask.shape[0], network.num_classes)
    inputs = {name: _to_device(batch[name], device) for name in network.modality_names}
    return inputs, present_mask, labels


def check_reiterable(batches: Iterable[Any], name: str) -> None:
    """Raise ``TypeError`` if ``batches`` is a one-shot iterator, which a second epoch would find empty."""
    try:
        iterator = iter(batches)
    except TypeError as error:
        raise TypeError(f"{name} must be iterable, got {type(batches).__name__}.") from error
    if iterator is batches:
        raise TypeError(
            f"{name} is a one-shot iterator ({type(batches).__name__}). Pass a list or a DataLoader, "
            "which can be iterated once per epoch."
        )


def _check_labels(labels: Any, label_key: str, batch_size: int, num_classes: int) -> torch.Tensor:
    is_integer_tensor = (
        isinstance(labels, torch.Tensor)
        and not labels.dtype.is_floating_point
        and not labels.dtype.is_complex
        and labels.dtype != torch.bool
    )
    if not is_integer_tensor:
        kind = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise TypeError(f"batch[{label_key!r}] must be an integer tensor of class indices, got {kind}.")
    if tuple(labels.shape) != (batch_size,):
        raise ValueError(
            f"batch[{label_key!r}] has shape {tuple(labels.shape)}, but the presence mask has {batch_size} rows; "
            "both need one row per subject."
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"batch[{label_key!r}] must contain class indices in [0, {num_classes}), got values from "
            f"{int(labels.min())} to {int(labels.max())}."
        )
    return labels.long()


def _to_device(value: Any, device: str | torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {key: _to_device(item, device) for key, item in value.items()}
    return value
