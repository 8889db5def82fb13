"""Greedy DyMo selection: admit recovered modalities one at a time while the reward is positive.

Shape letters: ``B`` batch, ``M`` modalities, ``N`` tokens, ``D`` model width, ``K`` classes,
``P`` embedding width, ``C`` candidate pairs ``(sample, modality)`` evaluated in one step.

Per sample, vectorised over the batch:

1. Start from the present modalities; the candidates are the recovered ones.
2. For every remaining candidate ``u`` compute the reward ``R_u`` of adding ``u``
   (:mod:`pipeline.selection.reward`).
3. Drop every candidate with ``R_u < 0`` for good. Zero rewards follow ``zero_reward``:
   ``"keep"`` (default, as the authors' code does) leaves a candidate with ``R_u = 0`` for later
   steps, ``"drop"`` removes it too.
4. A sample whose rewards are all ``<= 0`` stops. Otherwise it admits its arg-max candidate
   (ties go to the lowest modality index), exactly one per step.
5. Repeat until no sample is active. The prediction is the output under each sample's final mask.

Cost per batch: one encoder pass (in :meth:`DyMoSelector.__call__`), then one fusion call per
step. The first covers the start masks of all samples and the first candidates. Each later call
covers the active samples' current masks again and their remaining candidates. So a candidate is
always compared with outputs from the same call, and one that changes nothing gets a reward of
exactly 0, not rounding noise of either sign. Steps are at most the number of candidates.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import torch

from pipeline.networks.fusion import MaskedFusionTransformer, ModalityInput
from pipeline.selection.prototypes import SubsetPrototypes
from pipeline.selection.result import SelectionResult, SelectionStep
from pipeline.selection.reward import (
    CALIBRATION_RULES,
    DEFAULT_TAU,
    CalibrationRule,
    intra_class_similarity,
    modality_reward,
    quality,
)

logger = logging.getLogger(__name__)

ZeroRewardRule = Literal["keep", "drop"]
ZERO_REWARD_RULES: tuple[str, ...] = ("keep", "drop")


def greedy_step(
    rewards: torch.Tensor, remaining: torch.Tensor, active: torch.Tensor, zero_reward: ZeroRewardRule = "keep"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply one step of the greedy rule to the rewards of the remaining candidates.

    Args:
        rewards: ``(B, M)`` rewards; only entries where ``remaining & active`` are read.
        remaining: ``(B, M)`` bool, candidates not yet admitted or dropped.
        active: ``(B,)`` bool, samples still selecting.
        zero_reward: ``"keep"`` leaves zero-reward candidates for later steps, ``"drop"`` removes them.

    Returns:
        ``admitted`` ``(B,)`` modality admitted per sample (``-1`` for none), the new ``remaining``
        ``(B, M)`` and the new ``active`` ``(B,)``.
    """
    if zero_reward not in ZERO_REWARD_RULES:
        raise ValueError(f"zero_reward must be one of {ZERO_REWARD_RULES}, got {zero_reward!r}.")
    evaluated = remaining & active[:, None]
    scores = torch.where(evaluated, rewards, torch.full_like(rewards, -torch.inf))

    dropped = evaluated & ((scores < 0) if zero_reward == "keep" else (scores <= 0))
    best_reward, best_modality = scores.max(dim=-1)  # max returns the first index among ties
    admits = active & (best_reward > 0)

    admitted = torch.where(admits, best_modality, torch.full_like(best_modality, -1))
    new_remaining = remaining & ~dropped
    new_remaining[admits, best_modality[admits]] = False
    new_active = admits & new_remaining.any(dim=-1)
    return admitted, new_remaining, new_active


