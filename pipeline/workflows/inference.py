"""The inference job of an image + table bundle: DyMo and baselines across missing-table rates.

Shape letters: ``n`` test subjects, ``N_img``/``N_tab`` image/table tokens, ``D`` token width,
``K`` classes.

For each missing rate ``gamma`` the saved mask hides that fraction of the test subjects' table
values. The table imputer recovers them, the image-token imputer generates the tokens of every
absent image from the subject's (recovered) table, and each method classifies every subject (see
:mod:`pipeline.evaluation.methods`). The image is encoded once for all rates, because the masks
hide table values only.

Outputs in ``output_dir``: ``results.csv`` (one row per method and rate), ``subjects.csv`` (one
row per subject, method and rate), ``excluded_subjects.csv`` (subjects of the split left out
under ``on_bad_subject="skip"``, with the reason), ``auc_by_gamma.png``, ``config.json``, and one
MLflow run holding them and the metrics ``auc.<method>`` and ``accuracy.<method>`` at step
``round(gamma * 100)``.

Under ``torchrun`` (several processes, see :mod:`pipeline.distributed`) the split is cut into
blocks of ``batch_size`` subjects in manifest order, and each process evaluates every
``world_size``-th block. Rank 0 gathers the per-subject records, puts them back in manifest order
and alone computes the metrics and writes the outputs and the MLflow run. Every computation runs
on the same blocks as in one process, so the records match a single-process run exactly on the
CPU (a test compares the files byte for byte).
"""

from __future__ import annotations

import contextlib
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

