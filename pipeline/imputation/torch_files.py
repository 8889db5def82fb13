"""Checked ``torch.save`` files for the imputers that hold a torch network.

``torch.load`` does not verify the zip checksums of an archive, so a file with flipped bytes can
load and silently change the imputed values. Each file therefore carries a SHA-256 digest of its
contents, computed when it is written and checked when it is read, and is read with
``weights_only=True`` so that it cannot run code.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

DIGEST_KEY = "sha256"
Loaded = TypeVar("Loaded")


def contents_digest(value: Any) -> str:
    """Return a SHA-256 hex digest of nested dicts, lists, tensors and plain values, key order aside."""
    digest = hashlib.sha256()
    _update(digest, value)
    return digest.hexdigest()


def _update(digest: Any, value: Any) -> None:
    if isinstance(value, Mapping):
        digest.update(b"{")
        for key in sorted(value, key=str):
            digest.update(repr(key).encode())
            _update(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[")
        for item in value:
            _update(digest, item)
        digest.update(b"]")
    elif isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)}".encode())
        # numpy's tobytes copies in C order whatever the strides; bfloat16 has no numpy dtype.
        digest.update(tensor.view(torch.int16).numpy().tobytes() if tensor.dtype == torch.bfloat16 else tensor.numpy().tobytes())
    else:
        digest.update(f"{type(value).__name__} {value!r}".encode())


def write_checked(contents: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``contents`` plus its digest to ``path`` atomically, with the mode a plain ``open`` gives."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; pass the path of the file to write.")
    path.parent.mkdir(parents=True, exist_ok=True)
    checked = {**contents, DIGEST_KEY: contents_digest(contents)}

    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        # Saved through the open file, not its name, which torch.save would record in the archive:
        # the same contents then give the same bytes.
        with os.fdopen(handle, "wb") as file:
            torch.save(checked, file)
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path


def read_checked(path: str | os.PathLike[str], file_format: str, version: int) -> dict[str, Any]:
    """Read a file written by :func:`write_checked` and verify its format, version and digest.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: naming ``path``, for a directory, an unreadable or foreign file, another format
            or version, or contents that changed after the file was written.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, expected a saved imputer file.")
    if not path.is_file():
        raise FileNotFoundError(f"imputer file {path} does not exist.")
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # A damaged or foreign file raises one of several unpickler, zip or runtime errors.
        raise ValueError(f"{path} is not a readable saved imputer ({type(error).__name__}: {error}).") from error

    found = contents.get("format") if isinstance(contents, dict) else type(contents).__name__
    if found != file_format:
        raise ValueError(f"{path}: expected a file of format {file_format!r}, got {found!r}.")
    if contents.get("version") != version:
        raise ValueError(f"{path}: expected version {version} of {file_format!r}, got {contents.get('version')!r}.")
    stored = contents.pop(DIGEST_KEY, None)
    if stored != contents_digest(contents):
        raise ValueError(
            f"{path}: the contents do not match the checksum written with them, so the file was changed or "
            "damaged after it was saved. Save the imputer again."
        )
    return contents


def rebuild_checked(path: str | os.PathLike[str], rebuild: Callable[[], Loaded]) -> Loaded:
    """Run ``rebuild`` and turn the errors of inconsistent contents into one ``ValueError`` naming ``path``."""
    try:
        return rebuild()
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
        raise ValueError(f"{path}: the saved imputer cannot be rebuilt ({type(error).__name__}: {error}).") from error
