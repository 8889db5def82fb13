"""Tests for random-subset training: learning, call counts, early stopping, seeding."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.trainer import SubsetTrainer
from pipeline.training.validation import PooledValidation


def count_stage_calls(network, stage: str, calls: list[bool]) -> None:
    """Wrap ``network.<stage>`` so that each call appends whether the network was in training mode."""
    original = getattr(network, stage)

    def counted(*args, **kwargs):
        calls.append(network.training)
        return original(*args, **kwargs)

    setattr(network, stage, counted)


@pytest.mark.parametrize("embedding", ["cosine", "euclidean"])
def test_training_learns_synthetic_problem(network_factory, batch_factory, embedding, caplog):
    trainer = SubsetTrainer(network_factory(embedding), learning_rate=1e-2, max_epochs=6, patience=6)

    with caplog.at_level(logging.INFO, logger="pipeline.training.trainer"):
        history = trainer.fit(batch_factory(128, seed=1), batch_factory(64, seed=2))

    assert history.val_metric_name == "roc_auc"
    assert history.best_metric > 0.8
    assert history.best_metric == max(history.val_metric)
    assert history.epochs_run == 6
    assert sum("train loss" in record.getMessage() for record in caplog.records) == 6


def test_history_records_prototype_warmup(network_factory, batch_factory):
    trainer = SubsetTrainer(network_factory(), learning_rate=1e-3, max_epochs=3, patience=3, prototype_warmup_epochs=2)

    history = trainer.fit(batch_factory(64, seed=1), batch_factory(32, seed=2))

    assert history.train_loss[:2] == history.classification_loss[:2]
    assert history.train_loss[2] == pytest.approx(history.classification_loss[2] + history.prototype_loss[2])


def test_encode_and_fuse_run_once_per_batch(network_factory, batch_factory):
    network = network_factory()
    encode_calls: list[bool] = []
    fuse_calls: list[bool] = []
    count_stage_calls(network, "encode", encode_calls)
    count_stage_calls(network, "fuse", fuse_calls)
    train_batches = batch_factory(96, seed=1)  # 3 batches
    val_batches = batch_factory(64, seed=2)  # 2 batches

    SubsetTrainer(network, subsets_per_batch=2, max_epochs=1).fit(train_batches, val_batches)

    assert encode_calls.count(True) == 3
    assert fuse_calls.count(True) == 3
    assert encode_calls.count(False) == 2
    # Validation fuses once per subset: 3 subsets of 2 modalities.
    assert fuse_calls.count(False) == 2 * 3


def test_fusion_rows_stack_draws(network_factory, batch_factory):
    network = network_factory()
    row_counts: list[int] = []
    original_fuse = network.fuse

    def recording_fuse(tokens, present_mask):
        if network.training:
            row_counts.append(tokens.shape[0])
        return original_fuse(tokens, present_mask)

    network.fuse = recording_fuse
    present = torch.ones(32, 2, dtype=torch.bool)
    present[:8, 1] = False  # one subset each, so one valid draw of the three

    SubsetTrainer(network, subsets_per_batch=3, max_epochs=1).fit(
        batch_factory(32, seed=1, present=present), batch_factory(16, seed=2)
    )

    assert row_counts == [8 * 1 + 24 * 3]


def test_early_stopping_restores_best_epoch(network_factory, batch_factory):
    network = network_factory()
    trainer = SubsetTrainer(network, learning_rate=1e-2, max_epochs=20, patience=2)
    metrics = iter([0.9, 0.8, 0.7, 0.6, 0.5])
    states: list[dict[str, torch.Tensor]] = []

    def falling_metric(val_batches, warn_on_fallback=True):
        states.append({name: value.clone() for name, value in network.state_dict().items()})
        return PooledValidation(next(metrics), "roc_auc", 1)

    trainer.evaluate = falling_metric

    history = trainer.fit(batch_factory(64, seed=1), batch_factory(32, seed=2))

    assert history.stopped_early
    assert history.epochs_run == 3
    assert history.best_epoch == 0
    assert history.val_metric == [0.9, 0.8, 0.7]
    for name, value in network.state_dict().items():
        assert torch.equal(value, states[0][name]), name
    assert not torch.equal(states[2]["classifier.weight"], states[0]["classifier.weight"])


def test_selection_start_epoch_skips_early_epochs(network_factory, batch_factory):
    network = network_factory()
    trainer = SubsetTrainer(network, learning_rate=1e-2, max_epochs=20, patience=2, selection_start_epoch=2)
    metrics = iter([0.95, 0.9, 0.6, 0.7, 0.65, 0.64, 0.63])

    def metric_peaking_early(val_batches, warn_on_fallback=True):
        return PooledValidation(next(metrics), "roc_auc", 1)

    trainer.evaluate = metric_peaking_early

    history = trainer.fit(batch_factory(64, seed=1), batch_factory(32, seed=2))

    assert history.best_epoch == 3
    assert history.best_metric == 0.7
    assert history.epochs_run == 6


def test_max_epochs_ends_training(network_factory, batch_factory):
    trainer = SubsetTrainer(network_factory(), max_epochs=2, patience=5)

    history = trainer.fit(batch_factory(32, seed=1), batch_factory(32, seed=2))

    assert history.epochs_run == 2
    assert not history.stopped_early


def test_same_seed_gives_same_weights(network_factory, batch_factory):
    states = []
    for seed in (3, 3, 4):
        network = network_factory(seed=0)
        SubsetTrainer(network, learning_rate=1e-2, max_epochs=2, seed=seed).fit(
            batch_factory(64, seed=1), batch_factory(32, seed=2)
        )
        states.append(network.state_dict())

    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name
    assert any(not torch.equal(states[0][name], states[2][name]) for name in states[0])


def test_fit_restores_global_rng(network_factory, batch_factory):
    trainer = SubsetTrainer(network_factory(), max_epochs=1)
    torch.manual_seed(123)
    before = torch.get_rng_state()

    trainer.fit(batch_factory(32, seed=1), batch_factory(32, seed=2))

    assert torch.equal(torch.get_rng_state(), before)


def test_checkpoint_holds_best_epoch(network_factory, batch_factory, tmp_path):
    network = network_factory()
    trainer = SubsetTrainer(network, learning_rate=1e-2, max_epochs=3, patience=3)
    path = tmp_path / "best.pt"

    history = trainer.fit(batch_factory(64, seed=1), batch_factory(32, seed=2), checkpoint_path=path)

    loaded, contents = load_checkpoint(path)
    assert contents["extra"]["epoch"] == history.best_epoch
    assert contents["extra"]["metric"] == history.best_metric
    assert torch.equal(contents["prototypes"], trainer.prototypes)
    for name, value in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_prototypes_are_class_means_after_fit(network_factory, batch_factory):
    trainer = SubsetTrainer(network_factory("cosine"), max_epochs=1)

    trainer.fit(batch_factory(64, seed=1), batch_factory(32, seed=2))

    assert trainer.prototypes.shape == (2, 8)
    # Means of unit vectors have norm at most 1, and are non-zero once each class was seen.
    norms = trainer.prototypes.norm(dim=1)
    assert (norms > 0).all()
    assert (norms <= 1 + 1e-6).all()


def test_batches_without_modalities_are_rejected(network_factory, batch_factory):
    trainer = SubsetTrainer(network_factory(), max_epochs=1)
    empty = batch_factory(32, seed=1, present=torch.zeros(32, 2, dtype=torch.bool))

    with pytest.raises(ValueError, match="nothing to train on"):
        trainer.fit(empty, batch_factory(32, seed=2))


def test_one_shot_train_batches_are_rejected(network_factory, batch_factory):
    trainer = SubsetTrainer(network_factory(), max_epochs=1)

    with pytest.raises(TypeError, match="train_batches"):
        trainer.fit(iter(batch_factory(32, seed=1)), batch_factory(32, seed=2))


def test_non_network_is_rejected():
    with pytest.raises(TypeError, match="MaskedFusionTransformer"):
        SubsetTrainer(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    ("arguments", "error", "pattern"),
    [
        ({"subsets_per_batch": 0}, ValueError, "subsets_per_batch"),
        ({"subsets_per_batch": 4}, ValueError, "subsets_per_batch"),
        ({"subsets_per_batch": 2.0}, TypeError, "subsets_per_batch"),
        ({"learning_rate": 0.0}, ValueError, "learning_rate"),
        ({"max_epochs": 0}, ValueError, "max_epochs"),
        ({"patience": 0}, ValueError, "patience"),
        ({"selection_start_epoch": 100}, ValueError, "selection_start_epoch"),
        ({"selection_start_epoch": -1}, ValueError, "selection_start_epoch"),
        ({"seed": None}, TypeError, "seed"),
        ({"prototype_weight": -0.5}, ValueError, "prototype_weight"),
        ({"prototype_temperature": 0.0}, ValueError, "prototype_temperature"),
        ({"prototype_warmup_epochs": -1}, ValueError, "prototype_warmup_epochs"),
        ({"present_key": "label"}, ValueError, "present_key"),
        ({"learning_rate": "1e-3"}, TypeError, r"learning_rate must be an int or float, got str '1e-3'.*float\(\)"),
        ({"learning_rate": True}, TypeError, "learning_rate must be an int or float, got bool"),
        ({"learning_rate": float("nan")}, ValueError, "learning_rate must be a finite number > 0.0, got nan"),
        ({"learning_rate": float("inf")}, ValueError, "learning_rate must be a finite number"),
        ({"prototype_weight": "1"}, TypeError, "prototype_weight must be an int or float, got str"),
        ({"prototype_weight": None}, TypeError, "prototype_weight must be an int or float, got NoneType"),
        ({"prototype_temperature": "0.1"}, TypeError, "prototype_temperature must be an int or float, got str"),
        ({"prototype_temperature": -0.1}, ValueError, "prototype_temperature must be a finite number > 0.0"),
        ({"prototype_warmup_epochs": 1.5}, TypeError, "prototype_warmup_epochs must be an int, got float"),
        ({"max_epochs": "10"}, TypeError, "max_epochs must be an int, got str"),
        ({"seed": 2**64}, ValueError, r"seed must be in \[-2\*\*63, 2\*\*64\)"),
        ({"device": "gpu"}, ValueError, "device must name a torch device .* got 'gpu'"),
        ({"device": 0}, TypeError, "device must be a str .* or a torch.device, got int"),
    ],
)
def test_invalid_trainer_arguments_are_rejected(network_factory, arguments, error, pattern):
    with pytest.raises(error, match=pattern):
        SubsetTrainer(network_factory(), **arguments)


def test_shuffled_dataloader_is_reproducible(network_factory, batch_factory):
    samples = []
    for batch in batch_factory(64, seed=1):
        for index in range(batch["label"].shape[0]):
            samples.append({key: value[index] for key, value in batch.items()})
    states = []
    for _ in range(2):
        network = network_factory(seed=0)
        loader = DataLoader(samples, batch_size=16, shuffle=True)
        SubsetTrainer(network, learning_rate=1e-2, max_epochs=2, seed=5).fit(loader, batch_factory(32, seed=2))
        states.append(network.state_dict())

    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name


def test_non_finite_loss_stops_before_step(network_factory, batch_factory):
    network = network_factory()
    trainer = SubsetTrainer(network, max_epochs=1)
    batches = batch_factory(32, seed=1)
    batches[0]["a"][0, 0] = float("nan")
    before = {name: value.clone() for name, value in network.state_dict().items()}

    with pytest.raises(FloatingPointError, match="epoch 0, batch 0"):
        trainer.fit(batches, batch_factory(32, seed=2))

    for name, value in network.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_unavailable_device_is_rejected(network_factory):
    with pytest.raises(ValueError, match="device is 'cuda', but cuda is not available"):
        SubsetTrainer(network_factory(), device="cuda")


def test_numpy_scalar_arguments_are_accepted(network_factory):
    trainer = SubsetTrainer(network_factory(), learning_rate=np.float32(0.5), max_epochs=np.int64(3))

    assert trainer.learning_rate == 0.5
    assert type(trainer.max_epochs) is int


def nan_placeholder_batches(batch_factory, num_samples: int, seed: int, placeholder: float) -> list[dict]:
    """Batches in which the first quarter of the subjects lack modality b, filled with ``placeholder``."""
    present = torch.ones(num_samples, 2, dtype=torch.bool)
    present[: num_samples // 4, 1] = False
    batches = batch_factory(num_samples, seed=seed, batch_size=16, present=present)
    for batch in batches:
        batch["b"][~batch["present"][:, 1]] = placeholder
    return batches


def test_nan_placeholder_trains_finite_weights(network_factory, batch_factory):
    network = network_factory()
    trainer = SubsetTrainer(network, learning_rate=1e-2, max_epochs=2)

    history = trainer.fit(
        nan_placeholder_batches(batch_factory, 64, seed=1, placeholder=float("nan")),
        nan_placeholder_batches(batch_factory, 32, seed=2, placeholder=float("nan")),
    )

    for name, parameter in network.named_parameters():
        assert torch.isfinite(parameter).all(), name
    assert all(math.isfinite(loss) for loss in history.train_loss)
    assert all(math.isfinite(metric) for metric in history.val_metric)


def test_training_encoder_sees_present_rows_only(network_factory, batch_factory):
    network = network_factory()
    rows_seen: list[int] = []
    network.encoders[1].register_forward_pre_hook(lambda module, args: rows_seen.append(args[0].shape[0]))
    present = torch.ones(32, 2, dtype=torch.bool)
    present[:8, 1] = False

    SubsetTrainer(network, max_epochs=1).fit(batch_factory(32, seed=1, present=present), batch_factory(16, seed=2))

    assert rows_seen[0] == 24


def test_single_train_batch_is_rejected(network_factory, batch_factory):
    trainer = SubsetTrainer(network_factory(), max_epochs=1)

    with pytest.raises(TypeError, match="train_batches is a single batch .*Pass a list of batches"):
        trainer.fit(batch_factory(32, seed=1)[0], batch_factory(32, seed=2))


def test_single_val_batch_is_rejected(network_factory, batch_factory):
    trainer = SubsetTrainer(network_factory(), max_epochs=1)

    with pytest.raises(TypeError, match="val_batches is a single batch"):
        trainer.fit(batch_factory(32, seed=1), batch_factory(32, seed=2)[0])


def test_empty_train_batches_are_rejected(network_factory, batch_factory):
    trainer = SubsetTrainer(network_factory(), max_epochs=1)

    with pytest.raises(ValueError, match="train_batches is empty"):
        trainer.fit([], batch_factory(32, seed=2))


def test_directory_checkpoint_path_fails_before_training(network_factory, batch_factory, tmp_path):
    network = network_factory()
    trainer = SubsetTrainer(network, max_epochs=1)
    before = {name: value.clone() for name, value in network.state_dict().items()}

    with pytest.raises(IsADirectoryError, match="is a directory, expected a checkpoint file"):
        trainer.fit(batch_factory(32, seed=1), batch_factory(32, seed=2), checkpoint_path=tmp_path)

    for name, value in network.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_empty_validation_rejected_before_training(network_factory, batch_factory):
    network = network_factory()
    before = {name: value.clone() for name, value in network.state_dict().items()}
    trainer = SubsetTrainer(network, max_epochs=2)

    with pytest.raises(ValueError, match="val_batches is empty; pass at least one batch"):
        trainer.fit(batch_factory(16, seed=0), [])

    assert all(torch.equal(before[name], value) for name, value in network.state_dict().items())
