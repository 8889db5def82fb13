"""Simulated missingness masks written next to a cohort, so that every method reads the same masks.

The masks follow the cohort format (``docs/cohort-format.md``): one CSV per setting under
``<cohort>/missingness/``, with ``1`` where the simulation removed a modality or a value.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.data.manifest import Manifest
from pipeline.data.missingness import (
    check_rate,
    mask_filename,
    simulate_modality_missingness,
    simulate_tabular_missingness,
    write_mask,
)

logger = logging.getLogger(__name__)

# The missing rates swept in the published DyMo evaluations: eta for whole modalities (five-image
# digits) and gamma for clinical values (cardiac data).
DEFAULT_ETAS: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8)
DEFAULT_GAMMAS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
DEFAULT_MODES: tuple[str, ...] = ("value", "feature")
MASK_FOLDER = "missingness"


def modality_availability(manifest: Manifest) -> tuple[list[str], np.ndarray]:
    """Return the modality names and ``(n, M)`` availability: an image is listed, a table has any value."""
    schema = manifest.schema
    columns = []
    for image in schema.images:
        columns.append(manifest.frame[image.column].notna().to_numpy())
    for table in schema.tabular:
        columns.append(manifest.tabular(table.modality).notna().any(axis=1).to_numpy())
    return list(schema.modality_names), np.stack(columns, axis=1)


def write_cohort_masks(
    manifest: Manifest,
    cohort_dir: str | Path,
    *,
    etas: Sequence[float] = DEFAULT_ETAS,
    gammas: Sequence[float] = DEFAULT_GAMMAS,
    modes: Sequence[str] = DEFAULT_MODES,
    seeds: Sequence[int] = (0,),
) -> list[Path]:
    """Simulate and write every mask setting for a cohort; return the written paths.

    Modality masks are written when the cohort has at least two modalities, tabular masks when it
    has clinical columns. Each setting is seeded, so writing again gives byte-identical files.
    """
    # Check every setting before writing, so that a bad rate leaves no partial set of masks behind.
    for eta in etas:
        check_rate("eta", eta)
    for gamma in gammas:
        check_rate("gamma", gamma)
    unknown_modes = sorted(set(modes) - {"value", "feature"})
    if unknown_modes:
        raise ValueError(f"unknown tabular missingness modes {unknown_modes}; use 'value' and/or 'feature'.")

    folder = Path(cohort_dir) / MASK_FOLDER
    subject_ids = manifest.subject_ids
    written = []

    modality_names, available = modality_availability(manifest)
    if len(modality_names) >= 2:
        for seed in seeds:
            for eta in etas:
                mask = simulate_modality_missingness(subject_ids, modality_names, available, eta, seed)
                written.append(write_mask(mask, folder / mask_filename("modality", eta, seed)))

    columns = list(manifest.schema.clinical_columns)
    if columns:
        observed = manifest.frame[columns].notna().to_numpy()
        for seed in seeds:
            for mode in modes:
                for gamma in gammas:
                    mask = simulate_tabular_missingness(subject_ids, columns, observed, gamma, mode, seed)
                    written.append(write_mask(mask, folder / mask_filename("tabular", gamma, seed, mode)))

    logger.info("Wrote %d missingness masks to %s", len(written), folder)
    return written
