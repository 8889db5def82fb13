"""The jobs of a bundle whose subjects have several image modalities and no table (PolyMNIST-like).

Shape letters: ``n`` subjects, ``M`` image modalities, ``C, H, W`` image size, ``N`` tokens,
``D`` token width, ``K`` classes.

Training (:class:`ImageModalitiesTraining`) writes under ``models_dir``: ``model_<embedding>.pt``
and ``prototypes_<embedding>.pt`` for each embedding kind, ``mopoe_imputer.pt`` (the multimodal
VAE that generates missing images) and ``training_summary.json``.

Inference (:class:`ModalitySweep`): for each missing-modality rate ``eta`` the saved mask removes
whole modalities per subject (at least one kept). The VAE generates every removed modality from
the subject's remaining ones, the networks encode observed and generated images, and each
method classifies every subject. Outputs in ``output_dir``: ``results.csv``, ``subjects.csv``,
``accuracy_by_eta.png``, ``selection_examples.png``, ``config.json`` and one MLflow run with the
metrics ``accuracy.<method>`` and ``admitted.<method>`` at step ``round(eta * 100)``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from pipeline import distributed
from pipeline.data.cohort_masks import MASK_FOLDER
from pipeline.data.manifest import Manifest
from pipeline.data.missingness import mask_filename, read_mask
from pipeline.evaluation.methods import (
    ABLATION_METHODS,
    METHODS,
    MethodOutput,
    classify_discard,
    classify_dymo,
    classify_impute_all,
    classify_positive_at_once,
)
from pipeline.evaluation.metrics import bootstrap_accuracy
from pipeline.evaluation.plots import plot_metric_by_rate
from pipeline.evaluation.tracking import TrackedRun
from pipeline.imputation import MoPoEImputer, load_imputer, save_imputer
from pipeline.networks import MaskedFusionTransformer
from pipeline.selection import DyMoSelector, SubsetPrototypes
from pipeline.selection.reward import CALIBRATION_RULES
from pipeline.training import load_checkpoint
from pipeline.workflows.cohort_data import (
    CohortLayout,
    Exclusion,
    SplitLoader,
    check_bad_subject_policy,
    cohort_layout,
    drop_bad_rows,
    exclusion_table,
    log_job_plan,
    manifest_digest,
    open_cohort,
)
from pipeline.workflows.run_files import (
    check_device,
    check_writable_folder,
    code_version,
    report_failure,
    tracking_uri_for,
    write_csv,
    write_text,
)
from pipeline.workflows.training import EMBEDDINGS, train_fusion_network

logger = logging.getLogger(__name__)

IMPUTER_FILE = "mopoe_imputer.pt"
RESULT_COLUMNS = ["method", "eta", "accuracy", "accuracy_low", "accuracy_high", "n", "mean_admitted", "mean_used"]
DEFAULT_ETAS = (0.0, 0.2, 0.4, 0.6, 0.8)
DEFAULT_CALIBRATION = {"cosine": "log_ratio", "euclidean": "ratio"}


def build_image_network(
    layout: CohortLayout, num_classes: int, embedding: str, image_encoder: Mapping[str, Any], fusion: Mapping[str, Any]
) -> MaskedFusionTransformer:
    """Build the fusion network with one MONAI ResNet encoder per image modality."""
    modalities = [{"name": name, "encoder": "image", "kind": layout.kind, **dict(image_encoder)} for name in layout.images]
    return MaskedFusionTransformer(modalities, num_classes=num_classes, embedding=embedding, **dict(fusion))


def stack_images(batches: Sequence[Mapping[str, Any]], layout: CohortLayout) -> torch.Tensor:
    """Stack the images of preloaded batches into ``(n, M, C, H, W)``."""
    return torch.cat([torch.stack([batch[name] for name in layout.images], dim=1) for batch in batches])


class ImageModalitiesTraining:
    """Train the fusion networks and the MoPoE imputer of a multi-image cohort and save them.

    Args:
        manifest, schema: the cohort's manifest and schema paths.
        models_dir: where the trained files go.
        cache_dir: folder for NIfTI files converted from DICOM series.
        build_cohort: repository cohort to build when the manifest is missing, or None.
        spatial_shape: ``(H, W)`` the images are resized to.
        embeddings: embedding kinds to train, each its own network.
        image_encoder: keyword arguments of each :class:`~pipeline.networks.ImageEncoder`.
        fusion: ``dim``, ``depth``, ``heads``, ``projection_dim``, ``dropout`` of the fusion transformer.
        trainer: keyword arguments of :class:`~pipeline.training.SubsetTrainer`.
        imputer: keyword arguments of :class:`~pipeline.imputation.MoPoEImputer`.
        batch_size: subjects per batch.
        seed: seeds weights, training and the imputer.
        device: where networks train.
        tracking_store: SQLite file of the MLflow store used when ``MLFLOW_TRACKING_URI`` is unset.
        experiment: MLflow experiment of the training run.
        run_name: MLflow run name.
        on_bad_subject: ``"error"`` stops at the first subject with an unreadable image or an
            invalid manifest value. ``"skip"`` leaves such subjects out, logs them and lists them
            in ``training_summary.json``.
    """

    @report_failure("bundle configuration")
    def __init__(
        self,
        manifest: str | Path,
        schema: str | Path,
        models_dir: str | Path,
        cache_dir: str | Path,
        *,
        build_cohort: str | None = None,
        spatial_shape: Sequence[int] = (28, 28),
        embeddings: Sequence[str] = EMBEDDINGS,
        image_encoder: Mapping[str, Any] | None = None,
        fusion: Mapping[str, Any] | None = None,
        trainer: Mapping[str, Any] | None = None,
        imputer: Mapping[str, Any] | None = None,
        batch_size: int = 128,
        seed: int = 0,
        device: str = "cpu",
        tracking_store: str | Path | None = None,
        experiment: str = "polymnist_dymo_train",
        run_name: str | None = None,
        on_bad_subject: str = "error",
    ) -> None:
        unknown = sorted(set(embeddings) - set(EMBEDDINGS))
        if unknown or not embeddings:
            raise ValueError(f"embeddings must be a non-empty list of {list(EMBEDDINGS)}, got {list(embeddings)}.")
        self.manifest_path = Path(manifest)
        self.schema_path = Path(schema)
        self.models_dir = Path(models_dir)
        self.cache_dir = Path(cache_dir)
        self.build_cohort = build_cohort
        self.spatial_shape = tuple(int(size) for size in spatial_shape)
        self.embeddings = list(embeddings)
        self.image_encoder = dict(image_encoder or {})
        self.fusion = dict(fusion or {})
        self.trainer = dict(trainer or {})
        self.imputer = dict(imputer or {})
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.device = str(check_device(device))
        self.tracking_store = tracking_store
        self.experiment = experiment
        self.run_name = run_name or time.strftime("train-%Y%m%d-%H%M%S")
        self.on_bad_subject = check_bad_subject_policy(on_bad_subject)

    def run(self) -> dict[str, Any]:
        """Train and save everything; return the summary also written to ``training_summary.json``."""
        with report_failure("training job"):
            return self._run()

    def _run(self) -> dict[str, Any]:
        started = time.perf_counter()
        if distributed.launched_by_torchrun():
            raise RuntimeError(
                "this bundle's training runs in one process: start it with `python -m monai.bundle run`, not "
                "torchrun, because every process would write the same trained files."
            )
        check_writable_folder(self.models_dir, "models_dir")
        manifest = open_cohort(self.manifest_path, self.schema_path, self.build_cohort)
        manifest, exclusions = drop_bad_rows(manifest, self.on_bad_subject)
        layout = cohort_layout(manifest, self.spatial_shape, with_table=False)
        log_job_plan(
            "Training", manifest, modalities=list(layout.images), embeddings=self.embeddings, seed=self.seed,
            bad_subjects=self.on_bad_subject, trained_files=self.models_dir,
        )
        loader = SplitLoader(manifest, {}, layout, self.cache_dir, self.batch_size, self.on_bad_subject)
        self.models_dir.mkdir(parents=True, exist_ok=True)

        tracking_uri = tracking_uri_for(self.tracking_store or self.models_dir.parent / "eval" / "mlruns.db")
        with TrackedRun(self.experiment, self.run_name, tracking_uri) as run:
            run.log_params(self._parameters(manifest))
            logger.info("Reading the training and validation images of %s.", manifest.path)
            train_batches = loader.preload("train")
            val_batches = loader.preload("val")
            exclusions = exclusions + loader.exclusions
            _warn_exclusions(exclusions, "training_summary.json")
            run.log_params({"excluded_subjects": len(exclusions)})
            summary: dict[str, Any] = {
                "excluded_subjects": exclusion_table(exclusions).to_dict("records"),
                "cohort_manifest": str(manifest.path),
                "cohort_sha256": manifest_digest(manifest),
                "seed": self.seed,
                "modalities": layout.modality_names,
                "networks": {},
            }

            for embedding in self.embeddings:
                torch.manual_seed(self.seed)
                network = build_image_network(layout, manifest.schema.label.num_classes, embedding, self.image_encoder, self.fusion)
                _, summary["networks"][embedding] = train_fusion_network(
                    network, train_batches, val_batches, self.models_dir, self.trainer, self.seed, self.device, run,
                    data_fingerprint={
                        "cohort_sha256": summary["cohort_sha256"],
                        "batch_size": self.batch_size,
                        "spatial_shape": list(self.spatial_shape),
                    },
                )

            imputer_started = time.perf_counter()
            images = stack_images(train_batches, layout)
            present = torch.cat([batch["present"] for batch in train_batches])
            logger.info("Training the MoPoE imputer on %d subjects with %d modalities.", len(images), len(layout.images))
            imputer = MoPoEImputer(random_state=self.seed, **self.imputer).fit(images, present)
            save_imputer(imputer, self.models_dir / IMPUTER_FILE)
            summary["imputer"] = {
                "best_epoch": int(imputer.best_epoch_),
                "epochs_run": len(imputer.history_),
                "seconds": round(time.perf_counter() - imputer_started, 1),
            }

            summary["seconds"] = round(time.perf_counter() - started, 1)
            run.log_metrics({"training_seconds": summary["seconds"]}, step=0)
            path = write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n", self.models_dir / "training_summary.json")
            run.log_artifact(path)
        logger.info("Training finished in %.0f s; trained files are in %s.", summary["seconds"], self.models_dir)
        return summary

    def _parameters(self, manifest: Manifest) -> dict[str, Any]:
        return {
            "cohort": str(manifest.path),
            "schema": str(self.schema_path),
            "seed": self.seed,
            "embeddings": ",".join(self.embeddings),
            "spatial_shape": list(self.spatial_shape),
            "image_encoder": json.dumps(self.image_encoder, sort_keys=True),
            "fusion": json.dumps(self.fusion, sort_keys=True),
            "trainer": json.dumps(self.trainer, sort_keys=True),
            "imputer": json.dumps(self.imputer, sort_keys=True),
            "device": self.device,
            "code_version": code_version(),
        }


class ModalitySweep:
    """Evaluate discard, impute_all, DyMo and its ablations at each missing-modality rate.

    Args:
        manifest, schema: the cohort's manifest and schema paths.
        models_dir: folder written by the training job.
        output_dir: where results, figures and the default MLflow store go.
        cache_dir: folder for NIfTI files converted from DICOM series.
        build_cohort: repository cohort to build when the manifest is missing, or None.
        etas: rates of removed modalities, each in [0, 1) with at most two decimals and a saved mask
            (``eta = 0`` needs none).
        methods: any of ``discard``, ``impute_all``, ``dymo_cosine``, ``dymo_euclidean``,
            ``positive_at_once`` and ``greedy_no_calibration`` (the last two are ablations of
            ``dymo_cosine``: admit every positive first-step reward at once, and greedy search
            without calibration).
        calibration: DyMo calibration rule per embedding kind; by default ``log_ratio`` for the
            cosine variant and ``ratio`` for the Euclidean one, as published for natural images.
        mask_seed: seed of the saved masks to read.
        spatial_shape: image size; must be the one the models were trained with.
        split: the evaluated split.
        subject_limit: evaluate only this many subjects, spread evenly over the split, or None.
        n_bootstrap, seed: bootstrap resamples and seed of the accuracy interval.
        example_count: test subjects shown in ``selection_examples.png``.
        batch_size: subjects per encoder batch.
        device: where networks run.
        tracking_store: SQLite file used when ``MLFLOW_TRACKING_URI`` is unset.
        experiment: MLflow experiment name.
        run_name: MLflow run name; a timestamp when None.
        on_bad_subject: ``"error"`` stops at the first subject with an unreadable image or an
            invalid manifest value. ``"skip"`` leaves such subjects out, logs them and lists them
            in ``excluded_subjects.csv``.
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
        etas: Sequence[float] = DEFAULT_ETAS,
        methods: Sequence[str] = METHODS + ABLATION_METHODS,
        calibration: Mapping[str, str] | None = None,
        mask_seed: int = 0,
        spatial_shape: Sequence[int] = (28, 28),
        split: str = "test",
        subject_limit: int | None = None,
        n_bootstrap: int = 1000,
        seed: int = 0,
        example_count: int = 6,
        batch_size: int = 256,
        device: str = "cpu",
        tracking_store: str | Path | None = None,
        experiment: str = "polymnist_dymo",
        run_name: str | None = None,
        on_bad_subject: str = "error",
    ) -> None:
        self.etas = _checked_etas(etas)

        known = METHODS + ABLATION_METHODS
        unknown = sorted(set(methods) - set(known))
        if unknown or not methods:
            raise ValueError(f"unknown methods {unknown}; choose from {list(known)}.")
        if subject_limit is not None and int(subject_limit) < 2:
            raise ValueError(f"subject_limit must be at least 2 subjects or None, got {subject_limit!r}.")

        self.calibration = dict(DEFAULT_CALIBRATION, **dict(calibration or {}))
        bad = {key: value for key, value in self.calibration.items() if key not in EMBEDDINGS or value not in CALIBRATION_RULES}
        if bad:
            raise ValueError(
                f"--calibration: {bad} is not valid; give a rule from {list(CALIBRATION_RULES)} per embedding "
                f"{list(EMBEDDINGS)}, for example --calibration '{{\"cosine\": \"ratio\"}}'."
            )

        self.manifest_path = Path(manifest)
        self.schema_path = Path(schema)
        self.models_dir = Path(models_dir)
        self.output_dir = Path(output_dir)
        self.cache_dir = Path(cache_dir)
        self.build_cohort = build_cohort
        self.methods = list(dict.fromkeys(methods))
        self.mask_seed = int(mask_seed)
        self.spatial_shape = tuple(int(size) for size in spatial_shape)
        self.split = split
        self.subject_limit = None if subject_limit is None else int(subject_limit)
        self.n_bootstrap = int(n_bootstrap)
        self.seed = int(seed)
        self.example_count = int(example_count)
        self.batch_size = int(batch_size)
        self.device = check_device(device)
        self.tracking_store = tracking_store
        self.experiment = experiment
        self.run_name = run_name or time.strftime("dymo-%Y%m%d-%H%M%S")
        self.on_bad_subject = check_bad_subject_policy(on_bad_subject)

    def run(self) -> pd.DataFrame:
        """Run the sweep, write the outputs and the MLflow run; return the results table."""
        with report_failure("inference job"):
            return self._run()

    def _run(self) -> pd.DataFrame:
        started = time.perf_counter()
        check_writable_folder(self.output_dir, "output_dir")
        manifest = open_cohort(self.manifest_path, self.schema_path, self.build_cohort)
        manifest, excluded_rows = drop_bad_rows(manifest, self.on_bad_subject)
        layout = cohort_layout(manifest, self.spatial_shape, with_table=False)
        mask_paths = self._check_masks(manifest)
        log_job_plan(
            "DyMo sweep", manifest, split=self.split, subject_limit=self.subject_limit, methods=self.methods,
            etas=list(self.etas), bad_subjects=self.on_bad_subject, output=self.output_dir,
        )
        networks, prototypes = self._load_networks()
        imputer_path = self.models_dir / IMPUTER_FILE
        if not imputer_path.is_file():
            raise FileNotFoundError(
                f"no MoPoE imputer at {imputer_path}: --models_dir must be a folder written by this bundle's train.json "
                "(bundles/polymnist/models by default), not another bundle's."
            )
        imputer = load_imputer(imputer_path)
        self.output_dir.mkdir(parents=True, exist_ok=True)

        tracking_uri = tracking_uri_for(self.tracking_store or self.output_dir / "mlruns.db")
        with TrackedRun(self.experiment, self.run_name, tracking_uri) as run:
            loader = SplitLoader(manifest, {}, layout, self.cache_dir, self.batch_size, self.on_bad_subject)
            batches = loader.preload(self.split, limit=self.subject_limit)
            exclusions = [row for row in excluded_rows if row.split == self.split] + loader.exclusions
            _warn_exclusions(exclusions, "excluded_subjects.csv")
            subject_ids = [str(subject) for batch in batches for subject in batch["subject_id"]]
            labels = torch.cat([torch.as_tensor(batch["label"]).long() for batch in batches])
            images = stack_images(batches, layout)  # (n, M, C, H, W)
            present = torch.cat([batch["present"] for batch in batches])
            logger.info(
                "DyMo sweep: cohort %s, %d %s subjects, modalities %s, methods %s, etas %s, output %s.",
                manifest.path, len(subject_ids), self.split, layout.images, self.methods, list(self.etas), self.output_dir,
            )
            run.log_params({**self._parameters(manifest, len(subject_ids)), "excluded_subjects": len(exclusions)})

            results, records, examples = [], [], None
            for eta in self.etas:
                step_started = time.perf_counter()
                observed = present.clone()
                if eta > 0:
                    removed = read_mask(mask_paths[eta], manifest.subject_ids + list(manifest.left_out), list(layout.images))
                    removed = removed.set_index("subject_id").loc[subject_ids].to_numpy().astype(bool)
                    observed &= ~torch.from_numpy(removed)
                recovered = torch.from_numpy(imputer.transform(images, observed))
                outputs = self._classify(networks, prototypes, layout, recovered, observed)
                frame = _subject_frame(eta, subject_ids, labels, observed, outputs, self.methods)
                rows = _summarise(frame, eta, self.methods, self.n_bootstrap, self.seed)
                for row in rows:
                    run.log_metrics({f"accuracy.{row['method']}": row["accuracy"], f"admitted.{row['method']}": row["mean_admitted"]}, step=round(eta * 100))
                results.extend(rows)
                records.append(frame)
                if eta == max(self.etas):
                    pictured = "dymo_cosine" if "dymo_cosine" in outputs else next(iter(outputs))
                    examples = (images, recovered, observed, outputs[pictured], pictured)
                logger.info(
                    "eta %.2f done in %.1f s: %s", eta, time.perf_counter() - step_started,
                    ", ".join(f"{row['method']} {row['accuracy']:.3f}" for row in rows),
                )

            table = pd.DataFrame(results, columns=RESULT_COLUMNS)
            paths = self._write_outputs(table, pd.concat(records, ignore_index=True), examples, subject_ids, labels, layout)
            paths.insert(2, write_csv(exclusion_table(exclusions), self.output_dir / "excluded_subjects.csv"))
            for path in paths:
                run.log_artifact(path)
            run.log_metrics({"seconds": time.perf_counter() - started}, step=0)

        formatted = table.to_string(index=False, float_format=lambda value: f"{value:.3f}")
        logger.info("Results (%.0f s):\n%s", time.perf_counter() - started, formatted)
        logger.info("Wrote %s; MLflow store %s, experiment %s, run %s.", ", ".join(str(p) for p in paths), tracking_uri, self.experiment, self.run_name)
        return table

    def _check_masks(self, manifest: Manifest) -> dict[float, Path]:
        paths = {eta: Path(manifest.path).parent / MASK_FOLDER / mask_filename("modality", eta, self.mask_seed) for eta in self.etas if eta > 0}
        missing = [str(path) for path in paths.values() if not path.is_file()]
        if missing:
            requested = " ".join(f"{eta:.2f}" for eta in self.etas if eta > 0)
            raise FileNotFoundError(
                f"no missingness mask at {', '.join(missing)}. Write the masks once with `python -m pipeline write-masks "
                f"--manifest {manifest.path} --schema {self.schema_path} --etas {requested} --seeds {self.mask_seed}`, or "
                "pick etas that have masks with --etas."
            )
        return paths

    def _load_networks(self) -> tuple[dict[str, MaskedFusionTransformer], dict[str, SubsetPrototypes]]:
        needed = {"cosine"} if any(not m.startswith("dymo_euclidean") for m in self.methods) else set()
        needed |= {m.removeprefix("dymo_") for m in self.methods if m.startswith("dymo_")}
        networks, prototypes = {}, {}
        for embedding in sorted(needed):
            checkpoint = self.models_dir / f"model_{embedding}.pt"
            if not checkpoint.is_file():
                raise FileNotFoundError(
                    f"no trained network at {checkpoint}; run the bundle's train.json (with the same --dataset_dir) first."
                )
            network, _ = load_checkpoint(checkpoint, map_location=self.device)
            networks[embedding] = network.eval()
            prototypes[embedding] = SubsetPrototypes.load(self.models_dir / f"prototypes_{embedding}.pt", network).to(self.device)
        return networks, prototypes

    def _classify(
        self,
        networks: Mapping[str, MaskedFusionTransformer],
        prototypes: Mapping[str, SubsetPrototypes],
        layout: CohortLayout,
        recovered: torch.Tensor,
        observed: torch.Tensor,
    ) -> dict[str, MethodOutput]:
        """Encode the recovered images once per network and run every method."""
        outputs: dict[str, MethodOutput] = {}
        start = observed.to(self.device)
        candidates = ~start
        for embedding, network in networks.items():
            tokens = self._encode(network, layout, recovered)

            def selector(calibration: str) -> DyMoSelector:
                return DyMoSelector(network, prototypes[embedding], calibration=calibration, check_fingerprint=False)

            if embedding == "cosine":
                if "discard" in self.methods:
                    prior = torch.full((network.num_classes,), 1.0 / network.num_classes)
                    outputs["discard"] = classify_discard(network, tokens, start, prior.to(self.device))
                if "impute_all" in self.methods:
                    outputs["impute_all"] = classify_impute_all(network, tokens, start, candidates)
                if "positive_at_once" in self.methods:
                    outputs["positive_at_once"] = classify_positive_at_once(selector(self.calibration["cosine"]), tokens, start, candidates)
                if "greedy_no_calibration" in self.methods:
                    outputs["greedy_no_calibration"] = classify_dymo(selector("none"), tokens, tokens, start, candidates)
            if f"dymo_{embedding}" in self.methods:
                outputs[f"dymo_{embedding}"] = classify_dymo(selector(self.calibration[embedding]), tokens, tokens, start, candidates)
        return outputs

    def _encode(self, network: MaskedFusionTransformer, layout: CohortLayout, images: torch.Tensor) -> torch.Tensor:
        """Encode every modality of ``images`` ``(n, M, C, H, W)`` into tokens ``(n, N, D)``, in batches."""
        chunks = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                part = images[start : start + self.batch_size].to(self.device)
                chunks.append(torch.cat([network.encode_modality(name, part[:, index]) for index, name in enumerate(layout.images)], dim=1))
        return torch.cat(chunks)

    def _parameters(self, manifest: Manifest, subjects: int) -> dict[str, Any]:
        return {
            "cohort": str(manifest.path),
            "cohort_sha256": manifest_digest(manifest),
            "schema": str(self.schema_path),
            "models_dir": str(self.models_dir),
            "split": self.split,
            "subjects": subjects,
            "methods": ",".join(self.methods),
            "etas": ",".join(f"{eta:.2f}" for eta in self.etas),
            "calibration": json.dumps(self.calibration, sort_keys=True),
            "mask_seed": self.mask_seed,
            "bootstrap_seed": self.seed,
            "n_bootstrap": self.n_bootstrap,
            "device": str(self.device),
            "code_version": code_version(),
        }

    def _write_outputs(
        self,
        table: pd.DataFrame,
        subjects: pd.DataFrame,
        examples: tuple[torch.Tensor, torch.Tensor, torch.Tensor, MethodOutput, str] | None,
        subject_ids: list[str],
        labels: torch.Tensor,
        layout: CohortLayout,
    ) -> list[Path]:
        paths = [
            write_csv(table, self.output_dir / "results.csv"),
            write_csv(subjects, self.output_dir / "subjects.csv"),
            plot_metric_by_rate(
                table, self.output_dir / "accuracy_by_eta.png", metric="accuracy", rate="eta",
                low="accuracy_low", high="accuracy_high", title=f"{self.experiment}: accuracy by missing-modality rate",
                ylabel="accuracy (95 % bootstrap interval)",
            ),
        ]
        if examples is not None:
            title = f"eta {max(self.etas):.2f}: modalities as observed or generated, and used or not by {examples[4]}"
            paths.append(
                _plot_examples(self.output_dir / "selection_examples.png", examples[:4], subject_ids, labels, layout, self.example_count, title)
            )
        settings = {name: value for name, value in vars(self).items()}
        paths.append(write_text(json.dumps(settings, indent=1, sort_keys=True, default=str) + "\n", self.output_dir / "config.json"))
        return paths


