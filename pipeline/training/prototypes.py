"""Class prototypes for the training loss: per-class means of the embeddings seen in one epoch.

Shape letters: ``R`` rows (sample-subset pairs), ``P`` embedding width, ``K`` classes.
"""

from __future__ import annotations

import logging

import torch

from pipeline import distributed
from pipeline.training.argument_checks import check_int

logger = logging.getLogger(__name__)


class ClassPrototypeAccumulator:
    """Sum embeddings per class during an epoch and turn the sums into class means at its end.

    :attr:`prototypes` ``(K, P)`` starts at zero. :meth:`accumulate` adds detached embeddings of
    every batch and every drawn subset. :meth:`end_epoch` replaces the prototype of each class
    with the mean of that class's embeddings and clears the sums. A class without any embedding
    in the epoch keeps its previous prototype. The means of L2-normalised (cosine) embeddings are
    used as they are, without normalising them again.

    In a process group started by ``torchrun``, :meth:`end_epoch` sums the per-class sums and
    counts over all processes first, so every process gets the class means over all their
    embeddings.

    Args:
        num_classes: classes ``K``.
        embedding_dim: embedding width ``P``.
        device: device of the sums and prototypes.
    """

    def __init__(self, num_classes: int, embedding_dim: int, device: str | torch.device = "cpu") -> None:
        self.num_classes = check_int("num_classes", num_classes, minimum=1)
        self.embedding_dim = check_int("embedding_dim", embedding_dim, minimum=1)
        self.prototypes = torch.zeros(num_classes, embedding_dim, device=device)  # (K, P)
        # float64 sums keep the means exact enough over many batches.
        self._sums = torch.zeros(num_classes, embedding_dim, dtype=torch.float64, device=device)
        self._counts = torch.zeros(num_classes, dtype=torch.long, device=device)

    @property
    def counts(self) -> torch.Tensor:
        """Embeddings accumulated per class since the last :meth:`end_epoch`, ``(K,)``."""
        return self._counts.clone()

    def accumulate(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Add embeddings ``(R, P)`` of samples with class labels ``(R,)`` to the sums."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(
                f"embeddings must have shape (R, {self.embedding_dim}), got {tuple(embeddings.shape)}."
            )
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(
                f"labels must have shape ({embeddings.shape[0]},) to match embeddings, got {tuple(labels.shape)}."
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"labels must be class indices in [0, {self.num_classes}), got values from "
                f"{int(labels.min())} to {int(labels.max())}."
            )

        labels = labels.to(self._sums.device)
        self._sums.index_add_(0, labels, embeddings.detach().to(self._sums))
        self._counts.index_add_(0, labels, torch.ones_like(labels))

    def end_epoch(self) -> torch.Tensor:
        """Set the prototypes to the class means of this epoch, clear the sums, return ``(K, P)``.

        Every process of a process group must call it, because it sums over the processes.
        """
        distributed.all_reduce_sum(self._sums)
        distributed.all_reduce_sum(self._counts)
        seen = self._counts > 0
        unseen = (~seen).nonzero().flatten().tolist()
        if unseen:
            logger.warning(
                "classes %s had no embedding in this epoch, so their prototypes keep their previous value.", unseen
            )

        means = self._sums / self._counts.clamp(min=1)[:, None]
        self.prototypes = torch.where(seen[:, None], means.to(self.prototypes.dtype), self.prototypes)
        self._sums.zero_()
        self._counts.zero_()
        return self.prototypes.clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return copies of the prototypes ``(K, P)``, the sums ``(K, P)`` and the counts ``(K,)``."""
        return {"prototypes": self.prototypes.clone(), "sums": self._sums.clone(), "counts": self._counts.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned, on this accumulator's device.

        Raises:
            ValueError: a tensor is missing or does not have the shape of this accumulator.
        """
        expected = {
            "prototypes": tuple(self.prototypes.shape),
            "sums": tuple(self._sums.shape),
            "counts": tuple(self._counts.shape),
        }
        for name, shape in expected.items():
            value = state.get(name)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
                found = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"accumulator state {name!r} must be a tensor of shape {shape}, got {found}.")

        self.prototypes = state["prototypes"].to(self.prototypes)
        self._sums = state["sums"].to(self._sums)
        self._counts = state["counts"].to(self._counts)
