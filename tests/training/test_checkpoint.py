"""Tests for checkpoint files: round trip, safe loading and the documented errors."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

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


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"model weights, see README\n", id="text-file"),
        pytest.param(b"\x65" * 100, id="repeated-byte"),
        pytest.param(b"\xe5", id="unpickling-error"),
        pytest.param(b"\x80", id="index-error"),
        pytest.param(b"M", id="struct-error"),
        pytest.param(b"PK\x03\x04", id="zip-header-only"),
        pytest.param(b"U\\_\xb6\xa6\xa5", id="unicode-decode-error"),
        pytest.param(b"hg", id="key-error"),
    ],
)
def test_foreign_bytes_are_rejected(tmp_path, data):
    path = tmp_path / "foreign.pt"
    path.write_bytes(data)

    with pytest.raises(ValueError, match="is not a readable checkpoint") as raised:
        load_checkpoint(path)

    assert str(path) in str(raised.value)
    assert "save_checkpoint" in str(raised.value)


def test_load_error_omits_weights_only_advice(tmp_path):
    path = tmp_path / "zeros.pt"
    path.write_bytes(bytes(100))

    with pytest.raises(ValueError, match="Unsupported operand 0") as raised:
        load_checkpoint(path)

    assert "weights_only" not in str(raised.value)


def test_empty_file_is_rejected(tmp_path):
    path = tmp_path / "empty.pt"
    path.touch()

    with pytest.raises(ValueError, match="the file is empty") as raised:
        load_checkpoint(path)

    assert str(path) in str(raised.value)


def test_directory_is_rejected_on_load(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory, expected a checkpoint file") as raised:
        load_checkpoint(tmp_path)

    assert str(tmp_path) in str(raised.value)


def test_current_directory_is_named_on_load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    with pytest.raises(IsADirectoryError, match="'.' is a directory"):
        load_checkpoint(".")


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs the /dev/null device file")
def test_device_file_is_rejected():
    with pytest.raises(ValueError, match="/dev/null is not a readable checkpoint: it is not a regular file"):
        load_checkpoint("/dev/null")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_unavailable_map_location_is_rejected(saved):
    _, _, path = saved

    with pytest.raises(ValueError, match="map_location is 'cuda', but cuda is not available"):
        load_checkpoint(path, map_location="cuda")


def test_invalid_map_location_is_rejected(saved):
    _, _, path = saved

    with pytest.raises(ValueError, match="map_location must name a torch device .* got 'gpu'"):
        load_checkpoint(path, map_location="gpu")


def test_directory_is_rejected_on_save(network_factory, tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory, expected a checkpoint file"):
        save_checkpoint(tmp_path, network_factory())

    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def umask():
    """Set the process umask for one test and restore the previous one afterwards."""
    previous = os.umask(0o022)

    def set_umask(value: int) -> None:
        os.umask(value)

    yield set_umask
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_saved_file_mode_follows_umask(network_factory, tmp_path, umask, mask):
    umask(mask)

    path = save_checkpoint(tmp_path / "model.pt", network_factory())

    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_replaced_file_gets_umask_mode(network_factory, tmp_path, umask):
    umask(0o022)
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")
    path.chmod(0o600)

    save_checkpoint(path, network_factory())

    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_umask_fallback_keeps_umask(umask, monkeypatch):
    umask(0o027)

    def no_proc(*args, **kwargs):
        raise FileNotFoundError("/proc/self/status")

    monkeypatch.setattr(checkpoint_module, "open", no_proc, raising=False)

    assert checkpoint_module._process_umask() == 0o027
    assert os.umask(0o027) == 0o027
