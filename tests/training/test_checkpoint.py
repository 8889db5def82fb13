"""Tests for checkpoint files: round trip, safe loading and the documented errors."""

from __future__ import annotations

import pickle

import pytest
import torch

import pipeline.training.checkpoint as checkpoint_module
from pipeline.training.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint

PAYLOAD_CALLS: list[str] = []


def record_payload_call() -> str:
    PAYLOAD_CALLS.append("called")
    return "payload"


class Payload:
    """An object whose unpickling calls :func:`record_payload_call`."""

    def __reduce__(self):
        return (record_payload_call, ())


@pytest.fixture
def saved(network_factory, tmp_path):
    network = network_factory("euclidean")
    prototypes = torch.randn(2, 8)
    path = tmp_path / "model.pt"
    save_checkpoint(path, network, prototypes=prototypes, extra={"epoch": 4, "metric": 0.75, "tags": ["a", 1]})
    return network, prototypes, path


def rewrite(path, change) -> None:
    """Load the checkpoint at ``path``, apply ``change`` to its dict and save it back."""
    contents = torch.load(path, weights_only=True)
    change(contents)
    torch.save(contents, path)


def test_round_trip_gives_identical_outputs(saved):
    network, prototypes, path = saved
    inputs = {"a": torch.randn(5, 4), "b": torch.randn(5, 4)}
    present = torch.tensor([[True, True], [True, False], [False, True], [True, True], [True, False]])

    loaded, contents = load_checkpoint(path)

    network.eval()
    expected_logits, expected_embeddings = network(inputs, present)
    logits, embeddings = loaded(inputs, present)
    assert torch.equal(logits, expected_logits)
    assert torch.equal(embeddings, expected_embeddings)
    assert not loaded.training
    assert loaded.config == network.config
    assert torch.equal(contents["prototypes"], prototypes)
    assert contents["extra"] == {"epoch": 4, "metric": 0.75, "tags": ["a", 1]}
    assert contents["format"] == CHECKPOINT_FORMAT


def test_checkpoint_without_prototypes(network_factory, tmp_path):
    path = save_checkpoint(tmp_path / "nested" / "model.pt", network_factory())

    _, contents = load_checkpoint(path)

    assert contents["prototypes"] is None
    assert contents["extra"] == {}


def test_save_leaves_no_temporary_file(saved):
    _, _, path = saved

    assert [entry.name for entry in path.parent.iterdir()] == ["model.pt"]


def test_failed_save_keeps_previous_file(saved, network_factory, monkeypatch):
    _, _, path = saved
    before = path.read_bytes()

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, network_factory(seed=1))

    assert path.read_bytes() == before
    assert [entry.name for entry in path.parent.iterdir()] == ["model.pt"]


def test_loading_runs_no_code_from_the_file(saved):
    _, _, path = saved
    PAYLOAD_CALLS.clear()
    contents = torch.load(path, weights_only=True)
    contents["extra"] = {"payload": Payload()}
    with open(path, "wb") as file:
        pickle.dump(contents, file, protocol=2)

    with pytest.raises(ValueError, match=str(path)):
        load_checkpoint(path)

    assert PAYLOAD_CALLS == []


def test_missing_file_is_rejected(tmp_path):
    path = tmp_path / "absent.pt"

    with pytest.raises(FileNotFoundError, match=str(path)):
        load_checkpoint(path)


def test_corrupt_file_is_rejected(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(bytes(range(256)) * 4)

    with pytest.raises(ValueError, match=str(path)):
        load_checkpoint(path)


def test_truncated_file_is_rejected(saved):
    _, _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(ValueError, match=str(path)):
        load_checkpoint(path)


def test_foreign_file_is_rejected(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"model": {"weight": torch.zeros(2)}}, path)

    with pytest.raises(ValueError, match="'format'") as raised:
        load_checkpoint(path)

    assert str(path) in str(raised.value)


def test_non_dict_file_is_rejected(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)

    with pytest.raises(ValueError, match="not a checkpoint") as raised:
        load_checkpoint(path)

    assert str(path) in str(raised.value)


def test_unknown_version_is_rejected(saved):
    _, _, path = saved
    rewrite(path, lambda contents: contents.update(version=2))

    with pytest.raises(ValueError, match="'version'") as raised:
        load_checkpoint(path)

    assert str(path) in str(raised.value)


def test_missing_field_is_rejected(saved):
    _, _, path = saved
    rewrite(path, lambda contents: contents.pop("fingerprint"))

    with pytest.raises(ValueError, match="fingerprint") as raised:
        load_checkpoint(path)

    assert str(path) in str(raised.value)


def test_invalid_config_is_rejected(saved):
    _, _, path = saved
    rewrite(path, lambda contents: contents["config"].update(embedding="manhattan"))

    with pytest.raises(ValueError, match="'config'") as raised:
        load_checkpoint(path)

    assert str(path) in str(raised.value)


def test_mismatched_state_dict_is_rejected(saved):
    _, _, path = saved
    rewrite(path, lambda contents: contents["state_dict"].pop("classifier.weight"))

    with pytest.raises(ValueError, match="'state_dict'") as raised:
        load_checkpoint(path)

    assert str(path) in str(raised.value)


def test_changed_weights_fail_fingerprint(saved):
    _, _, path = saved
    rewrite(path, lambda contents: contents["state_dict"]["classifier.bias"].add_(1.0))

    with pytest.raises(ValueError, match="'fingerprint'") as raised:
        load_checkpoint(path)

    assert str(path) in str(raised.value)


def test_wrong_prototype_shape_in_file_is_rejected(saved):
    _, _, path = saved
    rewrite(path, lambda contents: contents.update(prototypes=torch.zeros(3, 8)))

    with pytest.raises(ValueError, match="'prototypes'") as raised:
        load_checkpoint(path)

    assert str(path) in str(raised.value)


def test_wrong_prototype_shape_is_rejected_on_save(network_factory, tmp_path):
    with pytest.raises(ValueError, match="prototypes"):
        save_checkpoint(tmp_path / "model.pt", network_factory(), prototypes=torch.zeros(2, 3))


def test_non_plain_extra_is_rejected_on_save(network_factory, tmp_path):
    path = tmp_path / "model.pt"

    with pytest.raises(TypeError, match=r"extra\['when'\]"):
        save_checkpoint(path, network_factory(), extra={"when": object()})

    assert not path.exists()


def test_non_network_is_rejected_on_save(tmp_path):
    with pytest.raises(TypeError, match="MaskedFusionTransformer"):
        save_checkpoint(tmp_path / "model.pt", torch.nn.Linear(2, 2))


def test_loading_keeps_global_rng(saved):
    _, _, path = saved
    torch.manual_seed(11)
    before = torch.get_rng_state()

    load_checkpoint(path)

    assert torch.equal(torch.get_rng_state(), before)
