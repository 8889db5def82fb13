"""Training-state files: what :meth:`SubsetTrainer.fit` needs to continue after an interruption.

A training-state file is a ``torch.save`` file of a dict of plain Python values and tensors, so
it loads with ``torch.load(weights_only=True)``, which never runs code from the file:

- ``format``: ``"pipeline.training_state"``, and ``version``: 1.
- ``fingerprint``: plain values that identify the training run the file belongs to (network
  fingerprint at the start of training, trainer settings, seed, number of processes, a
  description of the data). A file is used only when they all equal those of the new run.
- ``state``: the trainer's progress after its last finished epoch (weights, optimiser state,
  prototypes, history, random-number-generator states, ...), written by the trainer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pipeline.networks.loading import summarise_load_error
from pipeline.training.checkpoint import check_checkpoint_path, check_plain_value, save_atomically

logger = logging.getLogger(__name__)

TRAINING_STATE_FORMAT = "pipeline.training_state"
TRAINING_STATE_VERSION = 1


def save_training_state(
    path: str | os.PathLike[str], state: Mapping[str, Any], fingerprint: Mapping[str, Any]
) -> Path:
    """Write ``state`` with its ``fingerprint`` to ``path`` atomically and return the path.

    Tensors are moved to the CPU. The file is written to a temporary file in the same folder and
    then moved over ``path``, so an interruption leaves the previous complete file in place.

    Raises:
        TypeError: ``state`` or ``fingerprint`` contains a value other than ``None``, bool, int,
            float, str, a tensor, or a list, tuple or dict of these.
        IsADirectoryError: ``path`` is a directory.
    """
    path = check_checkpoint_path(path)
    state = _to_cpu(dict(state))
    fingerprint = dict(fingerprint)
    check_plain_value(state, "state")
    check_plain_value(fingerprint, "fingerprint")

    contents = {
        "format": TRAINING_STATE_FORMAT,
        "version": TRAINING_STATE_VERSION,
        "fingerprint": fingerprint,
        "state": state,
    }
    save_atomically(contents, path)
    logger.debug("saved training state %s", path)
    return path


def load_training_state(path: str | os.PathLike[str], fingerprint: Mapping[str, Any]) -> dict[str, Any] | None:
    """Return the ``state`` stored at ``path``, or ``None`` when no file exists there.

    Tensors come back on the CPU.

    Raises:
        IsADirectoryError: ``path`` is a directory.
        ValueError: the file is not a readable training-state file of this format and version, or
            its fingerprint differs from ``fingerprint``. The message names the file and the
            differing fields, and advises deleting the file or restoring the settings.
    """
    path = check_checkpoint_path(path)
    if not path.exists():
        return None

    advice = f"Delete {path} to train from the first epoch"
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, MemoryError):
        raise
    except Exception as error:
        # A damaged or foreign file can raise almost any built-in exception in the weights-only unpickler.
        raise ValueError(
            f"{path} is not a readable training-state file: {summarise_load_error(error)}. {advice}."
        ) from error

    if not isinstance(contents, dict) or contents.get("format") != TRAINING_STATE_FORMAT:
        found = contents.get("format") if isinstance(contents, dict) else type(contents).__name__
        raise ValueError(
            f"{path} is not a training-state file: expected format {TRAINING_STATE_FORMAT!r}, got {found!r}. {advice}."
        )
    if contents.get("version") != TRAINING_STATE_VERSION:
        raise ValueError(
            f"{path}: field 'version' is {contents.get('version')!r}, but only version {TRAINING_STATE_VERSION} "
            f"can be read. {advice}."
        )
    if not isinstance(contents.get("state"), dict) or not isinstance(contents.get("fingerprint"), dict):
        raise ValueError(f"{path} is not a complete training-state file: 'state' or 'fingerprint' is missing. {advice}.")

    differences = _differences(contents["fingerprint"], dict(fingerprint))
    if differences:
        raise ValueError(
            f"{path} belongs to another training run: {'; '.join(differences)}. {advice}, or run again with the "
            "settings, data and number of processes it was written with."
        )
    return contents["state"]


def _differences(stored: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Describe each field where ``stored`` and ``current`` differ, nested dicts field by field."""
    differences = []
    for key in sorted(set(stored) | set(current), key=str):
        name = f"{prefix}{key}"
        old, new = stored.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences.extend(_differences(old, new, prefix=f"{name}."))
        elif old != new:
            differences.append(f"{name} is {old!r} in the file but {new!r} now")
    return differences


def _to_cpu(value: Any) -> Any:
    """Return ``value`` with every tensor in it on the CPU, at any depth of lists, tuples and mappings."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        # Plain dicts, because a state_dict is an OrderedDict and check_plain_value accepts only dicts.
        return {key: _to_cpu(item) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_to_cpu(item) for item in value)
    return value
