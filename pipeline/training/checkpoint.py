"""Checkpoints of a :class:`MaskedFusionTransformer`: configuration, weights, prototypes, fingerprint.

A checkpoint is a ``torch.save`` file of a dict that contains only plain Python values and
tensors, so it loads with ``torch.load(weights_only=True)``, which never runs code from the file:

- ``format``: ``"pipeline.checkpoint"``, and ``version``: 1.
- ``config``: the network's :attr:`~MaskedFusionTransformer.config`, which rebuilds it.
- ``state_dict``: the network's weights, on the CPU.
- ``prototypes``: class prototypes ``(K, P)`` on the CPU, or ``None``.
- ``fingerprint``: :func:`~pipeline.networks.fingerprint.network_fingerprint` of the saved
  network, checked again after loading.
- ``extra``: a dict of plain values chosen by the caller (epoch, metric, ...).
- ``pipeline_version`` and ``torch_version`` of the writer, for information only.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import pipeline
from pipeline.networks.fingerprint import network_fingerprint
from pipeline.networks.fusion import MaskedFusionTransformer
from pipeline.networks.loading import summarise_load_error
from pipeline.training.argument_checks import check_device

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "pipeline.checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_FIELDS: tuple[str, ...] = ("format", "version", "config", "state_dict", "prototypes", "fingerprint", "extra")

# Serialises the os.umask fallback of _process_umask between the threads of this module.
_UMASK_LOCK = threading.Lock()


def save_checkpoint(
    path: str | os.PathLike[str],
    network: MaskedFusionTransformer,
    *,
    prototypes: torch.Tensor | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``network`` and optional prototypes ``(K, P)`` to ``path`` atomically and return the path.

    The file is written to a temporary file in the same folder and then moved over ``path`` with
    :func:`os.replace`, so a reader sees either the old file or the complete new one. Missing
    parent folders are created. The file gets the permissions of a file newly created by
    :func:`open`, ``0o666`` minus the process umask, even when it replaces a file with other
    permissions.

    Raises:
        TypeError: ``network`` is not a :class:`MaskedFusionTransformer`, ``prototypes`` is not a
            tensor, or ``extra`` contains a value other than ``None``, bool, int, float, str, a
            tensor, or a list, tuple or dict of these.
        ValueError: ``prototypes`` does not have shape ``(K, P)`` for the network.
        IsADirectoryError: ``path`` is a directory.
    """
    path = check_checkpoint_path(path)
    if not isinstance(network, MaskedFusionTransformer):
        raise TypeError(f"network must be a MaskedFusionTransformer, got {type(network).__name__}.")
    if prototypes is not None:
        _check_prototypes(prototypes, network)
    extra = dict(extra or {})
    check_plain_value(extra, "extra")

    contents = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": network.config,
        "state_dict": {name: tensor.detach().cpu() for name, tensor in network.state_dict().items()},
        "prototypes": None if prototypes is None else prototypes.detach().cpu(),
        "fingerprint": network_fingerprint(network),
        "extra": extra,
        "pipeline_version": pipeline.__version__,
        "torch_version": str(torch.__version__),  # torch.__version__ is a str subclass that weights_only rejects
    }

    save_atomically(contents, path)
    logger.debug("saved checkpoint %s", path)
    return path


