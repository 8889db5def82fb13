"""Training of a :class:`MaskedFusionTransformer` on random modality subsets with the prototype loss.

Shape letters: ``B`` batch, ``M`` modalities, ``N`` tokens, ``D`` width, ``P`` embedding width,
``K`` classes, ``S`` subsets, ``A`` subsets drawn per sample, ``R`` valid sample-subset pairs
(``R = A * B`` with complete data).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.networks.batch import check_reiterable, unpack_batch
from pipeline.networks.fusion import MaskedFusionTransformer
from pipeline.training.argument_checks import check_batch_source, check_device, check_int, check_real
from pipeline.training.checkpoint import check_checkpoint_path, save_checkpoint
from pipeline.training.losses import LossTerms, SubsetPrototypeLoss
from pipeline.training.prototypes import ClassPrototypeAccumulator
from pipeline.training.subset_sampling import sample_subsets
from pipeline.training.validation import PooledValidation, evaluate_pooled

logger = logging.getLogger(__name__)

Batch = Mapping[str, Any]


@dataclass
class TrainingHistory:
    """Per-epoch record of one :meth:`SubsetTrainer.fit` call, where the list index is the epoch index.

    Losses are means over the epoch's sample-subset pairs. ``prototype_loss`` is recorded in
    every epoch, including the warm-up epochs in which it is not part of ``train_loss``.
    """

    train_loss: list[float] = field(default_factory=list)
    classification_loss: list[float] = field(default_factory=list)
    prototype_loss: list[float] = field(default_factory=list)
    val_metric: list[float] = field(default_factory=list)
    val_metric_name: str = ""
    best_epoch: int = -1
    best_metric: float = float("nan")
    stopped_early: bool = False

    @property
    def epochs_run(self) -> int:
        """Number of epochs trained."""
        return len(self.train_loss)


@dataclass
class _EpochLosses:
    total: float
    classification: float
    prototype: float


class SubsetTrainer:
    """Train on random modality subsets, select the model on pooled validation, stop early.

    Each training batch is encoded once with :meth:`MaskedFusionTransformer.encode` and its
    presence mask, so each encoder runs only on the samples that have its modality. The
    placeholder of an absent modality (zeros, NaN, anything of the right shape) never reaches an
    encoder. An encoder with BatchNorm therefore needs at least two samples with its modality in
    every training batch, not just two samples per batch. Then
    ``A = subsets_per_batch`` subsets are drawn per sample from the modalities it has (see
    :func:`~pipeline.training.subset_sampling.sample_subsets`), and the ``A`` draws are stacked
    along the batch axis into a single :meth:`~MaskedFusionTransformer.fuse` call of ``R`` rows.
    The loss is :class:`~pipeline.training.losses.SubsetPrototypeLoss`, optimised with Adam
    without weight decay. Class prototypes are the class means of the detached embeddings of the
    previous epoch (:class:`~pipeline.training.prototypes.ClassPrototypeAccumulator`).

    After each epoch the model is scored by
    :func:`~pipeline.training.validation.evaluate_pooled`: ROC AUC for binary tasks, accuracy
    otherwise. The weights and prototypes of the best epoch are kept. Training stops after
    ``patience`` epochs without a strictly higher metric, and the best weights and prototypes
    are restored at the end.

    Randomness: subset draws come from a generator seeded with ``seed``. During :meth:`fit`
    the global torch RNG (dropout, and the shuffling of a ``DataLoader`` without its own
    generator) is seeded from the same source and restored afterwards. So the same seed, initial
    weights and batches give the same weights on the CPU.

    NOTE: reproducibility is tested on the CPU only. Some CUDA kernels are nondeterministic
    unless the caller sets ``torch.use_deterministic_algorithms(True)``.

    Args:
        network: the network to train. It is moved to ``device``.
        subsets_per_batch: subsets ``A`` drawn per sample and batch, at most ``S = 2**M - 1``.
            The published setting uses 2 for two modalities and 5 for five.
        learning_rate: Adam learning rate, a finite number > 0.
        max_epochs: maximum number of epochs.
        patience: epochs without improvement of the validation metric before training stops.
        prototype_weight: weight ``lambda`` of the prototype loss, a finite number >= 0.
        prototype_temperature: softmax temperature ``t`` of the prototype loss, a finite number > 0.
        prototype_warmup_epochs: first epoch index at which the prototype loss counts, an int >= 0.
        selection_start_epoch: first epoch index that may be kept as the best model, an int in
            ``[0, max_epochs)``. Set it to ``prototype_warmup_epochs`` so that the kept network was
            trained with the prototype loss; earlier epochs count neither as best nor towards
            ``patience``.
        seed: seed of every random draw made by the trainer.
        device: device to train on. It must exist on this machine.
        present_key: batch key of the presence mask ``(B, M)``.
        label_key: batch key of the labels ``(B,)``.

    Raises:
        TypeError: ``network`` is not a :class:`MaskedFusionTransformer`, a count or ``seed`` is
            not an int, or a rate, weight or temperature is not an int or float (a str or a bool
            is rejected).
        ValueError: an argument is out of its range, or ``device`` is not a device of this
            machine.
    """

    def __init__(
        self,
        network: MaskedFusionTransformer,
        *,
        subsets_per_batch: int = 2,
        learning_rate: float = 1e-4,
        max_epochs: int = 100,
        patience: int = 20,
        prototype_weight: float = 1.0,
        prototype_temperature: float = 0.1,
        prototype_warmup_epochs: int = 3,
        selection_start_epoch: int = 0,
        seed: int = 0,
        device: str | torch.device = "cpu",
        present_key: str = "present",
        label_key: str = "label",
    ) -> None:
        if not isinstance(network, MaskedFusionTransformer):
            raise TypeError(f"network must be a MaskedFusionTransformer, got {type(network).__name__}.")
        subsets_per_batch = check_int("subsets_per_batch", subsets_per_batch, minimum=1)
        num_subsets = 2**network.num_modalities - 1
        if subsets_per_batch > num_subsets:
            raise ValueError(
                f"subsets_per_batch must be between 1 and the {num_subsets} non-empty subsets of "
                f"{network.num_modalities} modalities, got {subsets_per_batch}."
            )
        learning_rate = check_real("learning_rate", learning_rate, minimum=0.0, strict=True)
        max_epochs = check_int("max_epochs", max_epochs, minimum=1)
        patience = check_int("patience", patience, minimum=1)
        prototype_weight = check_real("prototype_weight", prototype_weight, minimum=0.0, strict=False)
        prototype_temperature = check_real("prototype_temperature", prototype_temperature, minimum=0.0, strict=True)
        prototype_warmup_epochs = check_int("prototype_warmup_epochs", prototype_warmup_epochs, minimum=0)
        selection_start_epoch = check_int("selection_start_epoch", selection_start_epoch, minimum=0)
        if selection_start_epoch >= max_epochs:
            raise ValueError(
                f"selection_start_epoch ({selection_start_epoch}) must be below max_epochs ({max_epochs}), "
                "or no epoch could be kept."
            )
        seed = check_int("seed", seed, minimum=-(2**63))
        if seed >= 2**64:
            raise ValueError(
                f"seed must be in [-2**63, 2**64), the range torch.Generator.manual_seed accepts, got {seed}."
            )
        device = check_device("device", device)
        if present_key == label_key:
            raise ValueError(f"present_key and label_key must differ, got {present_key!r} for both.")

        self.device = device
        self.network = network.to(self.device)
        self.loss = SubsetPrototypeLoss(
            network.embedding,
            prototype_weight=prototype_weight,
            temperature=prototype_temperature,
            warmup_epochs=prototype_warmup_epochs,
        )
        self.subsets_per_batch = subsets_per_batch
        self.learning_rate = learning_rate
        self.max_epochs = max_epochs
        self.patience = patience
        self.selection_start_epoch = selection_start_epoch
        self.seed = seed
        self.present_key = present_key
        self.label_key = label_key
        self.prototypes = torch.zeros(network.num_classes, network.config["projection_dim"], device=self.device)

    def fit(
        self,
        train_batches: Iterable[Batch],
        val_batches: Iterable[Batch],
        checkpoint_path: str | os.PathLike[str] | None = None,
    ) -> TrainingHistory:
        """Train, keep the best epoch by validation metric, restore it and return the history.

        Both batch sources are iterated once per epoch, so they must be re-iterable (a list or a
        ``DataLoader``). If ``checkpoint_path`` is given, a checkpoint with the network, the
        prototypes and ``extra = {"epoch", "metric", "metric_name"}`` is written there whenever
        the validation metric improves.

        Raises:
            TypeError: a batch source is a single batch or a one-shot iterator, or a batch has the
                wrong types (see :func:`~pipeline.networks.batch.unpack_batch`).
            ValueError: a batch does not match the network, or no training batch has a sample
                with a present modality.
            IsADirectoryError: ``checkpoint_path`` is a directory. This is checked before training.
            FloatingPointError: the training loss is not finite. The weights are left as they
                were before that batch.
        """
        check_batch_source("train_batches", train_batches)
        check_batch_source("val_batches", val_batches)
        check_reiterable(train_batches, "train_batches")
        check_reiterable(val_batches, "val_batches")
        if checkpoint_path is not None:
            check_checkpoint_path(checkpoint_path)

        generator = torch.Generator().manual_seed(self.seed)
        global_seed = int(torch.randint(2**62, (1,), generator=generator))
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.learning_rate, weight_decay=0.0)
        accumulator = ClassPrototypeAccumulator(self.network.num_classes, self.prototypes.shape[1], self.device)
        self.prototypes = accumulator.prototypes.clone()

        history = TrainingHistory()
        best_state: dict[str, torch.Tensor] = {}
        best_prototypes = self.prototypes
        epochs_without_improvement = 0

        with _forked_global_rng(self.device):
            torch.manual_seed(global_seed)
            for epoch in range(self.max_epochs):
                losses = self._train_epoch(train_batches, epoch, optimizer, accumulator, generator)
                self.prototypes = accumulator.end_epoch()
                validation = self.evaluate(val_batches, warn_on_fallback=epoch == 0)
                _record_epoch(history, losses, validation)

                # best_metric starts as NaN, so the first eligible epoch is always the first best.
                eligible = epoch >= self.selection_start_epoch
                improved = eligible and (math.isnan(history.best_metric) or validation.metric > history.best_metric)
                if improved:
                    history.best_epoch, history.best_metric = epoch, validation.metric
                    best_state = {name: value.detach().clone() for name, value in self.network.state_dict().items()}
                    best_prototypes = self.prototypes.clone()
                    epochs_without_improvement = 0
                    if checkpoint_path is not None:
                        self._save(checkpoint_path, epoch, validation)
                elif eligible:
                    epochs_without_improvement += 1

                self._log_epoch(epoch, losses, validation, history)
                if epochs_without_improvement >= self.patience:
                    history.stopped_early = True
                    logger.info("stopping early: no improvement for %d epochs", self.patience)
                    break

        self.network.load_state_dict(best_state)
        self.prototypes = best_prototypes
        logger.info(
            "restored the weights of epoch %d (validation %s %.4f)",
            history.best_epoch,
            history.val_metric_name,
            history.best_metric,
        )
        return history

    def evaluate(self, val_batches: Iterable[Batch], warn_on_fallback: bool = True) -> PooledValidation:
        """Score the network on ``val_batches``, pooled over every subset each sample has."""
        return evaluate_pooled(
            self.network,
            val_batches,
            present_key=self.present_key,
            label_key=self.label_key,
            device=self.device,
            warn_on_fallback=warn_on_fallback,
        )

    def _train_epoch(
        self,
        batches: Iterable[Batch],
        epoch: int,
        optimizer: torch.optim.Optimizer,
        accumulator: ClassPrototypeAccumulator,
        generator: torch.Generator,
    ) -> _EpochLosses:
        self.network.train()
        weighted_sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # total, classification, prototype
        num_rows = 0
        num_batches = 0
        skipped_batches = 0

        for batch_index, batch in enumerate(batches):
            num_batches += 1
            step = self._train_step(batch, epoch, batch_index, optimizer, generator)
            if step is None:
                skipped_batches += 1
                continue
            terms, embeddings, row_labels = step

            accumulator.accumulate(embeddings, row_labels)
            weighted_sums += torch.stack(terms).detach().double() * row_labels.numel()
            num_rows += row_labels.numel()

        if skipped_batches:
            logger.warning(
                "epoch %d: skipped %d batches in which no sample has a present modality", epoch, skipped_batches
            )
        if num_batches == 0:
            raise ValueError("train_batches is empty, so there is nothing to train on.")
        if num_rows == 0:
            raise ValueError(
                "train_batches contain no sample with a present modality, so there is nothing to train on."
            )
        total, classification, prototype = (weighted_sums / num_rows).tolist()
        return _EpochLosses(total, classification, prototype)

    def _train_step(
        self,
        batch: Batch,
        epoch: int,
        batch_index: int,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
    ) -> tuple[LossTerms, torch.Tensor, torch.Tensor] | None:
        """Take one optimiser step on ``A`` subsets per sample.

        Returns the loss terms, the detached embeddings ``(R, P)`` and the labels ``(R,)`` of the
        valid sample-subset pairs, or ``None`` (and no step) if the batch has none. Raises
        ``FloatingPointError`` before the step if the loss is not finite.
        """
        inputs, present_mask, labels = unpack_batch(
            batch, self.network, present_key=self.present_key, label_key=self.label_key, device=self.device
        )
        masks, valid = sample_subsets(present_mask.cpu(), self.subsets_per_batch, generator)  # (A, B, M), (A, B)
        rows = valid.flatten().nonzero().flatten()  # (R,) positions a * B + b in the stacked draws
        if rows.numel() == 0:
            return None
        sample_index = (rows % present_mask.shape[0]).to(self.device)  # (R,)
        row_masks = masks.flatten(0, 1)[rows].to(self.device)  # (R, M)
        row_labels = labels.to(self.device)[sample_index]  # (R,)

        # With the mask, placeholders of absent modalities never reach an encoder.
        tokens = self.network.encode(inputs, present_mask.to(self.device))  # (B, N, D)
        fused = self.network.fuse(tokens[sample_index], row_masks)  # (R, D)
        logits, embeddings = self.network.classify(fused)  # (R, K), (R, P)
        terms = self.loss(logits, embeddings, row_labels, self.prototypes, epoch)
        if not torch.isfinite(terms.total):
            raise FloatingPointError(
                f"training loss is {terms.total.item()} at epoch {epoch}, batch {batch_index}. "
                "Check the inputs of present modalities for NaN or lower learning_rate."
            )

        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        optimizer.step()
        return terms, embeddings.detach(), row_labels

    def _log_epoch(
        self, epoch: int, losses: _EpochLosses, validation: PooledValidation, history: TrainingHistory
    ) -> None:
        prototype_note = "" if self.loss.prototype_active(epoch) else ", not yet in the loss"
        if history.best_epoch < 0:
            best_note = f"no epoch kept before epoch {self.selection_start_epoch}"
        else:
            best_note = f"best {history.best_metric:.4f} at epoch {history.best_epoch}"
        logger.info(
            "epoch %d/%d: train loss %.4f (classification %.4f, prototype %.4f%s), validation %s %.4f (%s)",
            epoch,
            self.max_epochs - 1,
            losses.total,
            losses.classification,
            losses.prototype,
            prototype_note,
            validation.metric_name,
            validation.metric,
            best_note,
        )

    def _save(self, checkpoint_path: str | os.PathLike[str], epoch: int, validation: PooledValidation) -> None:
        save_checkpoint(
            checkpoint_path,
            self.network,
            prototypes=self.prototypes,
            extra={"epoch": epoch, "metric": validation.metric, "metric_name": validation.metric_name},
        )


def _record_epoch(history: TrainingHistory, losses: _EpochLosses, validation: PooledValidation) -> None:
    history.train_loss.append(losses.total)
    history.classification_loss.append(losses.classification)
    history.prototype_loss.append(losses.prototype)
    history.val_metric.append(validation.metric)
    history.val_metric_name = validation.metric_name


def _forked_global_rng(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Fork the global CPU RNG, and that of ``device`` if it is an accelerator, until the block ends."""
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    index = device.index
    if index is None:
        index = torch.cuda.current_device() if device.type == "cuda" else 0
    return torch.random.fork_rng(devices=[index], device_type=device.type)
