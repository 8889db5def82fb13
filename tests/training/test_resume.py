"""Tests for resuming SubsetTrainer.fit from its training-state file after an interruption."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import torch

from pipeline.networks import MaskedFusionTransformer
from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.prototypes import ClassPrototypeAccumulator
from pipeline.training.trainer import SubsetTrainer
from pipeline.training.training_state import TRAINING_STATE_FORMAT
from pipeline.workflows.training import _EpochShuffler
from tests.conftest import make_batches

TRAINER_SETTINGS = {
    "learning_rate": 1e-2,
    "max_epochs": 5,
    "patience": 5,
    "prototype_warmup_epochs": 1,
    "selection_start_epoch": 1,
    "seed": 7,
}


def dropout_network(seed: int = 0) -> MaskedFusionTransformer:
    """Build a two-modality network with dropout, so that resuming must restore the global RNG too."""
    torch.manual_seed(seed)
    modalities = [{"name": name, "encoder": "features", "in_features": 4, "out_features": 8} for name in "ab"]
    return MaskedFusionTransformer(
        modalities, num_classes=2, dim=16, depth=1, heads=2, projection_dim=8, dropout=0.2
    )


class InterruptedBatches:
    """Real training batches that raise KeyboardInterrupt at batch ``batch`` of epoch ``epoch`` (never if None).

    ``state_dict`` and ``load_state_dict`` pass through to the wrapped source when it has them.
    """

    def __init__(self, source: Iterable[dict[str, Any]], epoch: int | None = None, batch: int = 0) -> None:
        self.source = source
        self.epoch = epoch
        self.batch = batch
        self.epochs_started = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.epochs_started
        self.epochs_started += 1
        for index, batch in enumerate(self.source):
            if epoch == self.epoch and index == self.batch:
                raise KeyboardInterrupt
            yield batch

    def state_dict(self) -> dict[str, Any] | None:
        return self.source.state_dict() if hasattr(self.source, "state_dict") else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)


def training_source(kind: str, epoch: int | None = None) -> InterruptedBatches:
    batches = make_batches(96, seed=1, batch_size=16)
    if kind == "shuffled":
        return InterruptedBatches(_EpochShuffler(batches, seed=3), epoch=epoch, batch=2)
    return InterruptedBatches(batches, epoch=epoch, batch=2)


def fit(state_path, source, checkpoint_path=None, network_seed: int = 0, **settings) -> SubsetTrainer:
    trainer = SubsetTrainer(dropout_network(network_seed), **{**TRAINER_SETTINGS, **settings})
    trainer.fit(source, make_batches(48, seed=2), checkpoint_path=checkpoint_path, state_path=state_path)
    return trainer


@pytest.mark.parametrize("kind", ["list", "shuffled"])
def test_resumed_training_equals_uninterrupted(kind, tmp_path, caplog):
    reference = fit(None, training_source(kind), checkpoint_path=tmp_path / "reference.pt")
    state_path = tmp_path / "state.pt"

    with pytest.raises(KeyboardInterrupt):
        fit(state_path, training_source(kind, epoch=3), checkpoint_path=tmp_path / "model.pt")
    assert state_path.exists()
    with caplog.at_level(logging.INFO, logger="pipeline.training.trainer"):
        resumed = fit(state_path, training_source(kind), checkpoint_path=tmp_path / "model.pt")

    assert f"resuming training from epoch 3 ({state_path})" in caplog.text
    reference_state = reference.network.state_dict()
    for name, tensor in resumed.network.state_dict().items():
        assert torch.equal(tensor, reference_state[name]), name
    assert torch.equal(resumed.prototypes, reference.prototypes)
    reference_file, _ = load_checkpoint(tmp_path / "reference.pt")
    resumed_file, _ = load_checkpoint(tmp_path / "model.pt")
    for name, tensor in resumed_file.state_dict().items():
        assert torch.equal(tensor, reference_file.state_dict()[name]), name


def test_resumed_history_covers_every_epoch(tmp_path):
    reference = SubsetTrainer(dropout_network(), **TRAINER_SETTINGS)
    expected = reference.fit(training_source("list"), make_batches(48, seed=2))
    state_path = tmp_path / "state.pt"

    with pytest.raises(KeyboardInterrupt):
        fit(state_path, training_source("list", epoch=2))
    trainer = SubsetTrainer(dropout_network(), **TRAINER_SETTINGS)
    history = trainer.fit(training_source("list"), make_batches(48, seed=2), state_path=state_path)

    assert history == expected
    assert history.epochs_run == 5


def test_state_file_is_deleted_after_training(tmp_path):
    state_path = tmp_path / "state.pt"

    fit(state_path, training_source("list"))

    assert not state_path.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_kept_state_loads_as_weights_only(tmp_path):
    state_path = tmp_path / "state.pt"
    trainer = SubsetTrainer(dropout_network(), **TRAINER_SETTINGS)

    trainer.fit(training_source("shuffled"), make_batches(48, seed=2), state_path=state_path, keep_state=True)
    contents = torch.load(state_path, weights_only=True)

    assert contents["format"] == TRAINING_STATE_FORMAT
    assert contents["state"]["completed"] is True
    assert contents["state"]["next_epoch"] == 5
    assert isinstance(contents["state"]["batch_source"]["bit_generator"], str)
    assert contents["fingerprint"]["trainer"]["seed"] == 7
    assert contents["fingerprint"]["processes"] == 1


def test_finished_state_is_restored_without_training(tmp_path, caplog):
    state_path = tmp_path / "state.pt"
    first = SubsetTrainer(dropout_network(), **TRAINER_SETTINGS)
    expected = first.fit(training_source("list"), make_batches(48, seed=2), state_path=state_path, keep_state=True)
    never_iterated = InterruptedBatches(make_batches(96, seed=1, batch_size=16), epoch=0, batch=0)

    second = SubsetTrainer(dropout_network(), **TRAINER_SETTINGS)
    with caplog.at_level(logging.INFO, logger="pipeline.training.trainer"):
        history = second.fit(never_iterated, make_batches(48, seed=2), state_path=state_path)

    assert "records a finished training of 5 epochs" in caplog.text
    assert history == expected
    assert never_iterated.epochs_started == 0
    for name, tensor in second.network.state_dict().items():
        assert torch.equal(tensor, first.network.state_dict()[name]), name
    assert torch.equal(second.prototypes, first.prototypes)
    assert not state_path.exists()


def test_state_of_other_settings_is_rejected(tmp_path):
    state_path = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(state_path, training_source("list", epoch=2))

    with pytest.raises(ValueError, match="learning_rate is 0.01 in the file but 0.001 now") as error:
        fit(state_path, training_source("list"), learning_rate=1e-3)

    assert str(state_path) in str(error.value)
    assert "Delete" in str(error.value)
    assert state_path.exists()


def test_state_of_other_network_is_rejected(tmp_path):
    state_path = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(state_path, training_source("list", epoch=2))

    with pytest.raises(ValueError, match=r"belongs to another training run: network is "):
        fit(state_path, training_source("list"), network_seed=1)


def test_state_of_other_data_is_rejected(tmp_path):
    state_path = tmp_path / "state.pt"
    trainer = SubsetTrainer(dropout_network(), **TRAINER_SETTINGS)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(
            training_source("list", epoch=2), make_batches(48, seed=2), state_path=state_path,
            data_fingerprint={"cohort": "a"},
        )

    trainer = SubsetTrainer(dropout_network(), **TRAINER_SETTINGS)
    with pytest.raises(ValueError, match="data.cohort is 'a' in the file but 'b' now"):
        trainer.fit(
            training_source("list"), make_batches(48, seed=2), state_path=state_path, data_fingerprint={"cohort": "b"}
        )


def test_state_of_other_batch_source_is_rejected(tmp_path):
    state_path = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(state_path, training_source("list", epoch=2))

    with pytest.raises(ValueError, match="batch_source is 'tests.training.test_resume.InterruptedBatches'"):
        fit(state_path, make_batches(96, seed=1, batch_size=16))


def test_damaged_state_file_is_rejected(tmp_path):
    state_path = tmp_path / "state.pt"
    state_path.write_bytes(b"not a torch file")

    with pytest.raises(ValueError, match="is not a readable training-state file") as error:
        fit(state_path, training_source("list"))

    assert f"Delete {state_path}" in str(error.value)


def test_checkpoint_is_not_a_state_file(tmp_path):
    state_path = tmp_path / "state.pt"
    trainer = fit(None, training_source("list"), checkpoint_path=state_path)

    with pytest.raises(ValueError, match="expected format 'pipeline.training_state', got 'pipeline.checkpoint'"):
        trainer.fit(training_source("list"), make_batches(48, seed=2), state_path=state_path)


def test_non_plain_data_fingerprint_is_rejected(tmp_path):
    trainer = SubsetTrainer(dropout_network(), **TRAINER_SETTINGS)

    with pytest.raises(TypeError, match="data_fingerprint"):
        trainer.fit(
            training_source("list"), make_batches(48, seed=2), state_path=tmp_path / "state.pt",
            data_fingerprint={"digest": object()},
        )


def test_directory_state_path_is_rejected(tmp_path):
    trainer = SubsetTrainer(dropout_network(), **TRAINER_SETTINGS)

    with pytest.raises(IsADirectoryError):
        trainer.fit(training_source("list"), make_batches(48, seed=2), state_path=tmp_path)


def test_shuffler_state_repeats_next_epoch():
    shuffler = _EpochShuffler(make_batches(96, seed=1, batch_size=16), seed=3)
    list(shuffler)
    state = shuffler.state_dict()
    expected = [batch["label"].tolist() for batch in shuffler]

    restored = _EpochShuffler(make_batches(96, seed=1, batch_size=16), seed=99)
    restored.load_state_dict(state)

    assert [batch["label"].tolist() for batch in restored] == expected


def test_invalid_shuffler_state_is_rejected():
    shuffler = _EpochShuffler(make_batches(32, seed=1), seed=3)

    with pytest.raises(ValueError, match="batch source state"):
        shuffler.load_state_dict({"bit_generator": "{}"})


def test_accumulator_state_round_trip():
    accumulator = ClassPrototypeAccumulator(num_classes=2, embedding_dim=3)
    accumulator.accumulate(torch.arange(6.0).reshape(2, 3), torch.tensor([0, 1]))
    accumulator.end_epoch()
    accumulator.accumulate(torch.ones(1, 3), torch.tensor([1]))

    restored = ClassPrototypeAccumulator(num_classes=2, embedding_dim=3)
    restored.load_state_dict(accumulator.state_dict())

    assert torch.equal(restored.prototypes, accumulator.prototypes)
    assert torch.equal(restored.counts, accumulator.counts)
    assert torch.equal(restored.end_epoch(), accumulator.end_epoch())


def test_accumulator_state_of_other_shape_is_rejected():
    state = ClassPrototypeAccumulator(num_classes=3, embedding_dim=3).state_dict()

    with pytest.raises(ValueError, match=r"'prototypes' must be a tensor of shape \(2, 3\), got \(3, 3\)"):
        ClassPrototypeAccumulator(num_classes=2, embedding_dim=3).load_state_dict(state)