class DyMoSelector:
    """Choose, per sample, which recovered modalities to fuse, using no labels.

    Args:
        network: the trained fusion network.
        prototypes: prototypes fitted for ``network`` (checked by fingerprint).
        calibration: ``"ratio"``, ``"log_ratio"`` or ``"none"``; see :mod:`pipeline.selection.reward`.
        tau: temperature of the quality softmax (0.1 in the published setting).
        zero_reward: what happens to a candidate whose reward is 0: ``"keep"`` or ``"drop"``.
        reward_tolerance: rewards with ``|R| <=`` this value count as exactly 0; 0 by default.
            Each step fuses the current masks and the candidates in one call, so a candidate that
            changes nothing already gets a reward of exactly 0. Quality saturates near 1 in float32,
            so real rewards can be as small as a few 1e-7; a tolerance above that changes selections.
        check_fingerprint: set ``False`` only when the network is known to be the fitted one and
            hashing its weights is too slow.

    Example::

        selector = DyMoSelector(network, SubsetPrototypes.load(path, network), calibration="ratio")
        result = selector(inputs, present_mask)  # recovered inputs, (B, M) observed modalities
        probabilities = result.logits.softmax(-1)
    """

    def __init__(
        self,
        network: MaskedFusionTransformer,
        prototypes: SubsetPrototypes,
        calibration: CalibrationRule = "ratio",
        tau: float = DEFAULT_TAU,
        zero_reward: ZeroRewardRule = "keep",
        reward_tolerance: float = 0.0,
        check_fingerprint: bool = True,
    ) -> None:
        if not isinstance(network, MaskedFusionTransformer):
            raise TypeError(f"network must be a MaskedFusionTransformer, got {type(network).__name__}.")
        if not isinstance(prototypes, SubsetPrototypes):
            raise TypeError(
                f"prototypes must be SubsetPrototypes, got {type(prototypes).__name__}; "
                "load a file with SubsetPrototypes.load(path, network)."
            )
        if calibration not in CALIBRATION_RULES:
            raise ValueError(f"calibration must be one of {CALIBRATION_RULES}, got {calibration!r}.")
        if zero_reward not in ZERO_REWARD_RULES:
            raise ValueError(f"zero_reward must be one of {ZERO_REWARD_RULES}, got {zero_reward!r}.")
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau}.")
        for name, value in (("tau", tau), ("reward_tolerance", reward_tolerance)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}.")
        if not reward_tolerance >= 0:
            raise ValueError(f"reward_tolerance must be non-negative, got {reward_tolerance}.")
        if list(prototypes.modality_names) != list(network.modality_names):
            raise ValueError(
                f"the prototypes were fitted for modalities {prototypes.modality_names}, "
                f"but the network has {network.modality_names}."
            )
        if prototypes.embedding != network.embedding:
            raise ValueError(
                f"the prototypes use {prototypes.embedding!r} embeddings, but the network produces {network.embedding!r}."
            )
        if check_fingerprint:
            prototypes.check_network(network)

        self.network = network
        self.prototypes = prototypes
        self.calibration = calibration
        self.tau = tau
        self.zero_reward = zero_reward
        self.reward_tolerance = reward_tolerance

    def __call__(
        self,
        inputs: Mapping[str, ModalityInput],
        present_mask: torch.Tensor,
        candidate_mask: torch.Tensor | None = None,
        observed_inputs: Mapping[str, ModalityInput] | None = None,
    ) -> SelectionResult:
        """Encode every modality once, then select.

        Args:
            inputs: per modality name, the input with every missing part recovered by an imputer.
            present_mask: ``(B, M)`` bool, the modalities to start from (observed ones).
            candidate_mask: ``(B, M)`` bool, the recovered modalities that may be admitted. By
                default: every absent modality, plus each modality of ``observed_inputs`` on the
                rows where it is present and its observed tokens differ from its recovered ones.
            observed_inputs: for modalities that are present but only partly observed (a table
                with missing values), their input as observed, e.g. with ``missing_values`` set.
                Such a modality starts in this state and, when admitted as a candidate, switches to
                its recovered input from ``inputs``.
        """
        _check_mask_type(present_mask, "present_mask")
        if candidate_mask is not None:
            _check_mask_type(candidate_mask, "candidate_mask")
        with torch.no_grad(), _evaluation_mode(self.network):
            # Modalities neither present nor candidates are never encoded, so their placeholders may be anything.
            used = None
            if candidate_mask is not None and present_mask.shape == candidate_mask.shape:
                used = present_mask | candidate_mask
            tokens = self.network.encode(inputs, used)

            observed_tokens = None
            partly_observed = torch.zeros_like(present_mask)
            if observed_inputs:
                unknown = sorted(set(observed_inputs) - set(self.network.modality_names))
                if unknown:
                    raise KeyError(f"observed_inputs names unknown modalities {unknown}; the network has {self.network.modality_names}.")
                observed_tokens = self.network.encode(
                    {name: observed_inputs.get(name, inputs[name]) for name in self.network.modality_names},
                    present_mask & _columns(present_mask, self.network.modality_names, observed_inputs),
                )
                for name in observed_inputs:
                    index = self.network.modality_names.index(name)
                    positions = self.network.token_slice(name)
                    rows = present_mask[:, index]
                    differs = (observed_tokens[:, positions] != tokens[:, positions]).flatten(1).any(dim=1)
                    partly_observed[:, index] = rows & differs
                # Modalities without an observed state, and absent rows, keep their recovered tokens.
                observed_state = present_mask & _columns(present_mask, self.network.modality_names, observed_inputs)
                use_observed = observed_state[:, self.network.token_modality][..., None]
                observed_tokens = torch.where(use_observed, observed_tokens, tokens)
        if candidate_mask is None:
            candidate_mask = ~present_mask | (present_mask & partly_observed)
        return self.select_tokens(tokens, present_mask, candidate_mask, observed_tokens)

    def select_tokens(
        self,
        tokens: torch.Tensor,
        present_mask: torch.Tensor,
        candidate_mask: torch.Tensor | None = None,
        observed_tokens: torch.Tensor | None = None,
    ) -> SelectionResult:
        """Select from already encoded tokens; see :meth:`__call__`.

        Args:
            tokens: ``(B, N, D)`` recovered tokens from :meth:`MaskedFusionTransformer.encode`, or
                from an imputer that works in token space.
            present_mask: ``(B, M)`` bool, the modalities to start from.
            candidate_mask: ``(B, M)`` bool, defaults to ``~present_mask``.
            observed_tokens: ``(B, N, D)`` tokens as observed, required when a modality is both
                present and a candidate; those samples start from these tokens for that modality.
        """
        _check_mask_type(present_mask, "present_mask")
        if candidate_mask is None:
            candidate_mask = ~present_mask
        self._check_selection_inputs(tokens, present_mask, candidate_mask, observed_tokens)
        if observed_tokens is None:
            observed_tokens = tokens
        batch_size, num_modalities = present_mask.shape

        with torch.no_grad(), _evaluation_mode(self.network):
            admitted_mask = torch.zeros_like(present_mask)
            remaining = candidate_mask.clone()
            active = remaining.any(dim=-1)
            steps: list[SelectionStep] = []

            # The first fusion call covers every start mask and the first step's candidate pairs.
            pairs = (remaining & active[:, None]).nonzero()  # (C, 2): sample, candidate modality
            current_rows = torch.arange(batch_size, device=tokens.device)
            current, outputs = self._evaluate_step(tokens, observed_tokens, present_mask, admitted_mask, current_rows, pairs)
            final = current  # (B, ...) outputs under each sample's latest mask

            while bool(active.any()):
                logger.debug("Selection step %d: %d active samples, %d candidates.", len(steps) + 1, int(active.sum()), len(pairs))
                rewards = self._step_rewards(current, outputs, current_rows, pairs, present_mask.shape)
                admitted, remaining, active = greedy_step(rewards, remaining, active, self.zero_reward)
                steps.append(SelectionStep(rewards=rewards, admitted=admitted))

                final = _adopt_admitted(final, outputs, pairs, admitted, num_modalities)
                chosen = admitted >= 0
                admitted_mask[chosen, admitted[chosen]] = True

                if bool(active.any()):
                    # Later steps fuse the active samples' current masks again, in the same call as
                    # their candidates, so a candidate that changes nothing gets a reward of exactly 0.
                    pairs = (remaining & active[:, None]).nonzero()
                    current_rows = active.nonzero().flatten()
                    current, outputs = self._evaluate_step(
                        tokens, observed_tokens, present_mask | admitted_mask, admitted_mask, current_rows, pairs
                    )

        return SelectionResult(
            logits=final["logits"],
            embedding=final["embedding"],
            present_mask=present_mask | admitted_mask,
            start_mask=present_mask.clone(),
            candidate_mask=candidate_mask.clone(),
            admitted_mask=admitted_mask,
            steps=steps,
        )

    def _evaluate_step(
        self,
        tokens: torch.Tensor,
        observed_tokens: torch.Tensor,
        current_mask: torch.Tensor,
        admitted_mask: torch.Tensor,
        current_rows: torch.Tensor,
        pairs: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Fuse the current masks of ``current_rows`` ``(R,)`` and the candidate ``pairs`` ``(C, 2)`` in one call.

        Returns the outputs of the current masks (``R`` rows) and of the pairs (``C`` rows).
        """
        outputs = self._evaluate(
            tokens,
            observed_tokens,
            current_mask,
            admitted_mask,
            torch.cat([current_rows, pairs[:, 0]]),
            torch.cat([pairs.new_full((len(current_rows),), -1), pairs[:, 1]]),  # -1 adds no modality
        )
        split = len(current_rows)
        current = {key: value[:split] for key, value in outputs.items()}
        candidates = {key: value[split:] for key, value in outputs.items()}
        return current, candidates

    def _step_rewards(
        self,
        current: dict[str, torch.Tensor],
        outputs: dict[str, torch.Tensor],
        current_rows: torch.Tensor,
        pairs: torch.Tensor,
        mask_shape: torch.Size,
    ) -> torch.Tensor:
        """Scatter the reward of each pair ``(C, 2)`` into a ``(B, M)`` matrix, NaN where not evaluated.

        ``current`` contains the outputs of the samples ``current_rows`` ``(R,)`` under their current mask.
        """
        position = torch.full((mask_shape[0],), -1, dtype=torch.long, device=pairs.device)
        position[current_rows] = torch.arange(len(current_rows), device=pairs.device)
        current_of_pair = position[pairs[:, 0]]

        reward = modality_reward(
            current["quality"][current_of_pair],
            current["ics"][current_of_pair],
            outputs["quality"],
            outputs["ics"],
            self.calibration,
        )
        if self.reward_tolerance > 0:
            reward = torch.where(reward.abs() <= self.reward_tolerance, torch.zeros_like(reward), reward)

        rewards = torch.full(tuple(mask_shape), torch.nan, dtype=reward.dtype, device=reward.device)
        rewards[pairs[:, 0], pairs[:, 1]] = reward
        return rewards

    def _evaluate(
        self,
        tokens: torch.Tensor,
        observed_tokens: torch.Tensor,
        current_mask: torch.Tensor,
        admitted_mask: torch.Tensor,
        samples: torch.Tensor,
        candidates: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Fuse rows ``samples`` ``(C,)`` under their current mask plus modality ``candidates`` ``(C,)`` (-1: none).

        Admitted and candidate modalities use the recovered tokens, the others the observed tokens.
        Returns ``logits (C, K)``, ``embedding (C, P)``, ``quality (C,)`` and ``ics (C,)``.
        """
        modalities = torch.arange(current_mask.shape[1], device=current_mask.device)
        added = candidates[:, None] == modalities  # (C, M); all False for candidate -1
        masks = current_mask[samples] | added
        recovered = admitted_mask[samples] | added

        use_recovered = recovered[:, self.network.token_modality]  # (C, N)
        pair_tokens = tokens[samples]
        if observed_tokens is not tokens:
            pair_tokens = torch.where(use_recovered[..., None], pair_tokens, observed_tokens[samples])

        logits, embedding = self.network.classify(self.network.fuse(pair_tokens, masks))
        subset_index = self.prototypes.subset_indices(masks, samples)
        return {
            "logits": logits,
            "embedding": embedding,
            "quality": quality(embedding, self.prototypes, self.tau),
            "ics": intra_class_similarity(embedding, logits, subset_index, self.prototypes),
        }

    def _check_selection_inputs(
        self,
        tokens: torch.Tensor,
        present_mask: torch.Tensor,
        candidate_mask: torch.Tensor,
        observed_tokens: torch.Tensor | None,
    ) -> None:
        num_modalities = self.network.num_modalities
        for name, mask in (("present_mask", present_mask), ("candidate_mask", candidate_mask)):
            _check_mask_type(mask, name)
            if mask.dim() != 2 or mask.shape != (tokens.shape[0], num_modalities):
                raise ValueError(
                    f"{name} must have shape (B, M) = ({tokens.shape[0]}, {num_modalities}) for modalities "
                    f"{self.network.modality_names}, got {tuple(mask.shape)}."
                )
        empty = (~present_mask.any(dim=-1)).nonzero().flatten()
        if empty.numel():
            raise ValueError(
                f"samples {empty.tolist()[:10]} of the batch have no present modality; selection needs at least one "
                "observed modality per sample to start from. Mark the observed modalities in present_mask."
            )
        partial = present_mask & candidate_mask
        if observed_tokens is None and bool(partial.any()):
            row, column = partial.nonzero()[0].tolist()
            raise ValueError(
                f"modality {self.network.modality_names[column]!r} of sample {row} is both present and a candidate, "
                "which means partly observed; pass its observed input (observed_inputs or observed_tokens)."
            )
        if observed_tokens is not None and observed_tokens.shape != tokens.shape:
            raise ValueError(
                f"observed_tokens must have the shape of tokens {tuple(tokens.shape)}, got {tuple(observed_tokens.shape)}."
            )
        self._check_finite(tokens, candidate_mask, "recovered")
        self._check_finite(tokens if observed_tokens is None else observed_tokens, present_mask, "observed")

    def _check_finite(self, tokens: torch.Tensor, used: torch.Tensor, state: str) -> None:
        """Raise ``ValueError`` if a modality that selection may use has non-finite tokens."""
        finite = torch.isfinite(tokens).all(dim=-1)  # (B, N)
        bad = used[:, self.network.token_modality] & ~finite  # (B, N)
        if bool(bad.any()):
            sample, position = bad.nonzero()[0].tolist()
            name = self.network.modality_names[int(self.network.token_modality[position])]
            raise ValueError(
                f"the {state} input of modality {name!r} gives non-finite tokens for sample {sample} of the batch "
                "(NaN or infinite values in the input, or an overflow). Check that input, or mark the modality absent."
            )


def _adopt_admitted(
    current: dict[str, torch.Tensor],
    outputs: dict[str, torch.Tensor],
    pairs: torch.Tensor,
    admitted: torch.Tensor,
    num_modalities: int,
) -> dict[str, torch.Tensor]:
    """Return ``current`` with each admitting sample's entries replaced by its admitted pair's outputs."""
    batch_size = admitted.shape[0]
    chosen = admitted >= 0

    # Row of each (sample, modality) pair in ``outputs``, so the admitted pair can be looked up.
    pair_row = torch.full((batch_size, num_modalities), -1, dtype=torch.long, device=admitted.device)
    pair_row[pairs[:, 0], pairs[:, 1]] = torch.arange(pairs.shape[0], device=admitted.device)
    source = pair_row[chosen, admitted[chosen]]

    updated = {key: value.clone() for key, value in current.items()}
    for key in updated:
        updated[key][chosen] = outputs[key][source]
    return updated


def _columns(mask: torch.Tensor, modality_names: list[str], selected: Mapping[str, Any]) -> torch.Tensor:
    """Return a ``(B, M)`` bool mask that is True in the columns of the ``selected`` modalities."""
    columns = torch.tensor([name in selected for name in modality_names], device=mask.device)
    return columns.expand_as(mask)


def _check_mask_type(mask: Any, name: str) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        kind = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"{name} must be a bool tensor, got {kind}.")


@contextlib.contextmanager
def _evaluation_mode(network: torch.nn.Module) -> Iterator[None]:
    """Put ``network`` in eval mode for the block and restore its previous mode after."""
    was_training = network.training
    network.eval()
    try:
        yield
    finally:
        network.train(was_training)
