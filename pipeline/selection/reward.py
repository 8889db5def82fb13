"""The DyMo reward for admitting one recovered modality, computed from the network's embedding.

Shape letters: ``B`` batch (or candidate pairs), ``M`` modalities, ``K`` classes, ``P`` embedding
width. No function here takes a label.

For the current presence mask ``m`` with outputs ``(o, e)`` and the mask ``m_u = m + {u}`` with
outputs ``(o_u, e_u)``:

- quality ``Q(e) = max_k softmax_k(sim(e, overall_k) / tau)``, with ``sim`` the dot product for
  cosine embeddings and minus the squared Euclidean distance for Euclidean ones;
- intra-class similarity ``ICS = erfc(d / (sigma * sqrt(2)))``, the two-sided Gaussian tail of the
  distance ``d`` of ``e`` to the prototype of its predicted class ``argmax o`` under its subset,
  scaled by that prototype's spread ``sigma``;
- calibration ``alpha = 1`` when ``ICS_u >= ICS``, otherwise ``ICS_u / ICS`` (rule ``"ratio"``) or
  ``ln(ICS) / ln(ICS_u)`` (rule ``"log_ratio"``); rule ``"none"`` keeps ``alpha = 1`` always;
- reward ``R_u = alpha * Q(e_u) - Q(e)``.

Source: Du, Luo, O'Regan, Qin, "Inference-Time Dynamic Modality Selection for Incomplete
Multimodal Classification", ICLR 2026 (arXiv 2601.22853). The authors apply ``"ratio"`` to
Euclidean embeddings and the cardiac data, and ``"log_ratio"`` to cosine embeddings on natural
images; here the rule is an option of its own.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from pipeline.selection.prototypes import SubsetPrototypes, embedding_distance

CalibrationRule = Literal["ratio", "log_ratio", "none"]
CALIBRATION_RULES: tuple[str, ...] = ("ratio", "log_ratio", "none")

# Temperature of the quality softmax in the published setting.
DEFAULT_TAU = 0.1


def similarity(embedding: torch.Tensor, centers: torch.Tensor, kind: str) -> torch.Tensor:
    """Similarity ``(B, K)`` of embeddings ``(B, P)`` to centers ``(K, P)``: dot product or minus squared distance."""
    if kind == "cosine":
        return embedding @ centers.T
    if kind == "euclidean":
        return -torch.cdist(embedding, centers).pow(2)
    raise ValueError(f"embedding kind must be 'cosine' or 'euclidean', got {kind!r}.")


def quality(embedding: torch.Tensor, prototypes: SubsetPrototypes, tau: float = DEFAULT_TAU) -> torch.Tensor:
    """Confidence ``(B,)`` of embeddings ``(B, P)`` against the overall prototypes: max softmax of similarity / tau."""
    scores = similarity(embedding, prototypes.overall.to(embedding), prototypes.embedding) / tau
    return scores.softmax(dim=-1).amax(dim=-1)


def intra_class_similarity(
    embedding: torch.Tensor, logits: torch.Tensor, subset_index: torch.Tensor, prototypes: SubsetPrototypes
) -> torch.Tensor:
    """ICS ``(B,)`` of embeddings ``(B, P)`` to the prototype of their predicted class under their subset.

    Args:
        embedding: ``(B, P)`` embeddings.
        logits: ``(B, K)`` logits; the predicted class is their arg-max.
        subset_index: ``(B,)`` subset of each sample, from :meth:`SubsetPrototypes.subset_indices`.
        prototypes: fitted prototypes.
    """
    predicted = logits.argmax(dim=-1)
    center = prototypes.centers.to(embedding)[subset_index, predicted]  # (B, P)
    sigma = prototypes.sigmas.to(embedding)[subset_index, predicted]  # (B,)

    distance = embedding_distance(embedding, center, prototypes.embedding)
    # A zero spread (all training embeddings on the center) makes any non-zero distance infinitely
    # unlikely; erfc(inf) = 0 and the 0/0 case of a sample exactly on the center is taken as ICS 1.
    scaled = torch.where(distance > 0, distance / (sigma * math.sqrt(2.0)), torch.zeros_like(distance))
    return torch.special.erfc(scaled)


def calibration_factor(ics: torch.Tensor, ics_candidate: torch.Tensor, rule: CalibrationRule) -> torch.Tensor:
    """Calibration ``alpha`` ``(B,)`` from the current ICS and the candidate's ICS, both ``(B,)``.

    ``alpha`` is 1 whenever the candidate does not lower the ICS, so the divisions below only run
    where ``0 <= ICS_u < ICS <= 1``. There both rules give a value in ``[0, 1)``. For
    ``"log_ratio"``, ``ICS_u = 0`` gives 0, and ``ICS = 1`` gives 0 because ``ln 1 = 0``.
    """
    if rule not in CALIBRATION_RULES:
        raise ValueError(f"calibration rule must be one of {CALIBRATION_RULES}, got {rule!r}.")
    ones = torch.ones_like(ics)
    if rule == "none":
        return ones

    lowered = ics_candidate < ics
    if rule == "ratio":
        shrunk = ics_candidate / torch.where(lowered, ics, ones)
    else:
        log_ics = torch.log(ics)
        log_candidate = torch.log(torch.where(lowered, ics_candidate, ones * 0.5))
        shrunk = torch.where(ics_candidate > 0, log_ics / log_candidate, torch.zeros_like(ics))
    return torch.where(lowered, shrunk, ones)


def modality_reward(
    quality_current: torch.Tensor,
    ics_current: torch.Tensor,
    quality_candidate: torch.Tensor,
    ics_candidate: torch.Tensor,
    rule: CalibrationRule,
) -> torch.Tensor:
    """Reward ``(B,)`` of moving from the current mask to the candidate mask: ``alpha * Q_u - Q``."""
    return calibration_factor(ics_current, ics_candidate, rule) * quality_candidate - quality_current
