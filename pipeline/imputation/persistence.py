"""Save and load fitted imputers without unpickling untrusted data.

Fitted imputers are stored with ``skops.io`` (0.16), not ``pickle`` or ``joblib``. A skops file
is a zip archive with a JSON description of the objects. Loading rebuilds only the types passed
as trusted, so a file cannot run code on load the way a pickle can. Refitting from the
training split with a fixed seed would also avoid pickle, but it needs the cohort at load time
and repeats a full fit each time, so the fitted state is saved.

:func:`load_imputer` first lists the types the file needs (``skops.io.get_untrusted_types``) and
rejects the file with a ``ValueError`` naming the path when one of them is not in
:data:`TRUSTED_TYPES` (or the caller's ``extra_trusted``). It then loads with exactly that list and
checks that the result is an imputer. A file that is not a readable skops archive, for example a
pickle or a truncated or edited archive, is rejected the same way.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import skops.io as sio
import torch

from pipeline.imputation.base import ImageTokenImputer, TabularImputer

if TYPE_CHECKING:
    from pipeline.imputation.mopoe import MoPoEImputer

logger = logging.getLogger(__name__)

# Types that skops 0.16 does not trust by default but that the imputers of this package contain.
# scikit-learn estimators, NumPy arrays and Python builtins are trusted by skops itself.
TRUSTED_TYPES: tuple[str, ...] = (
    "pipeline.imputation.baseline.MeanModeImputer",
    "pipeline.imputation.iterative.IterativeTabularImputer",
    "sklearn.tree._tree.Tree",
)


def save_imputer(imputer: TabularImputer | ImageTokenImputer | MoPoEImputer, path: str | os.PathLike[str]) -> Path:
    """Write a fitted imputer to ``path`` and return the path; parent folders are created.

    scikit-learn imputers are written as skops files. Imputers that hold a torch network
    (``LearnedTabularImputer``, ``TokenImputer``, ``MoPoEImputer``) use their own ``save``, a
    ``torch.save`` file of plain values and tensors; :func:`load_imputer` reads both.
    """
    if not isinstance(imputer, (TabularImputer, ImageTokenImputer, *_torch_imputer_classes())):
        raise TypeError(
            f"expected a TabularImputer, ImageTokenImputer or MoPoEImputer, got {type(imputer).__name__}."
        )
    path = Path(path)
    if isinstance(imputer, _torch_imputer_classes()):
        return imputer.save(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written next to its final name and then renamed, so an interrupted save leaves no partial file.
    partial = path.with_name(f".{path.name}.partial")
    try:
        sio.dump(imputer, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    logger.info("saved %s to %s.", type(imputer).__name__, path)
    return path


def load_imputer(
    path: str | os.PathLike[str], extra_trusted: Sequence[str] = ()
) -> TabularImputer | ImageTokenImputer | MoPoEImputer:
    """Load an imputer saved by :func:`save_imputer`, trusting only :data:`TRUSTED_TYPES` and ``extra_trusted``.

    Args:
        path: the skops file.
        extra_trusted: further fully qualified type names to trust, for imputers defined elsewhere.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming ``path``, if the file is not a readable skops archive, needs a type that
            is not trusted, or does not contain an imputer.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, expected a saved imputer file.")
    if not path.is_file():
        raise FileNotFoundError(f"imputer file {path} does not exist.")
    if _is_torch_archive(path):
        return _load_torch_imputer(path)
    trusted = list(TRUSTED_TYPES) + [str(name) for name in extra_trusted]

    try:
        needed = sio.get_untrusted_types(file=path)
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError) as error:
        raise ValueError(f"{path} is not a readable skops file of a saved imputer ({error}).") from error
    rejected = sorted(set(needed) - set(trusted))
    if rejected:
        raise ValueError(
            f"{path} needs the types {rejected}, which are not trusted, so it was not loaded. Only load files "
            "written by save_imputer; pass extra_trusted only for types you have checked."
        )

    try:
        imputer = sio.load(path, trusted=trusted)
    except Exception as error:
        # skops raises many kinds of errors on an edited archive: bad JSON, a missing member, a
        # CRC mismatch or an unexpected node. Each means the file cannot be used.
        raise ValueError(f"{path} could not be loaded as a saved imputer ({type(error).__name__}: {error}).") from error
    if not isinstance(imputer, (TabularImputer, ImageTokenImputer)):
        raise ValueError(f"{path} contains a {type(imputer).__name__}, not a saved imputer.")
    logger.info("loaded %s from %s.", type(imputer).__name__, path)
    return imputer


def _torch_imputer_classes() -> tuple[type, ...]:
    # Imported here: the torch imputers import this package's base module.
    from pipeline.imputation.image_features import TokenImputer
    from pipeline.imputation.learned import LearnedTabularImputer
    from pipeline.imputation.mopoe import MoPoEImputer

    return (LearnedTabularImputer, TokenImputer, MoPoEImputer)


def _is_torch_archive(path: Path) -> bool:
    """Tell a ``torch.save`` zip archive (it has a ``data.pkl`` member) from a skops one."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _load_torch_imputer(path: Path) -> TabularImputer | ImageTokenImputer | MoPoEImputer:
    """Load a torch-based imputer with ``weights_only=True`` and dispatch on its ``format`` field."""
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # A damaged or foreign torch archive raises one of several unpickler or zip errors.
        raise ValueError(f"{path} is not a readable saved imputer ({type(error).__name__}: {error}).") from error
    file_format = contents.get("format") if isinstance(contents, dict) else None
    for imputer_class in _torch_imputer_classes():
        if file_format == f"pipeline.imputation.{imputer_class.__name__}":
            imputer = imputer_class.load(path)
            logger.info("loaded %s from %s.", imputer_class.__name__, path)
            return imputer
    raise ValueError(f"{path} is a torch file but not a saved imputer (format {file_format!r}).")

