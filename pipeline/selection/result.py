"""Result of greedy selection for one batch: final outputs, masks and the per-step trace.

Shape letters: ``B`` batch, ``M`` modalities, ``K`` classes, ``P`` embedding width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class SelectionStep:
    """One greedy step for the whole batch.

    Attributes:
        rewards: ``(B, M)`` reward of each candidate evaluated in this step; NaN where a modality
            was not a candidate or the sample had already stopped.
        admitted: ``(B,)`` modality index admitted in this step, ``-1`` where none was.
    """

    rewards: torch.Tensor
    admitted: torch.Tensor


@dataclass(frozen=True)
class SelectionResult:
    """Outcome of greedy selection for one batch.

    Attributes:
        logits: ``(B, K)`` logits under each sample's final mask.
        embedding: ``(B, P)`` embedding under each sample's final mask.
        present_mask: ``(B, M)`` final mask: the present modalities plus the admitted ones.
        start_mask: ``(B, M)`` the present modalities selection started from.
        candidate_mask: ``(B, M)`` the recovered modalities that were candidates.
        admitted_mask: ``(B, M)`` the candidates that were admitted.
        steps: the per-step trace, in order.
    """

    logits: torch.Tensor
    embedding: torch.Tensor
    present_mask: torch.Tensor
    start_mask: torch.Tensor
    candidate_mask: torch.Tensor
    admitted_mask: torch.Tensor
    steps: list[SelectionStep]

    def admission_order(self) -> list[list[int]]:
        """Admitted modality indices of each sample, in the order they were admitted."""
        order: list[list[int]] = [[] for _ in range(self.logits.shape[0])]
        for step in self.steps:
            for sample, modality in enumerate(step.admitted.tolist()):
                if modality >= 0:
                    order[sample].append(modality)
        return order

    def to_records(
        self, modality_names: Sequence[str], subject_ids: Sequence[Any] | None = None
    ) -> list[dict[str, Any]]:
        """Build one record per subject for a selection report (e.g. ``pandas.DataFrame(records)``).

        Each record has ``subject_id``, the ``present``, ``candidates``, ``admitted`` (in admission
        order) and ``final`` modality names joined by ``+``, ``predicted_class``, ``steps``, and
        ``step<t>_reward_<modality>`` for every reward evaluated (steps counted from 1).
        """
        batch_size = self.logits.shape[0]
        if len(modality_names) != self.present_mask.shape[1]:
            raise ValueError(f"expected {self.present_mask.shape[1]} modality names, got {list(modality_names)}.")
        if subject_ids is None:
            subject_ids = list(range(batch_size))
        if len(subject_ids) != batch_size:
            raise ValueError(f"expected {batch_size} subject ids for the batch, got {len(subject_ids)}.")

        def names(mask_row: torch.Tensor) -> str:
            return "+".join(name for name, used in zip(modality_names, mask_row.tolist()) if used)

        predicted = self.logits.argmax(dim=-1).tolist()
        records = []
        for sample, order in enumerate(self.admission_order()):
            record: dict[str, Any] = {
                "subject_id": subject_ids[sample],
                "present": names(self.start_mask[sample]),
                "candidates": names(self.candidate_mask[sample]),
                "admitted": "+".join(modality_names[index] for index in order),
                "final": names(self.present_mask[sample]),
                "predicted_class": predicted[sample],
                "steps": 0,
            }
            for number, step in enumerate(self.steps, start=1):
                row = step.rewards[sample]
                evaluated = (~row.isnan()).nonzero().flatten().tolist()
                if evaluated:
                    record["steps"] = number
                for modality in evaluated:
                    record[f"step{number}_reward_{modality_names[modality]}"] = float(row[modality])
            records.append(record)
        return records
