"""Training of a :class:`MaskedFusionTransformer` on random modality subsets with the prototype loss.

Shape letters: ``B`` batch, ``M`` modalities, ``N`` tokens, ``D`` width, ``P`` embedding width,
``K`` classes, ``S`` subsets, ``A`` subsets drawn per sample, ``R`` valid sample-subset pairs
(``R = A * B`` with complete data).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline import distributed
from pipeline.networks.batch import check_reiterable, unpack_batch
from pipeline.networks.fingerprint import network_fingerprint
from pipeline.networks.fusion import MaskedFusionTransformer
from pipeline.training.argument_checks import check_batch_source, check_device, check_int, check_real
from pipeline.training.checkpoint import check_checkpoint_path, check_plain_value, save_checkpoint
from pipeline.training.losses import LossTerms, SubsetPrototypeLoss
from pipeline.training.prototypes import ClassPrototypeAccumulator
from pipeline.training.subset_sampling import sample_subsets
from pipeline.training.training_state import load_training_state, save_training_state
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


@dataclass
class _Progress:
    """State of :meth:`SubsetTrainer.fit` carried from one epoch to the next, besides weights and optimiser."""

    history: TrainingHistory
    best_state: dict[str, torch.Tensor]
    best_prototypes: torch.Tensor
    epochs_without_improvement: int = 0
    next_epoch: int = 0
    completed: bool = False


class _SubsetForward(nn.Module):
    """The forward pass of a training step as one module call: encode, fuse the drawn subsets, classify.

    DistributedDataParallel averages gradients over processes only for what runs inside its
    module's ``forward``, so the three stages of the network run inside this one.
    """

    def __init__(self, network: MaskedFusionTransformer) -> None:
        super().__init__()
        self.network = network

    def forward(
        self,
        inputs: Mapping[str, Any],
        present_mask: torch.Tensor,
        sample_index: torch.Tensor,
        row_masks: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return logits ``(R, K)`` and embeddings ``(R, P)`` of rows ``sample_index`` ``(R,)`` under ``row_masks`` ``(R, M)``.

        Each encoder reads only the samples that ``present_mask`` ``(B, M)`` marks as having its
        modality, so placeholders of absent modalities never reach an encoder.
        """
        tokens = self.network.encode(inputs, present_mask)  # (B, N, D)
        fused = self.network.fuse(tokens[sample_index], row_masks)  # (R, D)
        return self.network.classify(fused)


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

    :meth:`fit` can write a training-state file after every epoch and continue from it after an
    interruption. Under ``torchrun`` it trains one copy of the network per process with
    ``DistributedDataParallel`` (see :meth:`fit`).

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
        state_path: str | os.PathLike[str] | None = None,
        *,
        keep_state: bool = False,
        data_fingerprint: Mapping[str, Any] | None = None,
    ) -> TrainingHistory:
        """Train, keep the best epoch by validation metric, restore it and return the history.

        Both batch sources are iterated once per epoch, so they must be re-iterable (a list or a
        ``DataLoader``). If ``checkpoint_path`` is given, a checkpoint with the network, the
        prototypes and ``extra = {"epoch", "metric", "metric_name"}`` is written there whenever
        the validation metric improves.

        If ``state_path`` is given, the training state (see :mod:`~pipeline.training.training_state`)
        is written there atomically at the end of every epoch. When that file exists at the start
        and belongs to this run, training continues after its last epoch and ends with the
        same weights and prototypes as an uninterrupted run (bit-identical on the CPU). When the
        file records a finished training, its best weights and prototypes are restored without
        training. The file is deleted at the end unless ``keep_state`` is true.

        A run belongs to a file when the network fingerprint at the start of training, the
        trainer's settings and seed, the number of processes, the type of ``train_batches`` and
        ``data_fingerprint`` equal those stored in it. The caller describes the data in
        ``data_fingerprint`` (plain values, e.g. a digest of the cohort and the batch size),
        because the trainer cannot tell whether a batch source changed. A ``train_batches`` with
        its own random state must provide ``state_dict()`` and ``load_state_dict(state)`` for the
        resumed epochs to match, returning plain values. A ``DataLoader`` that shuffles without
        its own ``generator`` draws from the global torch RNG, which the state file restores.

        In a process group started by ``torchrun`` (see :mod:`pipeline.distributed`), every
        process calls :meth:`fit` with its own share of the training batches. Gradients are
        averaged over the processes by ``DistributedDataParallel``, prototypes are the class
        means over all processes, rank 0 alone computes the validation metric and shares it,
        and rank 0 alone writes the checkpoint and the state file. Processes may have different
        numbers of batches in an epoch, but then the processes with fewer batches contribute
        zero gradients for the remaining steps. BatchNorm layers use the statistics of each
        process's own batch (no SyncBatchNorm), so the two-images rule holds per process.

        Raises:
            TypeError: a batch source is a single batch or a one-shot iterator, a batch has the
                wrong types (see :func:`~pipeline.networks.batch.unpack_batch`), or
                ``data_fingerprint`` contains a value other than plain values and tensors.
            ValueError: a batch does not match the network, no training batch has a sample
                with a present modality, or the file at ``state_path`` is unreadable or belongs
                to another run (the message says to delete it).
            IsADirectoryError: ``checkpoint_path`` or ``state_path`` is a directory. This is
                checked before training.
            FloatingPointError: the training loss is not finite. The weights are left as they
                were before that batch.
        """
        check_batch_source("train_batches", train_batches)
        check_batch_source("val_batches", val_batches)
        check_reiterable(train_batches, "train_batches")
        check_reiterable(val_batches, "val_batches")
        if checkpoint_path is not None:
            check_checkpoint_path(checkpoint_path)
        fingerprint = None
        if state_path is not None:
            state_path = check_checkpoint_path(state_path)
            fingerprint = self._state_fingerprint(train_batches, data_fingerprint)

        generator, global_seed = self._seed_generators()
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.learning_rate, weight_decay=0.0)
        accumulator = ClassPrototypeAccumulator(self.network.num_classes, self.prototypes.shape[1], self.device)
        self.prototypes = accumulator.prototypes.clone()
        progress = _Progress(TrainingHistory(), {}, self.prototypes)

        with _forked_global_rng(self.device):
            torch.manual_seed(global_seed)
            if state_path is not None:
                stored = load_training_state(state_path, fingerprint)
                if stored is not None:
                    progress = self._restore(stored, state_path, optimizer, accumulator, generator, train_batches)
            forward = self._forward_module()

            epochs = range(0) if progress.completed else range(progress.next_epoch, self.max_epochs)
            for epoch in epochs:
                self._run_epoch(
                    epoch, train_batches, val_batches, optimizer, accumulator, generator, forward, progress, checkpoint_path
                )
                progress.next_epoch = epoch + 1
                progress.completed = progress.history.stopped_early or progress.next_epoch == self.max_epochs
                if state_path is not None:
                    self._save_state(state_path, fingerprint, progress, optimizer, accumulator, generator, train_batches)
                if progress.history.stopped_early:
                    break

        history = progress.history
        self.network.load_state_dict(progress.best_state)
        self.prototypes = progress.best_prototypes.to(self.device)
        if distributed.is_main_process():
            logger.info(
                "restored the weights of epoch %d (validation %s %.4f)",
                history.best_epoch,
                history.val_metric_name,
                history.best_metric,
            )
        if state_path is not None and not keep_state and distributed.is_main_process():
            state_path.unlink(missing_ok=True)
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

    def _run_epoch(
        self,
        epoch: int,
        train_batches: Iterable[Batch],
        val_batches: Iterable[Batch],
        optimizer: torch.optim.Optimizer,
        accumulator: ClassPrototypeAccumulator,
        generator: torch.Generator,
        forward: nn.Module,
        progress: _Progress,
        checkpoint_path: str | os.PathLike[str] | None,
    ) -> None:
        """Train one epoch, validate, update the best epoch and the early-stopping count in ``progress``."""
        losses = self._train_epoch(train_batches, epoch, optimizer, accumulator, generator, forward)
        self.prototypes = accumulator.end_epoch()
        validation = self._shared_validation(val_batches, warn_on_fallback=epoch == progress.next_epoch)
        history = progress.history
        _record_epoch(history, losses, validation)

        # best_metric starts as NaN, so the first eligible epoch is always the first best.
        eligible = epoch >= self.selection_start_epoch
        improved = eligible and (math.isnan(history.best_metric) or validation.metric > history.best_metric)
        if improved:
            history.best_epoch, history.best_metric = epoch, validation.metric
            progress.best_state = {name: value.detach().clone() for name, value in self.network.state_dict().items()}
            progress.best_prototypes = self.prototypes.clone()
            progress.epochs_without_improvement = 0
            if checkpoint_path is not None and distributed.is_main_process():
                self._save(checkpoint_path, epoch, validation)
        elif eligible:
            progress.epochs_without_improvement += 1

        if distributed.is_main_process():
            self._log_epoch(epoch, losses, validation, history)
        if progress.epochs_without_improvement >= self.patience:
            history.stopped_early = True
            if distributed.is_main_process():
                logger.info("stopping early: no improvement for %d epochs", self.patience)

    def _shared_validation(self, val_batches: Iterable[Batch], warn_on_fallback: bool) -> PooledValidation:
        """Validate on rank 0 and give its result to every process, so that all decide alike."""
        if not distributed.is_distributed():
            return self.evaluate(val_batches, warn_on_fallback=warn_on_fallback)
        validation = self.evaluate(val_batches, warn_on_fallback=warn_on_fallback) if distributed.is_main_process() else None
        return distributed.all_gather_objects(validation)[0]

    def _seed_generators(self) -> tuple[torch.Generator, int]:
        """Return the generator of subset draws and the seed of the global torch RNG for this process.

        Rank 0, and a single process, use the streams derived from ``seed`` alone. Every other
        rank derives its own from them, so that processes draw different subsets and dropout masks.
        """
        generator = torch.Generator().manual_seed(self.seed)
        global_seed = int(torch.randint(2**62, (1,), generator=generator))
        rank = distributed.rank()
        if rank > 0:
            offset = torch.Generator().manual_seed(global_seed + rank)
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=offset)))
            global_seed = int(torch.randint(2**62, (1,), generator=offset))
        return generator, global_seed

    def _forward_module(self) -> nn.Module:
        """Return the step's forward module, wrapped in DistributedDataParallel in a process group."""
        forward = _SubsetForward(self.network)
        if not distributed.is_distributed():
            return forward
        device_ids = None
        if self.device.type == "cuda":
            device_ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        # A batch without any image leaves the image encoder unused on that process for that step.
        return DistributedDataParallel(forward, device_ids=device_ids, find_unused_parameters=True)

    def _train_epoch(
        self,
        batches: Iterable[Batch],
        epoch: int,
        optimizer: torch.optim.Optimizer,
        accumulator: ClassPrototypeAccumulator,
        generator: torch.Generator,
        forward: nn.Module | None = None,
    ) -> _EpochLosses:
        """Train one epoch with ``forward`` (by default the unwrapped network) and return its mean losses."""
        if forward is None:
            forward = _SubsetForward(self.network)
        self.network.train()
        weighted_sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # total, classification, prototype
        num_rows = 0
        num_batches = 0
        skipped_batches = 0

        # Join lets a process that runs out of batches stand in for the missing gradient reductions.
        join = forward.join() if isinstance(forward, DistributedDataParallel) else contextlib.nullcontext()
        with join:
            for batch_index, batch in enumerate(batches):
                num_batches += 1
                step = self._train_step(batch, epoch, batch_index, forward, optimizer, generator)
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
        # Sums over all processes, so that every process raises alike and logs the same losses.
        counts = distributed.all_reduce_sum(
            torch.tensor([num_batches, num_rows], dtype=torch.float64, device=self.device)
        )
        weighted_sums = distributed.all_reduce_sum(weighted_sums)
        if counts[0] == 0:
            raise ValueError("train_batches is empty, so there is nothing to train on.")
        if counts[1] == 0:
            raise ValueError(
                "train_batches contain no sample with a present modality, so there is nothing to train on."
            )
        total, classification, prototype = (weighted_sums / counts[1]).tolist()
        return _EpochLosses(total, classification, prototype)

    def _train_step(
        self,
        batch: Batch,
        epoch: int,
        batch_index: int,
        forward: nn.Module,
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

        logits, embeddings = forward(inputs, present_mask.to(self.device), sample_index, row_masks)  # (R, K), (R, P)
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

    def _state_fingerprint(self, train_batches: Iterable[Batch], data_fingerprint: Mapping[str, Any] | None) -> dict[str, Any]:
        """Return the plain values that a training-state file must match to be resumed."""
        data = dict(data_fingerprint or {})
        check_plain_value(data, "data_fingerprint")
        return {
            "network": network_fingerprint(self.network),
            "trainer": {
                "subsets_per_batch": self.subsets_per_batch,
                "learning_rate": self.learning_rate,
                "max_epochs": self.max_epochs,
                "patience": self.patience,
                "prototype_weight": self.loss.prototype_weight,
                "prototype_temperature": self.loss.temperature,
                "prototype_warmup_epochs": self.loss.warmup_epochs,
                "selection_start_epoch": self.selection_start_epoch,
                "seed": self.seed,
                "present_key": self.present_key,
                "label_key": self.label_key,
            },
            "processes": distributed.world_size(),
            "batch_source": f"{type(train_batches).__module__}.{type(train_batches).__qualname__}",
            "data": data,
        }

    def _save_state(
        self,
        state_path: Path,
        fingerprint: Mapping[str, Any] | None,
        progress: _Progress,
        optimizer: torch.optim.Optimizer,
        accumulator: ClassPrototypeAccumulator,
        generator: torch.Generator,
        train_batches: Iterable[Batch],
    ) -> None:
        """Write the state after an epoch (rank 0), with the random-number-generator states of every process."""
        random_states = distributed.all_gather_objects(self._random_state(generator))
        if not distributed.is_main_process():
            return
        batch_source = train_batches.state_dict() if hasattr(train_batches, "state_dict") else None
        state = {
            "next_epoch": progress.next_epoch,
            "completed": progress.completed,
            "network": self.network.state_dict(),
            "optimizer": optimizer.state_dict(),
            "accumulator": accumulator.state_dict(),
            "history": dataclasses.asdict(progress.history),
            "best_state": progress.best_state,
            "best_prototypes": progress.best_prototypes,
            "epochs_without_improvement": progress.epochs_without_improvement,
            "random_states": random_states,
            "batch_source": batch_source,
        }
        save_training_state(state_path, state, fingerprint or {})

    def _random_state(self, generator: torch.Generator) -> dict[str, torch.Tensor | None]:
        """Return this process's generator of subset draws, global CPU RNG and device RNG states."""
        device_state = None
        if self.device.type == "cuda":
            device_state = torch.cuda.get_rng_state(self.device)
        return {"generator": generator.get_state(), "torch": torch.get_rng_state(), "device": device_state}

    def _restore(
        self,
        stored: Mapping[str, Any],
        state_path: Path,
        optimizer: torch.optim.Optimizer,
        accumulator: ClassPrototypeAccumulator,
        generator: torch.Generator,
        train_batches: Iterable[Batch],
    ) -> _Progress:
        """Load a state written by :meth:`_save_state` into the network, optimiser, RNGs and batch source."""
        self.network.load_state_dict(stored["network"])
        optimizer.load_state_dict(stored["optimizer"])
        accumulator.load_state_dict(stored["accumulator"])
        self.prototypes = accumulator.prototypes.clone()

        random_state = stored["random_states"][distributed.rank()]
        generator.set_state(random_state["generator"])
        torch.set_rng_state(random_state["torch"])
        if self.device.type == "cuda" and random_state["device"] is not None:
            torch.cuda.set_rng_state(random_state["device"], self.device)
        if stored["batch_source"] is not None:
            train_batches.load_state_dict(stored["batch_source"])

        progress = _Progress(
            history=TrainingHistory(**stored["history"]),
            best_state=dict(stored["best_state"]),
            best_prototypes=stored["best_prototypes"].to(self.device),
            epochs_without_improvement=int(stored["epochs_without_improvement"]),
            next_epoch=int(stored["next_epoch"]),
            completed=bool(stored["completed"]),
        )
        if progress.completed:
            logger.info(
                "training state %s records a finished training of %d epochs; restoring it without training",
                state_path,
                progress.next_epoch,
            )
        else:
            logger.info("resuming training from epoch %d (%s)", progress.next_epoch, state_path)
        return progress

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
