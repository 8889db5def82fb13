"""The inference job of an image + table bundle: DyMo and baselines across missing-table rates.

Shape letters: ``n`` test subjects, ``N_img``/``N_tab`` image/table tokens, ``D`` token width,
``K`` classes.

For each missing rate ``gamma`` the saved mask hides that fraction of the test subjects' table
values. The table imputer recovers them, the image-token imputer generates the tokens of every
absent image from the subject's (recovered) table, and each method classifies every subject (see
:mod:`pipeline.evaluation.methods`). The image is encoded once for all rates, because the masks
hide table values only.

Outputs in ``output_dir``: ``results.csv`` (one row per method and rate), ``subjects.csv`` (one
row per subject, method and rate), ``auc_by_gamma.png``, and one MLflow run holding all three and
the metrics ``auc.<method>`` and ``accuracy.<method>`` at step ``round(gamma * 100)``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.data.manifest import Manifest
from pipeline.data.missingness import check_rate
from pipeline.evaluation.methods import (
    METHODS,
    MethodOutput,
    classify_discard,
    classify_dymo,
    classify_impute_all,
)
from pipeline.evaluation.metrics import accuracy, bootstrap_auc
from pipeline.evaluation.plots import plot_metric_by_rate
from pipeline.evaluation.tracking import TrackedRun
from pipeline.imputation import load_imputer, recover_batch
from pipeline.networks import MaskedFusionTransformer
from pipeline.selection import DyMoSelector, SubsetPrototypes
from pipeline.selection.reward import CALIBRATION_RULES
from pipeline.training import load_checkpoint
from pipeline.workflows.cohort_data import (
    ENCODERS_FILE,
    CohortLayout,
    SplitData,
    SplitLoader,
    check_table_masks,
    cohort_layout,
    load_encoders,
    manifest_digest,
    open_cohort,
    read_table_mask,
    split_data,
)
from pipeline.workflows.run_files import (
    check_device,
    check_writable_folder,
    code_version,
    report_failure,
    tracking_uri_for,
    write_csv,
)
from pipeline.workflows.training import TABLE_IMPUTERS, table_imputer_file

logger = logging.getLogger(__name__)

RESULT_COLUMNS = ["method", "gamma", "auc", "auc_low", "auc_high", "accuracy", "n", "selected_table", "selected_image"]
DEFAULT_GAMMAS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


@dataclass
class _Model:
    """One trained network with its prototypes and image-token imputer."""

    embedding: str
    network: MaskedFusionTransformer
    prototypes: SubsetPrototypes
    token_imputer: Any
    image_tokens: torch.Tensor | None = None  # (n, N_img, D) for subjects with an image, zeros elsewhere


class MissingTableSweep:
    """Evaluate discard, impute_all and DyMo on the test split at each missing-table rate.

    Args:
        manifest: path of the cohort manifest.
        schema: path of the cohort schema.
        models_dir: folder written by the training job.
        output_dir: where results, reports and the default MLflow store go.
        cache_dir: folder for NIfTI files converted from DICOM series.
        build_cohort: repository cohort to build when the manifest is missing, or None.
        gammas: missing rates of table values, each in [0, 1] with at most two decimals.
        methods: any of ``discard``, ``impute_all``, ``dymo_cosine``, ``dymo_euclidean``. A DyMo
            variant whose trained files are absent is skipped with a warning.
        mask_mode: ``"value"`` (a fraction of cells) or ``"feature"`` (a fraction of columns).
        mask_seed: seed of the saved masks to read.
        table_imputer: ``"learned"`` or ``"iterative"``, which saved table imputer to use.
        calibration: DyMo calibration rule (``"ratio"``, ``"log_ratio"``, ``"none"``).
        spatial_shape: image size; must be the one the models were trained with.
        split: the evaluated split.
        subject_limit: evaluate only this many subjects, spread evenly over the split (for quick checks), or None.
        n_bootstrap: bootstrap resamples of the AUC interval.
        seed: seed of the bootstrap.
        batch_size: subjects per encoder batch.
        device: where networks run.
        tracking_store: SQLite file used when ``MLFLOW_TRACKING_URI`` is unset.
        experiment: MLflow experiment name.
        run_name: MLflow run name; a timestamp when None.
    """

    @report_failure("bundle configuration")
    def __init__(
        self,
        manifest: str | Path,
        schema: str | Path,
        models_dir: str | Path,
        output_dir: str | Path,
        cache_dir: str | Path,
        *,
        build_cohort: str | None = None,
        gammas: Sequence[float] = DEFAULT_GAMMAS,
        methods: Sequence[str] = METHODS,
        mask_mode: str = "value",
        mask_seed: int = 0,
        table_imputer: str = "learned",
        calibration: str = "ratio",
        spatial_shape: Sequence[int] = (64, 64, 16),
        split: str = "test",
        subject_limit: int | None = None,
        n_bootstrap: int = 1000,
        seed: int = 0,
        batch_size: int = 32,
        device: str = "cpu",
        tracking_store: str | Path | None = None,
        experiment: str = "cad_dymo",
        run_name: str | None = None,
    ) -> None:
        self.gammas = _checked_gammas(gammas)

        unknown = sorted(set(methods) - set(METHODS))
        if unknown or not methods:
            raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)} (for example --methods \"['discard','dymo_cosine']\").")
        if table_imputer not in TABLE_IMPUTERS:
            raise ValueError(f"table_imputer must be one of {list(TABLE_IMPUTERS)}, got {table_imputer!r}.")
        if mask_mode not in ("value", "feature"):
            raise ValueError(f"mask_mode must be 'value' or 'feature', got {mask_mode!r}.")
        if subject_limit is not None and int(subject_limit) < 2:
            raise ValueError(f"subject_limit must be at least 2 subjects or None, got {subject_limit!r}.")
        if calibration not in CALIBRATION_RULES:
            raise ValueError(f"--calibration must be one of {list(CALIBRATION_RULES)}, got {calibration!r}.")

        self.manifest_path = Path(manifest)
        self.schema_path = Path(schema)
        self.models_dir = Path(models_dir)
        self.output_dir = Path(output_dir)
        self.cache_dir = Path(cache_dir)
        self.build_cohort = build_cohort
        self.methods = list(dict.fromkeys(methods))
        self.mask_mode = mask_mode
        self.mask_seed = int(mask_seed)
        self.table_imputer = table_imputer
        self.calibration = calibration
        self.spatial_shape = tuple(int(size) for size in spatial_shape)
        self.split = split
        self.subject_limit = None if subject_limit is None else int(subject_limit)
        self.n_bootstrap = int(n_bootstrap)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.device = check_device(device)
        self.tracking_store = tracking_store
        self.experiment = experiment
        self.run_name = run_name or time.strftime("dymo-%Y%m%d-%H%M%S")

    def run(self) -> pd.DataFrame:
        """Run the sweep, write the outputs and the MLflow run; return the results table."""
        with report_failure("inference job"):
            return self._run()

    def _run(self) -> pd.DataFrame:
        started = time.perf_counter()
        check_writable_folder(self.output_dir, "output_dir")
        manifest = open_cohort(self.manifest_path, self.schema_path, self.build_cohort)
        layout = cohort_layout(manifest, self.spatial_shape)
        check_table_masks(manifest.path.parent, manifest, self.gammas, self.mask_mode, self.mask_seed, self.schema_path)
        encoders = load_encoders(self.models_dir / ENCODERS_FILE, manifest)
        models = self._load_models()
        table_imputer_path = self.models_dir / table_imputer_file(self.table_imputer)
        if not table_imputer_path.is_file():
            raise FileNotFoundError(
                f"no {self.table_imputer} table imputer at {table_imputer_path}; train one with "
                f"`python -m monai.bundle run --config_file bundles/cad/train.json --table_imputer#kind {self.table_imputer}` "
                "(with the same --dataset_dir and --models_dir), or choose the table imputer that was trained."
            )
        table_imputer = load_imputer(table_imputer_path)
        self.output_dir.mkdir(parents=True, exist_ok=True)

        tracking_uri = tracking_uri_for(self.tracking_store or self.output_dir / "mlruns.db")
        with TrackedRun(self.experiment, self.run_name, tracking_uri) as run:
            loader = SplitLoader(manifest, encoders, layout, self.cache_dir, self.batch_size)
            data = self._encode_images(loader, layout, models)
            logger.info(
                "DyMo sweep: cohort %s, %d %s subjects (%d with an image), methods %s, gammas %s, output %s.",
                manifest.path, len(data.subject_ids), self.split, int(data.present[:, 0].sum()),
                self.methods, list(self.gammas), self.output_dir,
            )
            run.log_params(self._parameters(manifest, layout, data))
            prior = _class_prior(manifest)

            results, subjects = [], []
            for gamma in self.gammas:
                step_started = time.perf_counter()
                records = self._evaluate_rate(gamma, manifest, layout, data, models, table_imputer, prior)
                rows = _summarise(records, gamma, self.methods, self.n_bootstrap, self.seed)
                for row in rows:
                    run.log_metrics({f"auc.{row['method']}": row["auc"], f"accuracy.{row['method']}": row["accuracy"]}, step=round(gamma * 100))
                results.extend(rows)
                subjects.append(records)
                logger.info(
                    "gamma %.2f done in %.1f s: %s", gamma, time.perf_counter() - step_started,
                    ", ".join(f"{row['method']} AUC {row['auc']:.3f}" for row in rows),
                )

            table = pd.DataFrame(results, columns=RESULT_COLUMNS)
            paths = self._write_outputs(table, pd.concat(subjects, ignore_index=True))
            for path in paths:
                run.log_artifact(path)
            run.log_metrics({"seconds": time.perf_counter() - started}, step=0)

        logger.info("Results (%.0f s):\n%s", time.perf_counter() - started, _format_table(table))
        logger.info("Wrote %s; MLflow store %s, experiment %s, run %s.", ", ".join(str(p) for p in paths), tracking_uri, self.experiment, self.run_name)
        return table

    def _load_models(self) -> dict[str, _Model]:
        models = {}
        for method in self.methods:
            embedding = "cosine" if method in ("discard", "impute_all") else method.removeprefix("dymo_")
            if embedding in models:
                continue
            checkpoint = self.models_dir / f"model_{embedding}.pt"
            if not checkpoint.is_file():
                if method.startswith("dymo_") and embedding != "cosine":
                    logger.warning("Skipping %s: no trained network at %s (train it with train.json).", method, checkpoint)
                    continue
                raise FileNotFoundError(
                    f"no trained network at {checkpoint}; run `python -m monai.bundle run --config_file "
                    "bundles/cad/train.json` (with the same --dataset_dir and --schema) first."
                )
            network, _ = load_checkpoint(checkpoint, map_location=self.device)
            prototypes = SubsetPrototypes.load(self.models_dir / f"prototypes_{embedding}.pt", network).to(self.device)
            token_imputer = load_imputer(self.models_dir / f"image_token_imputer_{embedding}.pt")
            models[embedding] = _Model(embedding, network.eval(), prototypes, token_imputer)
        self.methods = [m for m in self.methods if m in ("discard", "impute_all") or m.removeprefix("dymo_") in models]
        return models

    def _encode_images(self, loader: SplitLoader, layout: CohortLayout, models: Mapping[str, _Model]) -> SplitData:
        """Read the split once, encode its present images with every network, keep the rest."""
        batches = []
        encoded: dict[str, list[torch.Tensor]] = {name: [] for name in models}
        subjects = 0
        with torch.no_grad():
            for batch in loader.loader(self.split, limit=self.subject_limit):
                batches.append({key: batch[key] for key in ("subject_id", "label", layout.table, "present")})
                present = batch["present"][:, 0]
                for name, model in models.items():
                    tokens = torch.zeros(len(present), model.network.token_counts[0], model.network.config["dim"])
                    if bool(present.any()):
                        images = batch[layout.image][present].to(self.device)
                        tokens[present] = model.network.encode_modality(layout.image, images).cpu()
                    encoded[name].append(tokens)
                subjects += len(present)
                logger.info("Encoded images of %d subjects.", subjects)
        for name, model in models.items():
            model.image_tokens = torch.cat(encoded[name])
        return split_data(batches, layout)

    def _evaluate_rate(
        self,
        gamma: float,
        manifest: Manifest,
        layout: CohortLayout,
        data: SplitData,
        models: Mapping[str, _Model],
        table_imputer: Any,
        prior: torch.Tensor,
    ) -> pd.DataFrame:
        """Mask, recover, classify with every method; return one record per subject and method."""
        columns = list(manifest.schema.tabular_columns(layout.table))
        hidden = torch.from_numpy(
            read_table_mask(manifest.path.parent, manifest, columns, data.subject_ids, gamma, self.mask_mode, self.mask_seed)
        )
        observed = dict(data.table, missing_values=data.table["missing_values"] | hidden)
        has_image = data.present[:, 0]
        has_table = ~observed["missing_values"].all(dim=1)
        start = torch.stack([has_image, has_table], dim=1)  # (n, 2)
        recovered = recover_batch(observed, start, table_imputer, table_index=1)
        candidates = torch.stack([~has_image, recovered.recovered.any(dim=1)], dim=1)  # (n, 2)

        outputs: dict[str, MethodOutput] = {}
        for name, model in models.items():
            tokens, observed_tokens = self._tokens(model, layout, observed, recovered.table, has_image, has_table)
            tokens, observed_tokens = tokens.to(self.device), observed_tokens.to(self.device)
            device_start, device_candidates = start.to(self.device), candidates.to(self.device)
            if name == "cosine":
                if "discard" in self.methods:
                    outputs["discard"] = classify_discard(model.network, observed_tokens, device_start, prior.to(self.device))
                if "impute_all" in self.methods:
                    outputs["impute_all"] = classify_impute_all(model.network, tokens, device_start, device_candidates)
            method = f"dymo_{name}"
            if method in self.methods:
                selector = DyMoSelector(model.network, model.prototypes, calibration=self.calibration, check_fingerprint=False)
                outputs[method] = classify_dymo(selector, tokens, observed_tokens, device_start, device_candidates)

        return _subject_records(gamma, data, start, candidates, outputs, self.methods)

    def _tokens(
        self,
        model: _Model,
        layout: CohortLayout,
        observed: Mapping[str, torch.Tensor],
        recovered: Mapping[str, torch.Tensor],
        has_image: torch.Tensor,
        has_table: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Recovered and observed token sequences ``(n, N, D)`` of one network."""
        network = model.network
        with torch.no_grad():
            table_tokens = network.encode_modality(layout.table, {k: v.to(self.device) for k, v in recovered.items()}).cpu()
            observed_table = torch.zeros_like(table_tokens)
            if bool(has_table.any()):
                rows = {k: v[has_table].to(self.device) for k, v in observed.items()}
                observed_table[has_table] = network.encode_modality(layout.table, rows).cpu()
        image_tokens = model.image_tokens.clone()
        if bool((~has_image).any()):
            generated = model.token_imputer.transform(table_tokens[~has_image].numpy())
            image_tokens[~has_image] = torch.from_numpy(generated).to(image_tokens.dtype)
        tokens = torch.cat([image_tokens, table_tokens], dim=1)
        observed_tokens = torch.cat([image_tokens, observed_table], dim=1)
        return tokens, observed_tokens

    def _parameters(self, manifest: Manifest, layout: CohortLayout, data: SplitData) -> dict[str, Any]:
        return {
            "cohort": str(manifest.path),
            "cohort_sha256": manifest_digest(manifest),
            "schema": str(self.schema_path),
            "models_dir": str(self.models_dir),
            "split": self.split,
            "subjects": len(data.subject_ids),
            "methods": ",".join(self.methods),
            "gammas": ",".join(f"{gamma:.2f}" for gamma in self.gammas),
            "mask_mode": self.mask_mode,
            "mask_seed": self.mask_seed,
            "bootstrap_seed": self.seed,
            "n_bootstrap": self.n_bootstrap,
            "table_imputer": self.table_imputer,
            "calibration": self.calibration,
            "modalities": ",".join(layout.modality_names),
            "device": str(self.device),
            "code_version": code_version(),
        }

    def _write_outputs(self, table: pd.DataFrame, subjects: pd.DataFrame) -> list[Path]:
        paths = [
            write_csv(table, self.output_dir / "results.csv"),
            write_csv(subjects, self.output_dir / "subjects.csv"),
            plot_metric_by_rate(
                table, self.output_dir / "auc_by_gamma.png", title=f"{self.experiment}: AUC by missing-table rate",
                ylabel="AUC (95 % bootstrap interval)",
            ),
        ]
        settings = {name: value for name, value in vars(self).items()}
        config_path = self.output_dir / "config.json"
        config_path.write_text(json.dumps(settings, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
        paths.append(config_path)
        return paths


def _checked_gammas(gammas: Sequence[float]) -> tuple[float, ...]:
    if isinstance(gammas, (str, bytes)) or not isinstance(gammas, Sequence) or not gammas:
        raise ValueError(f"gammas must be a non-empty list of rates in [0, 1], for example --gammas \"[0,0.5,1]\"; got {gammas!r}.")
    checked = []
    for gamma in gammas:
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
            raise ValueError(f"every gamma must be a number in [0, 1], got {gamma!r} in {list(gammas)}.")
        try:
            check_rate("gamma", float(gamma))
        except ValueError as error:
            raise ValueError(f"--gammas: {error}") from None
        if abs(round(gamma, 2) - gamma) > 1e-9:
            raise ValueError(
                f"--gammas: {gamma!r} has more than two decimals, but mask files are named with two; round it to two "
                "decimals, to a rate that has a mask."
            )
        checked.append(float(gamma))
    return tuple(dict.fromkeys(checked))


def _class_prior(manifest: Manifest) -> torch.Tensor:
    """Training class frequencies ``(K,)``, the score of a subject with nothing observed under discard."""
    from pipeline.data.schema import LABEL_COLUMN

    rows = manifest.frame[manifest.split_column] == "train"
    labels = manifest.frame.loc[rows, LABEL_COLUMN].dropna().astype(int).to_numpy()
    counts = np.bincount(labels, minlength=manifest.schema.label.num_classes).astype(np.float64)
    return torch.from_numpy(counts / counts.sum()).float()


def _subject_records(
    gamma: float,
    data: SplitData,
    start: torch.Tensor,
    candidates: torch.Tensor,
    outputs: Mapping[str, MethodOutput],
    methods: Sequence[str],
) -> pd.DataFrame:
    """One row per subject and method: label, score, and which recovered modalities were used."""
    image_state = np.where(start[:, 0].numpy(), "observed", "recovered")
    table_state = np.select(
        [~start[:, 1].numpy(), candidates[:, 1].numpy()], ["recovered", "partly_recovered"], default="observed"
    )
    frames = []
    for method in methods:
        output = outputs[method]
        probabilities = output.probabilities.detach().cpu()
        admitted = output.admitted_mask.detach().cpu()
        frames.append(
            pd.DataFrame(
                {
                    "subject_id": data.subject_ids,
                    "gamma": gamma,
                    "method": method,
                    "label": data.labels.numpy(),
                    "score": probabilities[:, -1].numpy().astype(np.float64),
                    "predicted": probabilities.argmax(dim=1).numpy(),
                    "image": image_state,
                    "table": table_state,
                    "used_recovered_image": np.where(candidates[:, 0].numpy(), admitted[:, 0].numpy(), False),
                    "used_recovered_table": np.where(candidates[:, 1].numpy(), admitted[:, 1].numpy(), False),
                    "image_candidate": candidates[:, 0].numpy(),
                    "table_candidate": candidates[:, 1].numpy(),
                    "nothing_observed": ~start.any(dim=1).numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _summarise(records: pd.DataFrame, gamma: float, methods: Sequence[str], n_bootstrap: int, seed: int) -> list[dict[str, Any]]:
    """Per method: AUC with a bootstrap interval, accuracy and how often recovered modalities were used."""
    rows = []
    for method in methods:
        part = records[records["method"] == method]
        labels = part["label"].to_numpy()
        if labels.max(initial=0) > 1:
            raise ValueError("the AUC summary handles two classes; this cohort's labels have more.")
        interval = bootstrap_auc(labels, part["score"].to_numpy(), n_bootstrap=n_bootstrap, seed=seed)
        rows.append(
            {
                "method": method,
                "gamma": gamma,
                "auc": interval.auc,
                "auc_low": interval.low,
                "auc_high": interval.high,
                "accuracy": accuracy(labels, part["predicted"].to_numpy()),
                "n": len(part),
                "selected_table": _rate(part["used_recovered_table"], part["table_candidate"] & ~part["nothing_observed"]),
                "selected_image": _rate(part["used_recovered_image"], part["image_candidate"] & ~part["nothing_observed"]),
            }
        )
    return rows


def _rate(used: pd.Series, candidate: pd.Series) -> float:
    """Fraction of the ``candidate`` subjects that used their recovered modality; NaN when there are none.

    Subjects with nothing observed are left out by the caller: every method uses all their
    recovered modalities, so counting them would not measure a choice.
    """
    count = int(candidate.sum())
    return float(used[candidate].sum()) / count if count else float("nan")


def _format_table(table: pd.DataFrame) -> str:
    formatted = table.copy()
    for column in ("auc", "auc_low", "auc_high", "accuracy", "selected_table", "selected_image"):
        formatted[column] = formatted[column].map(lambda value: f"{value:.3f}")
    return formatted.to_string(index=False)
