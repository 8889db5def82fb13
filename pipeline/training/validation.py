"""Validation pooled over modality subsets: one prediction per sample and available subset.

Shape letters: ``B`` batch, ``M`` modalities, ``N`` tokens, ``D`` width, ``K`` classes,
``S`` subsets, ``V`` pooled predictions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import torch
from sklearn.metrics import roc_auc_score

from pipeline.networks.batch import unpack_batch
from pipeline.networks.fusion import MaskedFusionTransformer
from pipeline.networks.subsets import all_subsets
from pipeline.training.argument_checks import check_batch_source, check_device
from pipeline.training.subset_sampling import available_subsets

logger = logging.getLogger(__name__)


class PooledValidation(NamedTuple):
    """Validation metric over the pooled predictions.

    ``metric_name`` is ``"roc_auc"`` (binary tasks whose pooled labels contain both classes) or
    ``"accuracy"``. ``num_predictions`` is ``V``, the number of sample-subset pairs.
    """

    metric: float
    metric_name: str
    num_predictions: int


@torch.no_grad()
def evaluate_pooled(
    network: MaskedFusionTransformer,
    batches: Iterable[Mapping[str, Any]],
    *,
    present_key: str = "present",
    label_key: str = "label",
    device: str | torch.device | None = None,
    warn_on_fallback: bool = True,
) -> PooledValidation:
    """Predict every sample under every subset of its present modalities and score all predictions together.

    Each batch is encoded once with its presence mask, so placeholders of absent modalities never
    reach an encoder. Fusion and classification then run once per subset ``s`` on the
    samples that have every modality of ``s``, so a batch costs one encoder pass and up to
    ``S = 2**M - 1`` fusion passes of at most ``B`` rows. That count grows quickly beyond the five
    modalities of the published settings.

    Every sample-subset pair is one prediction with the sample's label. The predictions are
    pooled, not averaged per sample, so the metric rewards a model that is good under every
    subset. The metric is the ROC AUC of the class-1 probability for binary tasks and the
    accuracy of the arg-max class otherwise. A binary task whose pooled labels contain only one
    class has no AUC, so accuracy is returned instead (with a warning if ``warn_on_fallback``).
    The network runs in eval mode and gets its previous mode back.

    The batches are moved to the device of the network's parameters. If ``device`` is given, it
    must name that device.

    Raises:
        TypeError: ``batches`` is a single batch, or ``network`` is not a
            :class:`MaskedFusionTransformer`.
        ValueError: the batches contain no sample with a present modality, or ``device`` differs
            from the device of the network's parameters.
    """
    if not isinstance(network, MaskedFusionTransformer):
        raise TypeError(f"network must be a MaskedFusionTransformer, got {type(network).__name__}.")
    check_batch_source("batches", batches)
    device = _network_device(network, device)

    was_training = network.training
    network.eval()
    try:
        probabilities, labels = _pooled_probabilities(network, batches, present_key, label_key, device)
    finally:
        network.train(was_training)

    if labels.numel() == 0:
        raise ValueError(
            "the validation batches contain no sample with a present modality, so there is nothing to score."
        )
    return _score(probabilities, labels, warn_on_fallback)


def _pooled_probabilities(
    network: MaskedFusionTransformer,
    batches: Iterable[Mapping[str, Any]],
    present_key: str,
    label_key: str,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return class probabilities ``(V, K)`` and labels ``(V,)`` of all sample-subset pairs, on the CPU."""
    subset_masks = all_subsets(network.num_modalities).to(device)  # (S, M)
    probabilities: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []

    for batch in batches:
        inputs, present_mask, batch_labels = unpack_batch(
            batch, network, present_key=present_key, label_key=label_key, device=device
        )
        available = available_subsets(present_mask).cpu()  # (B, S)
        batch_labels = batch_labels.cpu()
        tokens = network.encode(inputs, present_mask.to(device))  # (B, N, D)

        for subset_index, subset_mask in enumerate(subset_masks):
            samples = available[:, subset_index].nonzero().flatten()
            if samples.numel() == 0:
                continue
            masks = subset_mask.expand(samples.numel(), -1)  # (rows, M)
            logits, _ = network.classify(network.fuse(tokens[samples.to(device)], masks))
            probabilities.append(logits.float().softmax(dim=-1).cpu())
            labels.append(batch_labels[samples])

    if not labels:
        return torch.empty(0, network.num_classes), torch.empty(0, dtype=torch.long)
    return torch.cat(probabilities), torch.cat(labels)


def _network_device(network: MaskedFusionTransformer, device: str | torch.device | None) -> torch.device:
    """Return the device of the network's parameters after checking that ``device`` agrees with it."""
    network_device = next(network.parameters()).device
    if device is None:
        return network_device

    requested = check_device("device", device)
    # A device without an index, such as "cuda", matches every index of its type.
    same_index = requested.index is None or requested.index == network_device.index
    if requested.type != network_device.type or not same_index:
        raise ValueError(
            f"device is {str(requested)!r}, but the network's parameters are on {str(network_device)!r}. Move the "
            f"network with network.to({str(requested)!r}), or pass device=None to use the network's device."
        )
    return network_device


def _score(probabilities: torch.Tensor, labels: torch.Tensor, warn_on_fallback: bool) -> PooledValidation:
    num_predictions = int(labels.numel())
    if probabilities.shape[1] == 2:
        if labels.unique().numel() == 2:
            auc = roc_auc_score(labels.numpy(), probabilities[:, 1].numpy())
            return PooledValidation(float(auc), "roc_auc", num_predictions)
        if warn_on_fallback:
            logger.warning(
                "validation labels contain only class %d, so ROC AUC is undefined. Using accuracy instead.",
                int(labels[0]),
            )

    accuracy = (probabilities.argmax(dim=1) == labels).double().mean()
    return PooledValidation(float(accuracy), "accuracy", num_predictions)
