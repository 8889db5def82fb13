"""Training loss: cross-entropy on each drawn subset plus a prototype loss on the embedding.

Shape letters: ``R`` rows (sample-subset pairs, possibly with leading axes such as ``(A, B)``),
``P`` embedding width, ``K`` classes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from pipeline.networks.fusion import EMBEDDING_KINDS, EmbeddingKind
from pipeline.training.argument_checks import check_int, check_real


def prototype_similarity(
    embeddings: torch.Tensor, prototypes: torch.Tensor, embedding: EmbeddingKind
) -> torch.Tensor:
    """Return the similarity ``(..., K)`` of embeddings ``(..., P)`` to class prototypes ``(K, P)``.

    The similarity is the dot product for ``"cosine"`` embeddings (which are L2-normalised) and
    minus the squared Euclidean distance for ``"euclidean"`` embeddings.
    """
    if embedding not in EMBEDDING_KINDS:
        raise ValueError(f"embedding must be one of {EMBEDDING_KINDS}, got {embedding!r}.")
    if prototypes.dim() != 2 or prototypes.shape[1] != embeddings.shape[-1]:
        raise ValueError(
            f"prototypes must have shape (K, {embeddings.shape[-1]}) to match embeddings of shape "
            f"{tuple(embeddings.shape)}, got {tuple(prototypes.shape)}."
        )

    prototypes = prototypes.to(embeddings.dtype)
    dot = embeddings @ prototypes.T
    if embedding == "cosine":
        return dot
    # ||e - c||^2 = ||e||^2 - 2 <e, c> + ||c||^2, without an (R, K, P) difference tensor.
    squared_distance = (embeddings**2).sum(-1, keepdim=True) - 2 * dot + (prototypes**2).sum(-1)
    return -squared_distance


class LossTerms(NamedTuple):
    """Scalar loss terms of one batch.

    ``total`` is the value to minimise. ``prototype`` is computed even while it is switched off,
    so that it can be logged, but then ``total`` equals ``classification``.
    """

    total: torch.Tensor
    classification: torch.Tensor
    prototype: torch.Tensor


class SubsetPrototypeLoss:
    """Cross-entropy over the drawn subsets plus a weighted prototype loss.

    For logits ``o``, embedding ``e``, label ``y`` and class prototypes ``c_k``, each
    sample-subset pair contributes ``CE(o, y)`` and ``-log softmax_k(sim(e, c_k) / t)[y]``, with
    ``sim`` as in :func:`prototype_similarity`. Both terms are averaged over the valid pairs, so
    with complete data they are the mean over subsets of the per-subset batch means. The
    prototype term enters ``total`` with weight ``prototype_weight`` from epoch index
    ``warmup_epochs`` on, because the prototypes start at zero and are first set at the end of
    epoch 0.

    Args:
        embedding: ``"cosine"`` or ``"euclidean"``, as in the network.
        prototype_weight: weight ``lambda`` of the prototype term (1 in the published setting).
        temperature: softmax temperature ``t`` of the prototype term (0.1 in the published setting).
        warmup_epochs: first epoch index at which the prototype term is added (3 in the
            published setting).
    """

    def __init__(
        self,
        embedding: EmbeddingKind,
        prototype_weight: float = 1.0,
        temperature: float = 0.1,
        warmup_epochs: int = 3,
    ) -> None:
        if embedding not in EMBEDDING_KINDS:
            raise ValueError(f"embedding must be one of {EMBEDDING_KINDS}, got {embedding!r}.")
        self.embedding = embedding
        self.prototype_weight = check_real("prototype_weight", prototype_weight, minimum=0.0, strict=False)
        self.temperature = check_real("temperature", temperature, minimum=0.0, strict=True)
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, minimum=0)

    def prototype_active(self, epoch: int) -> bool:
        """Return whether the prototype term is part of ``total`` at epoch index ``epoch``."""
        return epoch >= self.warmup_epochs

    def __call__(
        self,
        logits: torch.Tensor,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        prototypes: torch.Tensor,
        epoch: int,
        valid: torch.Tensor | None = None,
    ) -> LossTerms:
        """Compute the loss terms of one batch.

        Args:
            logits: ``(..., K)``, for example ``(A, B, K)`` or flattened ``(R, K)``.
            embeddings: ``(..., P)`` with the leading shape of ``logits``.
            labels: class indices that broadcast to the leading shape of ``logits``, for example
                ``(B,)`` against ``(A, B, K)``.
            prototypes: ``(K, P)`` class prototypes.
            epoch: epoch index, starting at 0, which decides whether the prototype term is added.
            valid: bool with the leading shape of ``logits``. Pairs flagged ``False`` are left out.
                ``None`` keeps every pair.

        Returns:
            :class:`LossTerms` of scalars.
        """
        leading_shape = logits.shape[:-1]
        if tuple(embeddings.shape[:-1]) != tuple(leading_shape):
            raise ValueError(
                f"embeddings must have leading shape {tuple(leading_shape)} to match logits, "
                f"got {tuple(embeddings.shape)}."
            )
        if prototypes.shape[0] != logits.shape[-1]:
            raise ValueError(
                f"prototypes must have one row per class ({logits.shape[-1]}), got {tuple(prototypes.shape)}."
            )
        try:
            labels = labels.expand(leading_shape)
        except RuntimeError as error:
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} do not broadcast to the leading shape "
                f"{tuple(leading_shape)} of logits."
            ) from error
        if valid is None:
            valid = torch.ones(leading_shape, dtype=torch.bool, device=logits.device)
        elif valid.dtype != torch.bool or tuple(valid.shape) != tuple(leading_shape):
            raise ValueError(
                f"valid must be a bool tensor of shape {tuple(leading_shape)}, got dtype {valid.dtype} "
                f"and shape {tuple(valid.shape)}."
            )
        if not valid.any():
            raise ValueError("valid has no True entry, so there is no sample-subset pair to average over.")

        logits = logits[valid]  # (R, K)
        embeddings = embeddings[valid]  # (R, P)
        labels = labels[valid]  # (R,)

        classification = F.cross_entropy(logits, labels)
        similarity = prototype_similarity(embeddings, prototypes, self.embedding)  # (R, K)
        prototype = F.cross_entropy(similarity / self.temperature, labels)

        total = classification
        if self.prototype_active(epoch):
            total = classification + self.prototype_weight * prototype
        return LossTerms(total=total, classification=classification, prototype=prototype)
