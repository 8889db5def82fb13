"""Measure how well each tabular imputer recovers the clinical values that the missingness masks removed.

For every tabular modality of the cohort and every gamma, the imputers are fitted on the training
split and scored on the test split, on the cells that ``missingness/tabular_<mode>_gamma<gamma>_seed<seed>.csv``
masks. By default the imputers are fitted on the training rows as they are in the cohort, so the
simulated missingness applies to the evaluated split only. ``--mask-training`` applies the same
mask to the training rows as well.

Example::

    python -m pipeline build-cohort cad_demo --output /tmp/cad_demo
    python scripts/imputation_report.py --cohort /tmp/cad_demo --schema configs/cad_demo.yaml \\
        --output /tmp/cad_demo/imputation_quality.csv
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.manifest import Manifest, read_manifest
from pipeline.data.missingness import mask_filename, read_mask
from pipeline.data.dataset import fit_tabular_encoders
from pipeline.imputation.base import TabularImputer
from pipeline.imputation.baseline import MeanModeImputer
from pipeline.imputation.iterative import IterativeTabularImputer
from pipeline.imputation.quality import imputation_quality, summary_table, write_report

logger = logging.getLogger("imputation_report")

DEFAULT_GAMMAS = (0.1, 0.3, 0.5, 0.7, 0.9)
IMPUTER_NAMES = ("mean", "iterative", "learned")


def imputer_factories(names: Sequence[str], seed: int) -> dict[str, Callable[[], TabularImputer]]:
    """Return a constructor per requested imputer; ``learned`` is skipped with a warning when its module is absent."""
    factories: dict[str, Callable[[], TabularImputer]] = {}
    for name in names:
        if name == "mean":
            factories[name] = MeanModeImputer
        elif name == "iterative":
            factories[name] = lambda: IterativeTabularImputer(random_state=seed)
        elif name == "learned":
            try:
                learned = importlib.import_module("pipeline.imputation.learned")
            except ImportError as error:
                logger.warning("skipping the learned imputer: pipeline.imputation.learned cannot be imported (%s).", error)
                continue
            # NOTE: assumes the learned module exposes LearnedTabularImputer with a random_state parameter.
            factories[name] = lambda: learned.LearnedTabularImputer(random_state=seed)
        else:
            raise ValueError(f"unknown imputer {name!r}; choose from {list(IMPUTER_NAMES)}.")
    return factories


def split_rows(manifest: Manifest, split: str) -> np.ndarray:
    """Return the ``(n,)`` bool selector of the subjects in ``split``, raising if there are none."""
    rows = (manifest.frame[manifest.split_column] == split).to_numpy()
    if not rows.any():
        raise ValueError(f"{manifest.path}: no subject is in split {split!r}.")
    return rows


def evaluate_modality(
    manifest: Manifest,
    modality: str,
    mask: pd.DataFrame,
    factories: dict[str, Callable[[], TabularImputer]],
    mask_training: bool = False,
) -> pd.DataFrame:
    """Fit each imputer on the training rows of one tabular modality and score it on the masked test cells."""
    encoder = fit_tabular_encoders(manifest)[modality]
    columns = list(manifest.schema.tabular_columns(modality))
    frame = manifest.tabular(modality)
    masked = mask[columns].to_numpy().astype(bool)  # (n, N), rows in manifest order
    train = split_rows(manifest, "train")
    test = split_rows(manifest, "test")
    _check_disjoint(manifest, train, test)

    hidden = frame.mask(masked)  # masked cells become missing
    train_frame = hidden[train] if mask_training else frame[train]
    train_table = encoder.transform(train_frame)
    truth = encoder.transform(frame[test])
    test_input = encoder.transform(hidden[test])

    reports = []
    for name, factory in factories.items():
        imputer = factory().fit(train_table, encoder.cardinalities)
        recovered = imputer.transform(test_input)
        report = imputation_quality(truth, recovered, masked[test], encoder)
        report.insert(0, "imputer", name)
        reports.append(report)
    combined = pd.concat(reports, ignore_index=True)
    combined.insert(0, "modality", modality)
    return combined


def _check_disjoint(manifest: Manifest, train: np.ndarray, test: np.ndarray) -> None:
    """Raise if a subject is in both the fitting rows and the scored rows."""
    ids = manifest.frame[manifest.schema.subject_id_column].to_numpy()
    shared = sorted(set(ids[train]) & set(ids[test]))
    if shared:
        raise ValueError(f"{manifest.path}: subjects {shared[:5]} are in both the train and the test split.")


def run(arguments: argparse.Namespace) -> pd.DataFrame:
    """Evaluate every tabular modality at every gamma and write the long report; return it."""
    cohort = Path(arguments.cohort)
    manifest = read_manifest(cohort / "manifest.csv", arguments.schema, strict=True)
    factories = imputer_factories(arguments.imputers, arguments.seed)
    clinical = list(manifest.schema.clinical_columns)

    reports = []
    for gamma in arguments.gammas:
        path = cohort / "missingness" / mask_filename("tabular", gamma, arguments.mask_seed, arguments.mode)
        mask = read_mask(path, manifest.subject_ids, clinical)
        for table in manifest.schema.tabular:
            logger.info("gamma %.2f, modality %r: fitting %s", gamma, table.modality, list(factories))
            report = evaluate_modality(manifest, table.modality, mask, factories, arguments.mask_training)
            report.insert(0, "gamma", gamma)
            reports.append(report)
    report = pd.concat(reports, ignore_index=True)

    output = Path(arguments.output) if arguments.output else cohort / "imputation_quality.csv"
    write_report(report, output)
    summary = pd.concat(
        [summary_table(part.drop(columns="modality")).assign(modality=modality) for modality, part in report.groupby("modality")]
    )
    print(summary.to_string(index=False, float_format=lambda value: f"{value:.3f}"))
    return report


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", required=True, help="built cohort folder with manifest.csv and missingness/")
    parser.add_argument("--schema", required=True, help="schema YAML of the cohort, e.g. configs/cad_demo.yaml")
    parser.add_argument("--gammas", type=float, nargs="+", default=list(DEFAULT_GAMMAS), help="missing rates to evaluate")
    parser.add_argument("--imputers", nargs="+", default=list(IMPUTER_NAMES), choices=IMPUTER_NAMES)
    parser.add_argument("--mode", default="value", choices=("value", "feature"), help="tabular mask mode (default value)")
    parser.add_argument("--mask-seed", type=int, default=0, help="seed in the mask file names (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="random_state of the imputers (default 0)")
    parser.add_argument("--mask-training", action="store_true", help="apply the mask to the training rows as well")
    parser.add_argument("--output", help="report CSV (default: <cohort>/imputation_quality.csv)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(parse_arguments(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
