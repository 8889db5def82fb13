"""Fingerprint of a network: a hash of its configuration and weights."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn


def network_fingerprint(network: nn.Module, config: dict[str, Any] | None = None) -> str:
    """Return a SHA-256 hex digest of ``config`` (default ``network.config``) and every state_dict tensor.

    Files fitted for one network (prototypes, for example) store this digest so that loading
    them beside another network, or beside the same architecture with other weights, fails.
    """
    if config is None:
        config = getattr(network, "config", {})
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