from pipeline import distributed
from pipeline.data.manifest import SPLITS, Manifest
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
from pipeline.networks import MaskedFusionTransformer, network_fingerprint
from pipeline.selection import DyMoSelector, SubsetPrototypes
from pipeline.selection.reward import CALIBRATION_RULES
from pipeline.training import load_checkpoint
from pipeline.workflows.cohort_data import (
    ENCODERS_FILE,
    CohortLayout,
    Exclusion,
    SplitData,
    SplitLoader,
    check_bad_subject_policy,
    check_table_masks,
    cohort_layout,
    drop_bad_rows,
    log_job_plan,
    exclusion_table,
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
    write_text,
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


@dataclass
class _Shard:
    """The blocks of the split that this process evaluates, read and collated.

    Attributes:
        blocks: indices of the blocks, ascending. Block ``b`` holds the subjects at positions
            ``b * batch_size`` to ``(b + 1) * batch_size - 1`` of the split, in manifest order.
        sizes: subjects of each block that were read (fewer than the block's when some were left out).
        exclusions: per block, the subjects left out while reading their images.
        data: the ``n`` subjects of all blocks, block after block; None when no subject is left.
    """

    blocks: list[int]
    sizes: list[int]
    exclusions: list[list[Exclusion]]
    data: SplitData | None

    def rows(self) -> list[slice]:
        """Return the rows of ``data`` that belong to each block."""
        ends = np.cumsum([0, *self.sizes])
        return [slice(int(start), int(end)) for start, end in zip(ends[:-1], ends[1:])]


@dataclass
class _ShardRecords:
    """Per-subject records that one process sends to rank 0, or the error that stopped the process.

    Attributes:
        rank: the process's rank.
        blocks: block indices, as in :class:`_Shard`.
        records: per block, one records table per gamma (in ``gammas`` order); empty for a block
            whose every subject was left out.
        exclusions: per block, the subjects left out while reading their images.
        with_image: subjects of the shard that have an image.
        error: ``"<type>: <message>"`` of the exception that stopped the process, or None.
    """

    rank: int
    blocks: list[int]
    records: list[list[pd.DataFrame]]
    exclusions: list[list[Exclusion]]
    with_image: int = 0
    error: str | None = None


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
        on_bad_subject: ``"error"`` stops at the first subject with an unreadable image or an
            invalid table value, naming the file, subject and column. ``"skip"`` leaves such
            subjects out, logs them and lists them in ``excluded_subjects.csv``.
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
        on_bad_subject: str = "error",
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
        check_bad_subject_policy(on_bad_subject)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}.")
        for name, value in (("n_bootstrap", n_bootstrap), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}.")
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
        self.on_bad_subject = on_bad_subject
        self.n_bootstrap = int(n_bootstrap)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.device = check_device(device)
        self.tracking_store = tracking_store
        self.experiment = experiment
        self.run_name = run_name or time.strftime("dymo-%Y%m%d-%H%M%S")

    def run(self) -> pd.DataFrame | None:
        """Run the sweep, write the outputs and the MLflow run; return the results table.

        In a run of several processes, every process evaluates its share of the subjects. Only
        rank 0 writes the outputs and returns the results table, and the other ranks return None.
        When any process fails, every process raises.
        """
        with report_failure("inference job", on_stop="It wrote no result file; run the same command again."):
            return self._run()

    def _run(self) -> pd.DataFrame | None:
        started = time.perf_counter()
        if distributed.launched_by_torchrun() and not distributed.is_distributed():
            raise RuntimeError(
                "torchrun started several processes, but the process group is not initialised, so each process "
                "would evaluate the whole split and write the same files. Add the multi-process config: --config_file "
                "\"['bundles/cad/inference.json','bundles/cad/multi_gpu_inference.json']\"."
            )
        main = distributed.is_main_process()
        failure: Exception | None = None
        with contextlib.ExitStack() as stack:
            # Every process prepares and evaluates inside this block and then joins the gather
            # below, also when it failed, so that no process waits there for one that stopped.
            try:
                manifest, excluded_rows, layout, loader, models, table_imputer = self._prepare()
                if main:
                    tracking_uri = tracking_uri_for(self.tracking_store or self.output_dir / "mlruns.db")
                    run = stack.enter_context(TrackedRun(self.experiment, self.run_name, tracking_uri))
                shard_records = self._evaluate_shard(manifest, layout, loader, models, table_imputer)
            except Exception as error:
                failure = error
                shard_records = _ShardRecords(distributed.rank(), [], [], [], error=f"{type(error).__name__}: {error}")

            shards = distributed.all_gather_objects(shard_records)
            _raise_on_failure(shards, failure)
            if not main:
                return None

            records, loading_exclusions = _merge_shards(shards, len(self.gammas), self.methods)
            exclusions = [row for row in excluded_rows if row.split == self.split] + loading_exclusions
            if exclusions:
                logger.warning(
                    "Left out %d %s subjects whose data could not be used (listed in excluded_subjects.csv): %s.",
                    len(exclusions), self.split, ", ".join(exclusion.subject_id for exclusion in exclusions),
                )
            subject_count = len(records[0]) // len(self.methods)
            logger.info(
                "Evaluated %d %s subjects (%d with an image) in %d process%s.",
                subject_count, self.split, sum(shard.with_image for shard in shards), len(shards),
                "" if len(shards) == 1 else "es",
            )
            run.log_params({
                **self._parameters(manifest, layout, subject_count),
                "excluded_subjects": len(exclusions),
                "processes": len(shards),
            })

            results = []
            for gamma, gamma_records in zip(self.gammas, records):
                rows = _summarise(gamma_records, gamma, self.methods, self.n_bootstrap, self.seed)
                for row in rows:
                    run.log_metrics({f"auc.{row['method']}": row["auc"], f"accuracy.{row['method']}": row["accuracy"]}, step=round(gamma * 100))
                results.extend(rows)
                logger.info("gamma %.2f: %s", gamma, ", ".join(f"{row['method']} AUC {row['auc']:.3f}" for row in rows))

            table = pd.DataFrame(results, columns=RESULT_COLUMNS)
            paths = self._write_outputs(table, pd.concat(records, ignore_index=True), exclusion_table(exclusions))
            for path in paths:
                run.log_artifact(path)
            run.log_metrics({"seconds": time.perf_counter() - started}, step=0)

        logger.info("Results (%.0f s):\n%s", time.perf_counter() - started, _format_table(table))
        logger.info("Wrote %s; MLflow store %s, experiment %s, run %s.", ", ".join(str(p) for p in paths), tracking_uri, self.experiment, self.run_name)
        return table

    def _prepare(self) -> tuple[Manifest, list[Exclusion], CohortLayout, dict[str, Any], dict[str, _Model], Any]:
        """Check the inputs and read the cohort, encoders, networks and table imputer.

        Every process runs these checks, so a missing or invalid input stops each of them with
        the same message.
        """
        check_writable_folder(self.output_dir, "output_dir")
        if distributed.is_distributed() and not self.manifest_path.is_file():
            raise FileNotFoundError(
                f"no cohort manifest at {self.manifest_path}. A run of several processes does not build cohorts, "
                "because every process would write the same files; build it once on every machine with "
                f"`python -m pipeline build-cohort {self.build_cohort or 'cad_demo'} --output {self.manifest_path.parent}`, "
                "or run inference.json once in one process."
            )
        manifest = open_cohort(self.manifest_path, self.schema_path, self.build_cohort)
        manifest, excluded_rows = drop_bad_rows(manifest, self.on_bad_subject)
        layout = cohort_layout(manifest, self.spatial_shape)
        check_table_masks(manifest.path.parent, manifest, self.gammas, self.mask_mode, self.mask_seed, self.schema_path)
        if distributed.is_main_process():
            log_job_plan(
                "DyMo sweep", manifest, split=self.split, subject_limit=self.subject_limit, methods=self.methods,
                gammas=list(self.gammas), bad_subjects=self.on_bad_subject, processes=distributed.world_size(),
                output=self.output_dir,
            )
        encoders = load_encoders(self.models_dir / ENCODERS_FILE, manifest)
        loader = SplitLoader(manifest, encoders, layout, self.cache_dir, self.batch_size, self.on_bad_subject)
        _check_both_classes(loader, self.split, self.subject_limit)
        models = self._load_models()
        table_imputer_path = self.models_dir / table_imputer_file(self.table_imputer)
        if not table_imputer_path.is_file():
            raise FileNotFoundError(
                f"no {self.table_imputer} table imputer at {table_imputer_path}; train one with "
                f"`python -m monai.bundle run --config_file bundles/cad/train.json --table_imputer#kind {self.table_imputer}` "
                "(with the same --dataset_dir and --models_dir), or choose the table imputer that was trained."
            )
        table_imputer = load_imputer(table_imputer_path)
        _check_table_imputer(table_imputer_path, table_imputer, encoders[layout.table], self.models_dir / ENCODERS_FILE)
        return manifest, excluded_rows, layout, loader, models, table_imputer

    def _evaluate_shard(
        self, manifest: Manifest, layout: CohortLayout, loader: SplitLoader, models: Mapping[str, _Model], table_imputer: Any
    ) -> _ShardRecords:
        """Encode this process's blocks, then mask, recover and classify them at every gamma."""
        shard = self._encode_shard(loader, layout, models)
        records: list[list[pd.DataFrame]] = [[] for _ in shard.blocks]
        if shard.data is None:
            return _ShardRecords(distributed.rank(), shard.blocks, records, shard.exclusions)

        prior = _class_prior(manifest)
        columns = list(manifest.schema.tabular_columns(layout.table))
        for gamma in self.gammas:
            step_started = time.perf_counter()
            hidden = torch.from_numpy(
                read_table_mask(manifest.path.parent, manifest, columns, shard.data.subject_ids, gamma, self.mask_mode, self.mask_seed)
            )
            # Evaluate block by block, because some CPU kernels round differently for other batch
            # sizes. A single-process run evaluates the same blocks.
            for number, rows in enumerate(shard.rows()):
                if rows.start == rows.stop:
                    continue
                image_tokens = {name: model.image_tokens[rows] for name, model in models.items()}
                records[number].append(
                    self._evaluate_rate(gamma, layout, _subject_rows(shard.data, rows), hidden[rows], image_tokens, models, table_imputer, prior)
                )
            logger.info(
                "gamma %.2f: evaluated %d subjects in %.1f s.", gamma, len(shard.data.subject_ids), time.perf_counter() - step_started
            )
        return _ShardRecords(
            distributed.rank(), shard.blocks, records, shard.exclusions, with_image=int(shard.data.present[:, 0].sum())
        )

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
            token_imputer_path = self.models_dir / f"image_token_imputer_{embedding}.pt"
            token_imputer = load_imputer(token_imputer_path)
            _check_token_imputer(token_imputer_path, token_imputer, checkpoint, network)
            models[embedding] = _Model(embedding, network.eval(), prototypes, token_imputer)
        self.methods = [m for m in self.methods if m in ("discard", "impute_all") or m.removeprefix("dymo_") in models]
        return models

    def _encode_images(self, loader: SplitLoader, layout: CohortLayout, models: Mapping[str, _Model]) -> SplitData:
        """Read this process's share of the split, encode its present images with every network, keep the rest."""
        return self._encode_shard(loader, layout, models).data

    def _encode_shard(self, loader: SplitLoader, layout: CohortLayout, models: Mapping[str, _Model]) -> _Shard:
        """Read this process's blocks of the split once and encode their present images with every network.

        Sets ``image_tokens`` ``(n, N_img, D)`` of every model, zeros for subjects without an image.
        """
        # Block by block, so every encoder call gets the same subjects as in a single-process run.
        numbers, batches, sizes, exclusions = [], [], [], []
        encoded: dict[str, list[torch.Tensor]] = {name: [] for name in models}
        with torch.no_grad():
            for block in loader.blocks(self.split, limit=self.subject_limit):
                numbers.append(block.index)
                exclusions.append(block.exclusions)
                batch = block.batch
                if batch is None:  # every subject of the block was left out
                    sizes.append(0)
                    continue
                batches.append({key: batch[key] for key in ("subject_id", "label", layout.table, "present")})
                present = batch["present"][:, 0]
                sizes.append(len(present))
                for name, model in models.items():
                    tokens = torch.zeros(len(present), model.network.token_counts[0], model.network.config["dim"])
                    if bool(present.any()):
                        images = batch[layout.image][present].to(self.device)
                        tokens[present] = model.network.encode_modality(layout.image, images).cpu()
                    encoded[name].append(tokens)
                logger.info("Encoded images of %d subjects.", sum(sizes))

        if not numbers:
            logger.warning(
                "Rank %d has no subject to evaluate: the split makes fewer blocks of --batch_size %d than the %d "
                "processes. Pass a smaller --batch_size or start fewer processes.",
                distributed.rank(), self.batch_size, distributed.world_size(),
            )
        data = split_data(batches, layout) if batches else None
        for name, model in models.items():
            model.image_tokens = torch.cat(encoded[name]) if batches else None
        return _Shard(numbers, sizes, exclusions, data)

    def _evaluate_rate(
        self,
        gamma: float,
        layout: CohortLayout,
        data: SplitData,
        hidden: torch.Tensor,
        image_tokens: Mapping[str, torch.Tensor],
        models: Mapping[str, _Model],
        table_imputer: Any,
        prior: torch.Tensor,
    ) -> pd.DataFrame:
        """Mask, recover, classify with every method; return one record per subject and method.

        Args:
            hidden: ``(n, N)`` bool, the table values that the mask of rate ``gamma`` hides.
            image_tokens: per network, the ``(n, N_img, D)`` tokens of the subjects' images.
        """
        observed = dict(data.table, missing_values=data.table["missing_values"] | hidden)
        has_image = data.present[:, 0]
        has_table = ~observed["missing_values"].all(dim=1)
        start = torch.stack([has_image, has_table], dim=1)  # (n, 2)
        recovered = recover_batch(observed, start, table_imputer, table_index=1)
        candidates = torch.stack([~has_image, recovered.recovered.any(dim=1)], dim=1)  # (n, 2)

        outputs: dict[str, MethodOutput] = {}
        for name, model in models.items():
            tokens, observed_tokens = self._tokens(
                model, layout, observed, recovered.table, has_image, has_table, image_tokens=image_tokens[name]
            )
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
        image_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Recovered and observed token sequences ``(n, N, D)`` of one network.

        ``image_tokens`` ``(n, N_img, D)`` are the encoded images of the ``n`` subjects; by default
        ``model.image_tokens``.
        """
        network = model.network
        with torch.no_grad():
            table_tokens = network.encode_modality(layout.table, {k: v.to(self.device) for k, v in recovered.items()}).cpu()
            observed_table = torch.zeros_like(table_tokens)
            if bool(has_table.any()):
                rows = {k: v[has_table].to(self.device) for k, v in observed.items()}
                observed_table[has_table] = network.encode_modality(layout.table, rows).cpu()
        image_tokens = (model.image_tokens if image_tokens is None else image_tokens).clone()
        if bool((~has_image).any()):
            generated = model.token_imputer.transform(table_tokens[~has_image].numpy())
            image_tokens[~has_image] = torch.from_numpy(generated).to(image_tokens.dtype)
        tokens = torch.cat([image_tokens, table_tokens], dim=1)
        observed_tokens = torch.cat([image_tokens, observed_table], dim=1)
        return tokens, observed_tokens

    def _parameters(self, manifest: Manifest, layout: CohortLayout, subject_count: int) -> dict[str, Any]:
        return {
            "cohort": str(manifest.path),
            "cohort_sha256": manifest_digest(manifest),
            "schema": str(self.schema_path),
            "models_dir": str(self.models_dir),
            "split": self.split,
            "subjects": subject_count,
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

    def _write_outputs(self, table: pd.DataFrame, subjects: pd.DataFrame, excluded: pd.DataFrame) -> list[Path]:
        paths = [
            write_csv(table, self.output_dir / "results.csv"),
            write_csv(subjects, self.output_dir / "subjects.csv"),
            write_csv(excluded, self.output_dir / "excluded_subjects.csv"),
            plot_metric_by_rate(
                table, self.output_dir / "auc_by_gamma.png", title=f"{self.experiment}: AUC by missing-table rate",
                ylabel="AUC (95 % bootstrap interval)",
            ),
        ]
        settings = {name: value for name, value in vars(self).items()}
        paths.append(write_text(json.dumps(settings, indent=1, sort_keys=True, default=str) + "\n", self.output_dir / "config.json"))
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


def _subject_rows(data: SplitData, rows: slice) -> SplitData:
    """Return the subjects ``rows`` of ``data``."""
    return SplitData(
        subject_ids=data.subject_ids[rows],
        labels=data.labels[rows],
        table={key: value[rows] for key, value in data.table.items()},
        present=data.present[rows],
    )


def _raise_on_failure(shards: Sequence[_ShardRecords], failure: Exception | None) -> None:
    """Re-raise this process's ``failure``, or raise a RuntimeError when another process failed."""
    if failure is not None:
        raise failure
    failed = [shard for shard in shards if shard.error is not None]
    if failed:
        raise RuntimeError(
            "the inference job stopped because "
            + "; ".join(f"rank {shard.rank} of {len(shards)} failed with {shard.error}" for shard in failed)
            + ". That rank's log shows the traceback."
        )


