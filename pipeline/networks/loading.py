"""Shared handling of ``torch.load`` failures for files the package reads with ``weights_only=True``."""

from __future__ import annotations


def summarise_load_error(error: BaseException) -> str:
    """Return the cause of a ``torch.load`` error in one line, without torch's advice to disable weights_only.

    That advice suits a trusted file written by older code, not a damaged or foreign file, and
    following it would run the file's pickled code.
    """
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        # The cause follows the marker, on the same line or after blank lines.
        cause = text.split(marker, 1)[1].strip().splitlines()
        return f"WeightsUnpickler error: {cause[0].strip()}" if cause else "WeightsUnpickler error"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return f"{type(error).__name__}: {lines[0]}"
