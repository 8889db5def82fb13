"""The compared ways of classifying subjects with recovered modalities: discard, impute_all, dymo.

Shape letters: ``n`` subjects, ``M`` modalities, ``N`` tokens, ``D`` token width, ``K`` classes.

Every method takes tokens that are already encoded and recovered:

- ``tokens``: ``(n, N, D)`` with every modality recovered (imputed values, generated tokens);
- ``observed_tokens``: ``(n, N, D)`` with each modality as observed (a partly observed table
  encoded with its missing values masked);
- ``start_mask``: ``(n, M)`` the modalities with something observed;
- ``candidate_mask``: ``(n, M)`` the modalities with something recovered.

The network must be in eval mode (dropout off). A subject with nothing observed (an empty
``start_mask`` row) has no evidence to select against. ``discard`` scores it with the training class prior; ``impute_all`` and every ``dymo``
variant classify it from all its recovered modalities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.networks import MaskedFusionTransformer
from pipeline.selection import DyMoSelector

METHODS = ("discard", "impute_all", "dymo_cosine", "dymo_euclidean")
ABLATION_METHODS = ("positive_at_once", "greedy_no_calibration")


@dataclass(frozen=True)
class MethodOutput:
    """Predictions of one method for ``n`` subjects.

    Attributes:
        probabilities: ``(n, K)`` class probabilities.
        used_mask: ``(n, M)`` the modalities each subject was classified with.
        admitted_mask: ``(n, M)`` the recovered modalities that were used (a subset of the candidates).
    """

    probabilities: torch.Tensor
    used_mask: torch.Tensor
    admitted_mask: torch.Tensor


def classify_discard(
    network: MaskedFusionTransformer, observed_tokens: torch.Tensor, start_mask: torch.Tensor, prior: torch.Tensor
) -> MethodOutput:
    """Classify from observed data only; subjects with nothing observed get ``prior`` ``(K,)``."""
    _check_evaluation_mode(network)
    has_data = start_mask.any(dim=1)
    probabilities = prior.to(observed_tokens.dtype).expand(len(start_mask), -1).clone()
    if bool(has_data.any()):
        with torch.no_grad():
            logits, _ = network.classify(network.fuse(observed_tokens[has_data], start_mask[has_data]))
        probabilities[has_data] = logits.softmax(dim=-1)
    return MethodOutput(probabilities, start_mask.clone(), torch.zeros_like(start_mask))


def classify_impute_all(
    network: MaskedFusionTransformer, tokens: torch.Tensor, start_mask: torch.Tensor, candidate_mask: torch.Tensor
) -> MethodOutput:
    """Classify from every modality, observed or recovered."""
    _check_evaluation_mode(network)
    used = start_mask | candidate_mask
    with torch.no_grad():
        logits, _ = network.classify(network.fuse(tokens, used))
    return MethodOutput(logits.softmax(dim=-1), used, candidate_mask.clone())


def classify_dymo(
    selector: DyMoSelector,
    tokens: torch.Tensor,
    observed_tokens: torch.Tensor,
    start_mask: torch.Tensor,
    candidate_mask: torch.Tensor,
    chunk_size: int = 256,
) -> MethodOutput:
    """Greedy DyMo selection per subject; subjects with nothing observed use all recovered modalities.

    Subjects are selected in chunks of ``chunk_size``. Each step fuses one row per subject and
    candidate, and for a whole cohort those tensors outgrow the CPU caches. Without chunks, 2944
    subjects took 0.40 ms each against 0.31 ms for 184, mostly in GELU (``benchmarks/main_job.py``
    with torch.profiler). Selection is per subject, so chunking changes no result.
    """
    if len(tokens) > chunk_size:
        parts = [
            classify_dymo(
                selector, tokens[start : start + chunk_size], observed_tokens[start : start + chunk_size],
                start_mask[start : start + chunk_size], candidate_mask[start : start + chunk_size], chunk_size,
            )
            for start in range(0, len(tokens), chunk_size)
        ]
        return MethodOutput(*(torch.cat([getattr(part, name) for part in parts]) for name in ("probabilities", "used_mask", "admitted_mask")))

    empty = ~start_mask.any(dim=1)
    start = start_mask.clone()
    candidates = candidate_mask.clone()
    start[empty] = candidate_mask[empty]
    candidates[empty] = False
    observed_tokens = torch.where(empty[:, None, None], tokens, observed_tokens)

    result = selector.select_tokens(tokens, start, candidates, observed_tokens)
    admitted = result.admitted_mask.clone()
    admitted[empty] = candidate_mask[empty]
    return MethodOutput(result.logits.softmax(dim=-1), result.present_mask, admitted)


def _check_evaluation_mode(network: MaskedFusionTransformer) -> None:
    if network.training:
        raise ValueError("the network is in training mode, so dropout would make predictions random; call network.eval() first.")


def classify_positive_at_once(
    selector: DyMoSelector,
    tokens: torch.Tensor,
    start_mask: torch.Tensor,
    candidate_mask: torch.Tensor,
) -> MethodOutput:
    """Ablation of the greedy search: admit, in one step, every candidate whose first reward is positive.

    The rewards are those of DyMo's first step (each candidate added alone to the start mask,
    with the selector's calibration). Subjects with nothing observed use all recovered modalities.
    Every modality is either observed or a candidate, never both (whole modalities are missing).
    """
    network = selector.network
    _check_evaluation_mode(network)
    if bool((start_mask & candidate_mask).any()):
        raise ValueError(
            "classify_positive_at_once takes whole missing modalities: a modality cannot be both observed and a "
            "candidate. Use classify_dymo for partly observed modalities."
        )
    empty = ~start_mask.any(dim=1)
    start = torch.where(empty[:, None], candidate_mask, start_mask)
    candidates = candidate_mask & ~empty[:, None]

    result = selector.select_tokens(tokens, start, candidates)
    if result.steps:
        positive = torch.nan_to_num(result.steps[0].rewards, nan=0.0) > 0  # (n, M)
    else:
        positive = torch.zeros_like(candidates)
    admitted = positive & candidates
    with torch.no_grad():
        logits, _ = network.classify(network.fuse(tokens, start | admitted))
    admitted = torch.where(empty[:, None], candidate_mask, admitted)
    return MethodOutput(logits.softmax(dim=-1), start | admitted, admitted)