def _merge_shards(
    shards: Sequence[_ShardRecords], gamma_count: int, methods: Sequence[str]
) -> tuple[list[pd.DataFrame], list[Exclusion]]:
    """Put the records of all processes in single-process order: per gamma, by method, then manifest order.

    Returns:
        One records table per gamma, and the subjects left out while reading images, in manifest order.

    Raises:
        ValueError: no subject of the split was evaluated.
    """
    by_block = {block: (records, left_out) for shard in shards for block, records, left_out in zip(shard.blocks, shard.records, shard.exclusions)}
    ordered = [by_block[block] for block in sorted(by_block)]
    exclusions = [exclusion for _, left_out in ordered for exclusion in left_out]
    evaluated = [records for records, _ in ordered if records]
    if not evaluated:
        raise ValueError(
            f"no subject of the split was evaluated: all {len(exclusions)} were left out (listed in the log). Repair the "
            "listed files, or evaluate another split with --split."
        )

    merged = []
    for gamma_index in range(gamma_count):
        frames = [records[gamma_index] for records in evaluated]
        merged.append(
            pd.concat([frame[frame["method"] == method] for method in methods for frame in frames], ignore_index=True)
        )
    return merged, exclusions


def _check_token_imputer(path: Path, imputer: Any, checkpoint: Path, network: MaskedFusionTransformer) -> None:
    """Raise when the image-token imputer at ``path`` learned the token space of another network than ``checkpoint``'s."""
    fitted_for = getattr(imputer, "fitted_for_", None)
    if fitted_for is None:
        logger.warning(
            "%s records no network fingerprint, so it cannot be checked against %s; train again with train.json to "
            "get files that are checked.", path, checkpoint,
        )
        return
    actual = network_fingerprint(network)
    if fitted_for != actual:
        raise ValueError(
            f"{path} was fitted on the tokens of network {fitted_for[:16]}..., but {checkpoint} contains network "
            f"{actual[:16]}...: the two files come from different trainings. Keep the files of one training "
            "together in --models_dir (train.json writes all of them), or train again."
        )