def save_atomically(contents: Any, path: Path) -> None:
    """``torch.save`` ``contents`` to a temporary file beside ``path``, then move it over ``path``.

    A reader, or a run interrupted at any point, finds either the old file or the complete new
    one. Missing parent folders are created, and the file gets the permissions of a file newly
    created by :func:`open`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(contents, file)
            file.flush()
            os.fsync(file.fileno())
        # mkstemp creates the file with mode 0o600, which other users of a shared server cannot read.
        os.chmod(temporary_name, 0o666 & ~_process_umask())
        os.replace(temporary_name, path)
    except BaseException:
        Path(temporary_name).unlink(missing_ok=True)
        raise


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[MaskedFusionTransformer, dict[str, Any]]:
    """Rebuild the network stored at ``path`` and return it in eval mode with the file's contents.

    The file is read with ``torch.load(weights_only=True)``. The weights are loaded strictly, and
    the fingerprint of the rebuilt network must equal the stored one. Tensors in the returned
    contents (``prototypes`` included) are on ``map_location``, like the network.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a directory.
        PermissionError: the file cannot be opened for reading.
        ValueError: ``map_location`` is not a device of this machine. Or the file is not a
            regular file, is empty, or is not a readable checkpoint of this format and version.
            Or its configuration or weights do not rebuild the network, or the fingerprint
            differs. The message names the path and, for a field, the field.
    """
    path = Path(path)
    map_location = check_device("map_location", map_location)
    _check_readable_file(path)

    try:
        contents = torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, PermissionError, MemoryError):
        raise
    except Exception as error:
        # The weights-only unpickler is Python code that walks the file's bytes, so a damaged or
        # foreign file can raise almost any built-in exception. With torch 2.13, random and
        # truncated files gave UnpicklingError, UnicodeDecodeError, IndexError, EOFError,
        # OSError, RuntimeError, struct.error, KeyError and AssertionError. MemoryError is left
        # out because it can also mean that a valid checkpoint does not fit.
        raise ValueError(
            f"{path} is not a readable checkpoint: {summarise_load_error(error)}. Check that it is a complete "
            "file written by save_checkpoint."
        ) from error
    _check_contents(path, contents)

    try:
        # Building the network draws initial weights; fork the RNG so loading leaves the caller's state alone.
        with torch.random.fork_rng(devices=[]):
            network = MaskedFusionTransformer(**contents["config"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: field 'config' does not build a MaskedFusionTransformer: {error}") from error
    try:
        network.load_state_dict(contents["state_dict"], strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"{path}: field 'state_dict' does not match the network built from 'config': {error}"
        ) from error

    fingerprint = network_fingerprint(network)
    if fingerprint != contents["fingerprint"]:
        raise ValueError(
            f"{path}: field 'fingerprint' is {contents['fingerprint']!r}, but the loaded network has "
            f"fingerprint {fingerprint!r}. The weights or the configuration were changed after the file "
            "was written."
        )
    if contents["prototypes"] is not None:
        try:
            _check_prototypes(contents["prototypes"], network, source=f"{path}: field 'prototypes'")
        except TypeError as error:
            raise ValueError(str(error)) from error
    return network.to(map_location).eval(), contents


def check_checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a :class:`Path`, or raise ``IsADirectoryError`` if it is a directory."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint path '{path}' is a directory, expected a checkpoint file.")
    return path


def _check_readable_file(path: Path) -> None:
    """Raise a clear error unless ``path`` is a non-empty regular file."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(f"checkpoint path '{path}' is a directory, expected a checkpoint file.")
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path} is not a readable checkpoint: it is not a regular file (a device, pipe or socket).")
    if info.st_size == 0:
        raise ValueError(
            f"{path} is not a readable checkpoint: the file is empty (0 bytes). Check that it is a complete file "
            "written by save_checkpoint."
        )


def _process_umask() -> int:
    """Return the process umask without changing it where the platform allows.

    Linux 4.7 and later list the umask in ``/proc/self/status``. Elsewhere the umask is read
    by setting it and setting it back, which other threads creating files at that moment could
    observe, so the temporary value is the strict ``0o077`` rather than ``0``.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        umask = os.umask(0o077)
        os.umask(umask)
    return umask


def _check_contents(path: Path, contents: Any) -> None:
    if not isinstance(contents, dict):
        raise ValueError(f"{path} is not a checkpoint: it contains a {type(contents).__name__}, not a dict.")
    if contents.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a checkpoint: field 'format' is {contents.get('format')!r}, expected {CHECKPOINT_FORMAT!r}."
        )
    if contents.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: field 'version' is {contents.get('version')!r}, but only version "
            f"{CHECKPOINT_VERSION} can be read."
        )
    missing = [field for field in REQUIRED_FIELDS if field not in contents]
    if missing:
        raise ValueError(f"{path} is not a complete checkpoint: fields {missing} are missing.")

    expected_types = {"config": dict, "state_dict": dict, "fingerprint": str, "extra": dict}
    for field, expected in expected_types.items():
        if not isinstance(contents[field], expected):
            raise ValueError(
                f"{path}: field {field!r} must be a {expected.__name__}, got {type(contents[field]).__name__}."
            )


def _check_prototypes(prototypes: Any, network: MaskedFusionTransformer, source: str = "prototypes") -> None:
    expected = (network.num_classes, network.config["projection_dim"])
    if not isinstance(prototypes, torch.Tensor):
        raise TypeError(f"{source} must be a tensor of shape {expected}, got {type(prototypes).__name__}.")
    if tuple(prototypes.shape) != expected:
        raise ValueError(f"{source} must have shape {expected} (K, P) for this network, got {tuple(prototypes.shape)}.")


def check_plain_value(value: Any, where: str) -> None:
    """Raise ``TypeError`` unless ``value`` is something ``torch.load(weights_only=True)`` reads back."""
    # Exact types, because subclasses (numpy.float64 of float, TorchVersion of str) are rejected on loading.
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor):
        return
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            check_plain_value(item, f"{where}[{index}]")
        return
    if type(value) is dict:
        for key, item in value.items():
            check_plain_value(key, f"{where} key {key!r}")
            check_plain_value(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}, but a checkpoint stores only None, bool, int, float, str, "
        "tensors, and lists, tuples or dicts of these."
    )
