"""Greedy DyMo selection with the loop structure of the published implementation, as a baseline.

``docs/engine.md`` describes the authors' implementation (Du, Luo, O'Regan, Qin, ICLR 2026,
arXiv 2601.22853): every reward evaluation runs the full network, encoders included, over the
whole batch, and the intra-class similarity (ICS) is computed with per-sample Python loops. Here,
in each greedy step and for every modality that is still a candidate of some active sample, the
network runs once under the current masks and once under the current masks plus that modality.
ICS and calibration are then computed sample by sample in Python, and one more full pass gives
the logits of the final masks. That is up to ``2 * M * T + 1`` full passes for ``T`` steps, where
:class:`~pipeline.selection.DyMoSelector` encodes once and only repeats the fusion stage.

This module follows that structure with code of its own, and applies the same rule as the
selector: negative rewards drop a candidate for good, zero rewards follow ``zero_reward``, a
sample stops when its best reward is ``<= 0``, and ties go to the lowest modality index. It
serves to time the published structure and to check that the selector selects the same
modalities. It shares no code with :mod:`pipeline.selection`.

Shape letters: ``B`` batch, ``M`` modalities, ``K`` classes, ``P`` embedding width, ``S``
subsets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.networks import MaskedFusionTransformer
from pipeline.selection import SubsetPrototypes


@dataclass
class PublishedLoopResult:
    """Outcome of :func:`published_loop_select`.

    Attributes:
        logits: ``(B, K)`` logits under each sample's final mask.
        present_mask: ``(B, M)`` final masks.
        admitted_mask: ``(B, M)`` recovered modalities that were admitted.
        steps: greedy steps taken.
        full_passes: full network passes run.
    """

    logits: torch.Tensor
    present_mask: torch.Tensor
    admitted_mask: torch.Tensor
    steps: int
    full_passes: int


def full_pass(
    network: MaskedFusionTransformer, inputs: Mapping[str, Any], present_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run every encoder on every row, then fuse under ``present_mask`` ``(B, M)``; return logits and embedding.

    Encoding without a mask runs each encoder on the whole batch, recovered modalities included,
    as the published code does.
    """
    return network.classify(network.fuse(network.encode(inputs), present_mask))


def batch_quality(embedding: torch.Tensor, overall: torch.Tensor, kind: str, tau: float) -> torch.Tensor:
    """Quality ``(B,)``: the max over classes of ``softmax(sim(e, overall) / tau)``."""
    if kind == "cosine":
        scores = embedding @ overall.T
    else:
        scores = -((embedding[:, None, :] - overall[None, :, :]) ** 2).sum(dim=-1)
    return F.softmax(scores / tau, dim=-1).max(dim=-1).values


def sample_ics(
    logits: torch.Tensor, embedding: torch.Tensor, modalities: list[bool], prototypes: SubsetPrototypes
) -> float:
    """ICS of one sample: ``erfc(d / (sigma * sqrt(2)))`` for its predicted class under its subset."""
    subset = sum(1 << index for index, used in enumerate(modalities) if used) - 1
    predicted = int(logits.argmax())
    center = prototypes.centers[subset, predicted]
    sigma = float(prototypes.sigmas[subset, predicted])
    if prototypes.embedding == "cosine":
        distance = 1.0 - float(embedding @ center)
    else:
        distance = float(torch.linalg.vector_norm(embedding - center))
    if distance <= 0.0:
        return 1.0
    if sigma == 0.0:
        return 0.0
    return math.erfc(distance / (sigma * math.sqrt(2.0)))


def sample_calibration(ics: float, ics_candidate: float, rule: str) -> float:
    """Calibration factor of one sample: 1 unless the candidate lowers the ICS."""
    if rule == "none" or ics_candidate >= ics:
        return 1.0
    if rule == "ratio":
        return ics_candidate / ics
    if ics_candidate == 0.0:
        return 0.0
    return math.log(ics) / math.log(ics_candidate)


