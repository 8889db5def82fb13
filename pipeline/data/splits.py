"""Seeded stratified train/val/test assignment, shared by the cohort builders and the manifest reader."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
SPLIT_FRACTIONS: tuple[float, float, float] = (0.6, 0.2, 0.2)


def stratified_split(strata: pd.DataFrame | pd.Series, seed: int) -> pd.Series:
    """Assign each row to ``train``, ``val`` or ``test`` (60/20/20) within every stratum.

    Strata are the distinct rows of ``strata`` (e.g. label and centre), visited in sorted order.
    Each stratum is shuffled with one generator seeded by ``seed`` and cut at the rounded
    cumulative fractions, so every stratum is split 60/20/20 up to one subject of rounding.

    Args:
        strata: one row per subject; its values define the stratum.
        seed: seed of the shuffling generator.

    Returns:
        The split name per row, on the index of ``strata``.
    """
    frame = strata.to_frame() if isinstance(strata, pd.Series) else strata
    if frame.isna().any().any():
        raise ValueError("stratified_split: the strata contain missing values; fill them before splitting.")

    keys = [tuple(row) for row in frame.astype(str).itertuples(index=False)]
    rng = np.random.default_rng(seed)
    assignment = pd.Series("", index=frame.index, dtype=object)

    for key in sorted(set(keys)):
        positions = np.array([index for index, row_key in enumerate(keys) if row_key == key])
        shuffled = positions[rng.permutation(len(positions))]
        assignment.iloc[shuffled] = _split_names_for_count(len(shuffled))

    return assignment


def _split_names_for_count(count: int) -> Sequence[str]:
    cumulative = np.cumsum(SPLIT_FRACTIONS)
    bounds = [0, *(int(round(fraction * count)) for fraction in cumulative)]
    bounds[-1] = count

    names: list[str] = []
    for name, start, stop in zip(SPLIT_NAMES, bounds[:-1], bounds[1:]):
        names.extend([name] * (stop - start))
    return names