def _check_table_imputer(path: Path, imputer: Any, encoder: Any, encoders_path: Path) -> None:
    """Raise when the table imputer at ``path`` was fitted on other columns or levels than the encoder gives."""
    expected_columns = tuple(encoder.categorical_columns) + tuple(encoder.continuous_columns)
    found = (tuple(getattr(imputer, "columns_", ())), tuple(getattr(imputer, "cardinalities_", ())))
    if found != (expected_columns, tuple(encoder.cardinalities)):
        raise ValueError(
            f"{path} was fitted on columns {list(found[0])} with category counts {list(found[1])}, but {encoders_path} "
            f"gives columns {list(expected_columns)} with category counts {list(encoder.cardinalities)}: the files come "
            "from different trainings or cohorts. Keep the files of one training together in --models_dir, or train again."
        )


def _check_both_classes(loader: SplitLoader, split: str, limit: int | None) -> None:
    """Raise before any image is read when the evaluated subjects have one class only (AUC is then undefined)."""
    labels = [int(item["label"]) for item in loader.items(split, limit)]
    if len(set(labels)) < 2:
        raise ValueError(
            f"{loader.manifest.path}: the {len(labels)} evaluated subjects of split {split!r} all have class id {labels[0]}, so the "
            "AUC is undefined. Evaluate a split with subjects of both classes (--split), or raise or clear --subject_limit."
        )


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
    """Per method: AUC with a bootstrap interval, accuracy and how often recovered modalities were used.

    The AUC uses the scores as ``subjects.csv`` writes them (6 significant digits). Subjects with
    identical inputs (at gamma 1, every subject without an image) get scores that differ only in
    float rounding, which depends on the batch they ran in, and the full-precision AUC would rank
    them by that rounding. The written scores are also what a reader recomputes the AUC from.
    """
    rows = []
    for method in methods:
        part = records[records["method"] == method]
        labels = part["label"].to_numpy()
        if labels.max(initial=0) > 1:
            raise ValueError("the AUC summary handles two classes; this cohort's labels have more.")
        scores = np.array([float(f"{score:.6g}") for score in part["score"]])
        interval = bootstrap_auc(labels, scores, n_bootstrap=n_bootstrap, seed=seed)
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
