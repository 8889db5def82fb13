"""Seeded missingness simulation and the mask CSV files of a cohort's ``missingness/`` folder.

Shape letters: ``n`` subjects, ``M`` modalities, ``C`` clinical columns.

A mask is a DataFrame with a ``subject_id`` column first and one int64 column per modality or
clinical column, where ``1`` means the value was made missing by the simulation. Values that were
already missing stay ``0``: they are missing anyway and are not counted as masked. The same
inputs and seed always give the same mask, and :func:`write_mask` writes it byte for byte the
same, so every method in a comparison reads the same missing values.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

SUBJECT_ID_COLUMN = "subject_id"

MaskKind = Literal["modality", "tabular"]
TabularMode = Literal["value", "feature"]
_MASK_KINDS = ("modality", "tabular")
_TABULAR_MODES = ("value", "feature")

# Tolerance when turning ``total * rate`` into a count, so that floating-point rounding does not
# drop a cell. For example, 100 * 0.29 is 28.999999999999996 in binary floating point but means 29.
_COUNT_TOLERANCE = 1e-9


def simulate_modality_missingness(
    subject_ids: Sequence[str],
    modality_names: Sequence[str],
    available: np.ndarray,
    eta: float,
    seed: int,
) -> pd.DataFrame:
    """Remove whole modalities at random, keeping at least one modality per subject.

    Each available modality of each subject is removed independently with probability ``eta``.
    A subject left with no modality then gets back one of its originally available modalities,
    chosen uniformly at random. A subject that had no modality available to begin with is left
    as it is, with nothing masked.

    Because of that restore step the achieved rate (masked entries over available entries) is
    below ``eta``. A subject with ``k`` available modalities loses ``k * eta - eta ** k`` of them
    on average, so with two modalities and ``eta = 0.4`` the expected rate is 0.32, not 0.4. The
    achieved rate is logged at INFO level; :func:`masked_fraction` computes it from the result.

    Args:
        subject_ids: ``n`` unique, non-empty subject ids.
        modality_names: ``M`` unique modality names, the mask's columns after ``subject_id``.
        available: ``(n, M)`` bool, ``True`` where the subject has the modality.
        eta: probability in ``[0, 1]`` of removing each available modality.
        seed: seed of the random generator (``numpy.random.default_rng``).

    Returns:
        The mask: ``subject_id`` then one 0/1 column per modality, ``1`` = made missing.
    """
    ids, names, available = _check_inputs(subject_ids, modality_names, available, "modality_names", "available")
    check_rate("eta", eta)
    rng = np.random.default_rng(_check_seed(seed))

    removed = available & (rng.random(available.shape) < eta)  # (n, M)
    emptied = available.any(axis=1) & ~(available & ~removed).any(axis=1)
    for row in np.flatnonzero(emptied):
        restored = rng.choice(np.flatnonzero(available[row]))
        removed[row, restored] = False

    logger.info(
        "modality missingness with eta %.2f and seed %d: masked %d of %d available entries (achieved rate %.4f). "
        "%d subjects had one modality restored.",
        eta,
        seed,
        int(removed.sum()),
        int(available.sum()),
        masked_fraction(removed, available),
        len(np.flatnonzero(emptied)),
    )
    return _mask_frame(ids, names, removed)


def simulate_tabular_missingness(
    subject_ids: Sequence[str],
    columns: Sequence[str],
    observed: np.ndarray,
    gamma: float,
    mode: TabularMode,
    seed: int,
) -> pd.DataFrame:
    """Mask a fraction ``gamma`` of the clinical table at random.

    - ``mode="value"``: masks ``int(n_observed * gamma)`` of the ``n_observed`` observed cells,
      chosen uniformly without replacement. The original DyMo simulation counts all ``n * C``
      cells instead. This module counts observed cells because a cell that is already missing
      cannot be masked again, so counting it would leave the achieved rate below ``gamma`` on
      tables that already have gaps.
    - ``mode="feature"``: masks every observed cell of ``int(C * gamma)`` whole columns, chosen
      uniformly among all ``C`` columns.

    ``gamma = 1`` masks every observed cell in both modes, and ``gamma = 0`` masks none. The
    counts use ``floor(total * gamma)`` with a tolerance of 1e-9, so floating-point rounding
    never drops a cell (``100 * 0.29`` counts 29). The achieved rate is logged at INFO level.

    Args:
        subject_ids: ``n`` unique, non-empty subject ids.
        columns: ``C`` unique clinical column names, the mask's columns after ``subject_id``.
        observed: ``(n, C)`` bool, ``True`` where the value is present in the cohort.
        gamma: fraction in ``[0, 1]`` of cells (``"value"``) or columns (``"feature"``) to mask.
        mode: ``"value"`` or ``"feature"``.
        seed: seed of the random generator (``numpy.random.default_rng``).

    Returns:
        The mask: ``subject_id`` then one 0/1 column per clinical column, ``1`` = made missing.
    """
    ids, names, observed = _check_inputs(subject_ids, columns, observed, "columns", "observed")
    check_rate("gamma", gamma)
    _check_mode(mode)
    rng = np.random.default_rng(_check_seed(seed))

    masked = np.zeros_like(observed)  # (n, C)
    if mode == "value":
        cells = np.flatnonzero(observed)  # row-major indices of the observed cells
        chosen = rng.choice(cells, size=_masked_count(len(cells), gamma), replace=False)
        masked.flat[chosen] = True
    else:
        chosen = np.sort(rng.choice(len(names), size=_masked_count(len(names), gamma), replace=False))
        masked[:, chosen] = observed[:, chosen]
        logger.info("tabular feature missingness masks the columns %s.", [names[index] for index in chosen])

    logger.info(
        "tabular %s missingness with gamma %.2f and seed %d: masked %d of %d observed cells (achieved rate %.4f).",
        mode,
        gamma,
        seed,
        int(masked.sum()),
        int(observed.sum()),
        masked_fraction(masked, observed),
    )
    return _mask_frame(ids, names, masked)


def masked_fraction(masked: np.ndarray, eligible: np.ndarray) -> float:
    """Return the achieved rate, the fraction of eligible (available or observed) entries that are masked.

    Returns 0.0 when nothing is eligible. Both arrays are bool of the same shape.
    """
    masked = np.asarray(masked, dtype=bool)
    eligible = np.asarray(eligible, dtype=bool)
    if masked.shape != eligible.shape:
        raise ValueError(f"masked has shape {masked.shape} but eligible has shape {eligible.shape}.")
    total = int(eligible.sum())
    return float((masked & eligible).sum()) / total if total else 0.0


def mask_filename(kind: MaskKind, rate: float, seed: int, mode: TabularMode | None = None) -> str:
    """Return the file name of a mask, e.g. ``modality_eta0.40_seed0.csv`` or ``tabular_value_gamma0.10_seed0.csv``.

    The rate is written with two decimals, so a rate with more decimals is rejected, because
    two different rates must never share a file.

    Args:
        kind: ``"modality"`` (rate is ``eta``, ``mode`` must be ``None``) or ``"tabular"`` (rate is
            ``gamma``, ``mode`` is required).
        rate: ``eta`` or ``gamma`` in ``[0, 1]``, with at most two decimals.
        seed: the simulation seed, a non-negative int.
        mode: ``"value"`` or ``"feature"`` for tabular masks.
    """
    if kind not in _MASK_KINDS:
        raise ValueError(f"kind must be one of {list(_MASK_KINDS)}, got {kind!r}.")
    rate_name = "eta" if kind == "modality" else "gamma"
    check_rate(rate_name, rate)
    if abs(round(rate, 2) - rate) > _COUNT_TOLERANCE:
        raise ValueError(
            f"{rate_name} {rate!r} has more than two decimals, but mask file names keep only two. "
            f"Round it, e.g. to {round(rate, 2):.2f}."
        )
    seed = _check_seed(seed)

    if kind == "modality":
        if mode is not None:
            raise ValueError(f"modality masks take no mode, got mode {mode!r}.")
        return f"modality_eta{rate:.2f}_seed{seed}.csv"
    _check_mode(mode)
    return f"tabular_{mode}_gamma{rate:.2f}_seed{seed}.csv"


def write_mask(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a mask as UTF-8 CSV with ``\\n`` line ends and return the path.

    The same mask always gives the same bytes. The file is written next to its final name and
    then renamed, so an interrupted write never leaves a partial mask behind. Parent folders are
    created.

    Raises:
        ValueError: if ``subject_id`` is not the first column, the ids are not unique, or a value
            is not 0 or 1.
    """
    columns = _check_mask_frame(frame)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    output = pd.DataFrame({SUBJECT_ID_COLUMN: frame[SUBJECT_ID_COLUMN].astype(str).to_numpy()})
    for column in columns:
        output[column] = frame[column].to_numpy().astype(np.int64)

    partial = path.with_name(path.name + ".partial")
    try:
        output.to_csv(partial, index=False, lineterminator="\n", encoding="utf-8")
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def read_mask(path: str | os.PathLike[str], subject_ids: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """Read a mask written by :func:`write_mask` and check it against the cohort.

    The file must list exactly ``subject_ids`` (in any order) and exactly ``columns`` after
    ``subject_id`` (in any order, matched by name). The result has the rows in the order of
    ``subject_ids`` and the columns in the order of ``columns``, as int64 0/1 values.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the path and what differs: missing or unexpected subject ids or
            columns, duplicates, or a value that is not 0 or 1.
    """
    path = Path(path)
    ids = _check_names("subject_ids", subject_ids)
    names = _check_names("columns", columns)
    header = _read_header(path)

    if not header or header[0] != SUBJECT_ID_COLUMN:
        first = header[0] if header else None
        raise ValueError(f"{path}: the first column must be {SUBJECT_ID_COLUMN!r}, got {first!r}.")
    _check_same_names(path, "columns", expected=names, found=header[1:])

    frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    _check_same_names(path, "subject ids", expected=ids, found=frame[SUBJECT_ID_COLUMN].tolist())

    frame = frame.set_index(SUBJECT_ID_COLUMN).loc[ids, names]
    for column in names:
        invalid = ~frame[column].isin(["0", "1"])
        if invalid.any():
            subject = invalid.idxmax()
            raise ValueError(
                f"{path}: column {column!r} of subject {subject!r} is {frame.at[subject, column]!r}, expected 0 or 1."
            )

    values = frame.to_numpy().astype(np.int64)
    return _mask_frame(ids, names, values.astype(bool))


def check_rate(name: str, rate: float) -> float:
    """Return ``rate`` after checking that it is a real number in ``[0, 1]``."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(rate).__name__} {rate!r}.")
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {rate!r}.")
    return float(rate)


def _check_mode(mode: str | None) -> None:
    if mode not in _TABULAR_MODES:
        raise ValueError(f"mode must be one of {list(_TABULAR_MODES)}, got {mode!r}.")


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    return int(seed)


def _check_names(name: str, values: Sequence[str]) -> list[str]:
    """Return ``values`` as a list after checking that they are unique non-empty strings."""
    if isinstance(values, str) or not isinstance(values, Sequence | np.ndarray | pd.Index | pd.Series):
        raise TypeError(f"{name} must be a sequence of strings, got {type(values).__name__}.")
    names = list(values)
    invalid = [value for value in names if not isinstance(value, str) or not value]
    if invalid:
        raise ValueError(f"{name} must contain non-empty strings, got {invalid[:10]}.")
    series = pd.Series(names, dtype=object)
    duplicates = sorted(series[series.duplicated()].unique())
    if duplicates:
        raise ValueError(f"{name} must be unique, but {duplicates[:10]} occur more than once.")
    return names


def _check_inputs(
    subject_ids: Sequence[str], names: Sequence[str], flags: np.ndarray, names_argument: str, flags_argument: str
) -> tuple[list[str], list[str], np.ndarray]:
    """Check ids, column names and the ``(n, M)`` or ``(n, C)`` bool array of one simulation."""
    ids = _check_names("subject_ids", subject_ids)
    columns = _check_names(names_argument, names)
    if SUBJECT_ID_COLUMN in columns:
        raise ValueError(f"{names_argument} must not contain {SUBJECT_ID_COLUMN!r}, the mask's id column.")

    flags = np.asarray(flags)
    if flags.dtype != np.bool_:
        raise TypeError(f"{flags_argument} must be a bool array (True = present), got dtype {flags.dtype}.")
    if flags.shape != (len(ids), len(columns)):
        raise ValueError(
            f"{flags_argument} must have shape ({len(ids)}, {len(columns)}) for {len(ids)} subjects and "
            f"{len(columns)} {names_argument}, got {flags.shape}."
        )
    return ids, columns, flags.copy()


def _masked_count(total: int, rate: float) -> int:
    return min(total, math.floor(total * rate + _COUNT_TOLERANCE))


def _mask_frame(subject_ids: list[str], columns: list[str], masked: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(masked.astype(np.int64), columns=columns)
    frame.insert(0, SUBJECT_ID_COLUMN, subject_ids)
    return frame


def _check_mask_frame(frame: pd.DataFrame) -> list[str]:
    """Return the mask columns after ``subject_id`` once the frame is a valid mask."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}.")
    if len(frame.columns) == 0 or frame.columns[0] != SUBJECT_ID_COLUMN:
        first = frame.columns[0] if len(frame.columns) else None
        raise ValueError(f"a mask's first column must be {SUBJECT_ID_COLUMN!r}, got {first!r}.")
    _check_names("subject ids", frame[SUBJECT_ID_COLUMN].tolist())
    columns = _check_names("mask columns", [str(column) for column in frame.columns[1:]])

    for column in columns:
        values = frame[column]
        invalid = values.isna() | ~values.isin([0, 1])
        if invalid.any():
            position = int(np.argmax(invalid.to_numpy()))
            value = values.iloc[position]
            value = value.item() if isinstance(value, np.generic) else value
            raise ValueError(
                f"mask column {column!r} has the value {value!r} for subject "
                f"{frame[SUBJECT_ID_COLUMN].iloc[position]!r}, expected 0 or 1."
            )
    return columns


def _read_header(path: Path) -> list[str]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return next(csv.reader(handle), [])


def _check_same_names(path: Path, entry_kind: str, expected: list[str], found: list[str]) -> None:
    """Raise a ValueError naming the entries that differ between ``expected`` and ``found``."""
    found_series = pd.Series(found, dtype=object)
    duplicates = sorted(found_series[found_series.duplicated()].unique())
    found_set, expected_set = set(found), set(expected)
    absent = [name for name in expected if name not in found_set]
    unexpected = [name for name in found if name not in expected_set]

    problems = []
    if duplicates:
        problems.append(f"{len(duplicates)} listed more than once {duplicates[:10]}")
    if absent:
        problems.append(f"{len(absent)} missing from the file {absent[:10]}")
    if unexpected:
        problems.append(f"{len(unexpected)} not in the cohort {unexpected[:10]}")
    if problems:
        raise ValueError(
            f"{path}: the mask's {entry_kind} do not match the cohort: " + "; ".join(problems) + " (at most 10 shown). "
            "Rebuild the masks for this cohort."
        )