def published_loop_select(
    network: MaskedFusionTransformer,
    prototypes: SubsetPrototypes,
    inputs: Mapping[str, Any],
    present_mask: torch.Tensor,
    calibration: str = "ratio",
    tau: float = 0.1,
    zero_reward: str = "keep",
) -> PublishedLoopResult:
    """Select modalities per sample with full network passes for every reward.

    Args:
        network: the fusion network; it is put in eval mode.
        prototypes: prototypes fitted for ``network``.
        inputs: per modality name, inputs with every missing modality recovered.
        present_mask: ``(B, M)`` bool observed modalities; every other modality is a candidate.
        calibration: ``"ratio"``, ``"log_ratio"`` or ``"none"``.
        tau: temperature of the quality softmax.
        zero_reward: ``"keep"`` or ``"drop"`` a candidate whose reward is exactly 0.
    """
    if calibration not in ("ratio", "log_ratio", "none"):
        raise ValueError(f"calibration must be 'ratio', 'log_ratio' or 'none', got {calibration!r}.")
    if zero_reward not in ("keep", "drop"):
        raise ValueError(f"zero_reward must be 'keep' or 'drop', got {zero_reward!r}.")
    network.eval()
    overall = prototypes.overall.to(next(network.parameters()))
    batch_size, num_modalities = present_mask.shape

    current = present_mask.clone()
    remaining = ~present_mask
    admitted = torch.zeros_like(present_mask)
    active = [bool(row.any()) for row in remaining]
    steps = 0
    full_passes = 0

    with torch.no_grad():
        while any(active):
            steps += 1
            active_rows = torch.tensor(active)
            rewards: list[dict[int, float]] = [{} for _ in range(batch_size)]
            for modality in range(num_modalities):
                rows = active_rows & remaining[:, modality]
                if not bool(rows.any()):
                    continue
                candidate_mask = current.clone()
                candidate_mask[rows, modality] = True
                logits, embedding = full_pass(network, inputs, current)
                candidate_logits, candidate_embedding = full_pass(network, inputs, candidate_mask)
                full_passes += 2

                quality = batch_quality(embedding, overall, prototypes.embedding, tau)
                candidate_quality = batch_quality(candidate_embedding, overall, prototypes.embedding, tau)
                for sample in rows.nonzero().flatten().tolist():
                    ics = sample_ics(logits[sample], embedding[sample], current[sample].tolist(), prototypes)
                    ics_candidate = sample_ics(
                        candidate_logits[sample], candidate_embedding[sample], candidate_mask[sample].tolist(), prototypes
                    )
                    alpha = sample_calibration(ics, ics_candidate, calibration)
                    rewards[sample][modality] = alpha * float(candidate_quality[sample]) - float(quality[sample])

            for sample in range(batch_size):
                if active[sample]:
                    active[sample] = _greedy_step(sample, rewards[sample], current, remaining, admitted, zero_reward)

        final_logits, _ = full_pass(network, inputs, current)
        full_passes += 1

    return PublishedLoopResult(
        logits=final_logits, present_mask=current, admitted_mask=admitted, steps=steps, full_passes=full_passes
    )


def _greedy_step(
    sample: int,
    rewards: dict[int, float],
    current: torch.Tensor,
    remaining: torch.Tensor,
    admitted: torch.Tensor,
    zero_reward: str,
) -> bool:
    """Apply the greedy rule to one sample's rewards in place; return whether the sample stays active."""
    for modality, reward in rewards.items():
        if reward < 0 or (zero_reward == "drop" and reward == 0):
            remaining[sample, modality] = False
    best = max(rewards.values())
    if best <= 0:
        return False

    chosen = min(modality for modality, reward in rewards.items() if reward == best)
    current[sample, chosen] = True
    admitted[sample, chosen] = True
    remaining[sample, chosen] = False
    return bool(remaining[sample].any())