def _warn_exclusions(exclusions: Sequence[Exclusion], listed_in: str) -> None:
    """Log one warning naming the subjects left out, if any."""
    if exclusions:
        logger.warning(
            "Left out %d subjects whose data could not be used (listed in %s): %s.",
            len(exclusions), listed_in, ", ".join(exclusion.subject_id for exclusion in exclusions),
        )


def _checked_etas(etas: Sequence[float]) -> tuple[float, ...]:
    if isinstance(etas, (str, bytes)) or not isinstance(etas, Sequence) or not etas:
        raise ValueError(f"etas must be a non-empty list of rates in [0, 1), for example --etas \"[0,0.4,0.8]\"; got {etas!r}.")
    checked = []
    for eta in etas:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)):
            raise ValueError(f"every eta must be a number in [0, 1), got {eta!r} in {list(etas)}.")
        if not 0 <= eta < 1:
            raise ValueError(
                f"--etas: every eta must be in [0, 1), because each subject keeps at least one modality; got {eta!r}."
            )
        if abs(round(eta, 2) - eta) > 1e-9:
            raise ValueError(
                f"--etas: {eta!r} has more than two decimals, but mask files are named with two; round it to two "
                "decimals, to a rate that has a mask."
            )
        checked.append(float(eta))
    return tuple(dict.fromkeys(checked))


def _subject_frame(
    eta: float,
    subject_ids: list[str],
    labels: torch.Tensor,
    observed: torch.Tensor,
    outputs: Mapping[str, MethodOutput],
    methods: Sequence[str],
) -> pd.DataFrame:
    """One row per subject and method: label, prediction, observed, admitted and used modality counts."""
    frames = []
    for method in methods:
        output = outputs[method]
        probabilities = output.probabilities.detach().cpu()
        frames.append(
            pd.DataFrame(
                {
                    "subject_id": subject_ids,
                    "eta": eta,
                    "method": method,
                    "label": labels.numpy(),
                    "predicted": probabilities.argmax(dim=1).numpy(),
                    "confidence": probabilities.max(dim=1).values.numpy().astype(np.float64),
                    "observed": ["".join("1" if flag else "0" for flag in row) for row in observed.tolist()],
                    "used": ["".join("1" if flag else "0" for flag in row) for row in output.used_mask.cpu().tolist()],
                    "admitted": output.admitted_mask.cpu().sum(dim=1).numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _summarise(frame: pd.DataFrame, eta: float, methods: Sequence[str], n_bootstrap: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    for method in methods:
        part = frame[frame["method"] == method]
        interval = bootstrap_accuracy(part["label"].to_numpy(), part["predicted"].to_numpy(), n_bootstrap=n_bootstrap, seed=seed)
        rows.append(
            {
                "method": method,
                "eta": eta,
                "accuracy": interval.accuracy,
                "accuracy_low": interval.low,
                "accuracy_high": interval.high,
                "n": len(part),
                "mean_admitted": float(part["admitted"].mean()),
                "mean_used": float(part["used"].str.count("1").mean()),
            }
        )
    return rows


def _plot_examples(
    path: Path,
    examples: tuple[torch.Tensor, torch.Tensor, torch.Tensor, MethodOutput],
    subject_ids: list[str],
    labels: torch.Tensor,
    layout: CohortLayout,
    count: int,
    title: str,
) -> Path:
    """Draw, for ``count`` subjects, each modality as observed, or generated and admitted or not."""
    images, recovered, observed, output = examples
    # Subjects spread over the split, which is sorted by class in the repository cohorts.
    rows = np.unique(np.linspace(0, len(subject_ids) - 1, min(count, len(subject_ids))).round().astype(int))

    modalities = len(layout.images)
    figure = Figure(figsize=(1.6 * modalities, 1.8 * len(rows)))
    axes = figure.subplots(len(rows), modalities, squeeze=False)
    for position, row in enumerate(rows):
        predicted = int(output.probabilities[row].argmax())
        for column, name in enumerate(layout.images):
            axis = axes[position][column]
            is_observed = bool(observed[row, column])
            picture = (images if is_observed else recovered)[row, column, 0].numpy()
            axis.imshow(picture.T, cmap="gray")
            axis.set_xticks([])
            axis.set_yticks([])

            if is_observed:
                state, colour = "observed", "black"
            elif bool(output.admitted_mask[row, column]):
                state, colour = "generated, used", "tab:green"
            else:
                state, colour = "generated, not used", "tab:red"
            axis.set_title(f"{name}: {state}", fontsize=7, color=colour)
            for spine in axis.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2)
        axes[position][0].set_ylabel(f"{subject_ids[row]}\nlabel {int(labels[row])}, pred {predicted}", fontsize=7)

    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    partial = path.with_name(path.name + ".partial.png")
    try:
        figure.savefig(partial, dpi=100)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
