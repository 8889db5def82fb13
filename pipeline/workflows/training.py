"""The training job of an image + table bundle: network, prototypes and imputers, written to one folder.

Shape letters: ``n`` training subjects, ``N_img``/``N_tab`` image/table tokens, ``D`` token width.

Files written under ``models_dir`` (all state_dicts, JSON or checksummed torch files, read
without unpickling code):

- ``tabular_encoders.json``: category levels and normalisation fitted on the training split;
- ``model_<embedding>.pt``: the fusion network of each embedding kind (cosine, Euclidean);
- ``prototypes_<embedding>.pt``: its per-subset prototypes;
- ``image_token_imputer_<embedding>.pt``: image tokens from table tokens, in that network's
  token space;
- ``table_imputer.pt`` (learned) or ``table_imputer.skops`` (iterative): missing table values;
- ``training_summary.json``: seeds, cohort digest, epochs, validation AUC, timings.

While the job runs, ``training_state_<embedding>.pt`` contains the training state of each network
after its last finished epoch. A rerun with the same settings continues from there (option
``resume``), and the job deletes these files once every other file is written.

Under ``torchrun`` with an initialised process group (``bundles/cad/multi_gpu_train.json``),
every process trains on its share of the batches. ``batch_size`` is per process, so with
``N`` processes an optimiser step sees ``N * batch_size`` subjects and an epoch has about
``1 / N`` as many steps. Rank 0 alone fits the imputers and prototypes, writes the files and
logs the MLflow run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import distributed
from pipeline.data.manifest import Manifest
from pipeline.data.tabular import EncodedTable, TabularEncoder
from pipeline.evaluation.tracking import TrackedRun
from pipeline.imputation import (
    IterativeTabularImputer,
    LearnedTabularImputer,
    TokenImputer,
    save_imputer,
)
from pipeline.networks import MaskedFusionTransformer, network_fingerprint
from pipeline.selection import fit_subset_prototypes
from pipeline.training import SubsetTrainer
from pipeline.workflows.cohort_data import (
    ENCODERS_FILE,
    CohortLayout,
    SplitLoader,
    check_bad_subject_policy,
    cohort_layout,
    drop_bad_rows,
    exclusion_table,
    fit_encoders,
    log_job_plan,
    manifest_digest,
    open_cohort,
    save_encoders,
)
from pipeline.workflows.run_files import (
    check_device,
    check_writable_folder,
    report_failure,
    tracking_uri_for,
    write_text,
)

logger = logging.getLogger(__name__)

EMBEDDINGS = ("cosine", "euclidean")
TRAINING_STATE_PREFIX = "training_state_"
TABLE_IMPUTERS = ("learned", "iterative")


def training_state_file(embedding: str) -> str:
    """File name of the training state of the ``embedding`` network while the job runs."""
    return f"{TRAINING_STATE_PREFIX}{embedding}.pt"


def table_imputer_file(kind: str) -> str:
    """File name of the saved table imputer of ``kind`` (``"learned"`` or ``"iterative"``)."""
    return "table_imputer.skops" if kind == "iterative" else "table_imputer.pt"


def build_network(
    layout: CohortLayout,
    encoder: TabularEncoder,
    num_classes: int,
    embedding: str,
    image_encoder: Mapping[str, Any],
    table_encoder: Mapping[str, Any],
    fusion: Mapping[str, Any],
) -> MaskedFusionTransformer:
    """Build the fusion network of an image + table cohort.

    Args:
        layout: the cohort's modalities; the image is encoded by a MONAI ResNet of ``layout.kind``.
        encoder: the fitted table encoder, which gives the categorical cardinalities.
        num_classes: ``K``.
        embedding: ``"cosine"`` or ``"euclidean"``.
        image_encoder: keyword arguments of :class:`~pipeline.networks.ImageEncoder`
            (``backbone``, ``widths``, ``token_grid``).
        table_encoder: keyword arguments of :class:`~pipeline.networks.TabularTokenizer`
            (``dim``, ``depth``, ``heads``).
        fusion: ``dim``, ``depth``, ``heads``, ``projection_dim``, ``dropout`` of the fusion transformer.
    """
    modalities = [
        {"name": layout.image, "encoder": "image", "kind": layout.kind, **dict(image_encoder)},
        {
            "name": layout.table,
            "encoder": "tabular",
            "categorical_cardinalities": list(encoder.cardinalities),
            "num_continuous": len(encoder.continuous_columns),
            **dict(table_encoder),
        },
    ]
    return MaskedFusionTransformer(modalities, num_classes=num_classes, embedding=embedding, **dict(fusion))


class ImageTableTraining:
    """Train the fusion networks, fit prototypes and imputers, and save them for inference.

    Args:
        manifest: path of the cohort manifest.
        schema: path of the cohort schema.
        models_dir: where the trained files go.
        cache_dir: folder for NIfTI files converted from DICOM series.
        build_cohort: repository cohort to build when the manifest is missing, or None.
        spatial_shape: size images are resized to, e.g. ``(H, W, T)`` for a cine.
        embeddings: embedding kinds to train, each its own network (``"cosine"``, ``"euclidean"``).
        image_encoder, table_encoder, fusion: network hyper-parameters, see :func:`build_network`.
        trainer: keyword arguments of :class:`~pipeline.training.SubsetTrainer`.
        table_imputer: ``{"kind": "learned" | "iterative", **keyword arguments}`` of the imputer.
        token_imputer: keyword arguments of :class:`~pipeline.imputation.TokenImputer`.
        batch_size: subjects per batch.
        seed: seeds the network weights, training, prototypes' data order and imputers.
        device: where networks train (``"cpu"``, ``"cuda"``).
        tracking_store: SQLite file of the MLflow store used when ``MLFLOW_TRACKING_URI`` is unset.
        experiment: MLflow experiment of the training run.
        run_name: MLflow run name.
        resume: continue each network's training from its state file in ``models_dir`` when one
            from a run with the same settings exists. When false, such files are deleted and
            training starts from the first epoch.
        on_bad_subject: ``"error"`` stops at the first subject with an unreadable image or an
            invalid table value, naming the file, subject and column. ``"skip"`` leaves such
            subjects out, logs them and lists them in ``training_summary.json``.
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
        spatial_shape: Sequence[int] = (64, 64, 16),
        embeddings: Sequence[str] = EMBEDDINGS,
        image_encoder: Mapping[str, Any] | None = None,
        table_encoder: Mapping[str, Any] | None = None,
        fusion: Mapping[str, Any] | None = None,
        trainer: Mapping[str, Any] | None = None,
        table_imputer: Mapping[str, Any] | None = None,
        token_imputer: Mapping[str, Any] | None = None,
        batch_size: int = 32,
        seed: int = 0,
        device: str = "cpu",
        tracking_store: str | Path | None = None,
        experiment: str = "cad_dymo_train",
        run_name: str | None = None,
        resume: bool = True,
        on_bad_subject: str = "error",
    ) -> None:
        unknown = sorted(set(embeddings) - set(EMBEDDINGS))
        if unknown or not embeddings:
            raise ValueError(f"embeddings must be a non-empty list of {list(EMBEDDINGS)}, got {list(embeddings)}.")
        if not isinstance(resume, bool):
            raise TypeError(f"resume must be true or false, got {resume!r}.")
        check_bad_subject_policy(on_bad_subject)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
            raise ValueError(f"batch_size must be a whole number of at least 2 (BatchNorm needs two images), got {batch_size!r}.")
        table_imputer = dict(table_imputer or {"kind": "learned"})
        if table_imputer.get("kind") not in TABLE_IMPUTERS:
            raise ValueError(f"table_imputer.kind must be one of {list(TABLE_IMPUTERS)}, got {table_imputer.get('kind')!r}.")
        self.manifest_path = Path(manifest)
        self.schema_path = Path(schema)
        self.models_dir = Path(models_dir)
        self.cache_dir = Path(cache_dir)
        self.build_cohort = build_cohort
        self.spatial_shape = tuple(int(size) for size in spatial_shape)
        self.embeddings = list(embeddings)
        self.image_encoder = dict(image_encoder or {})
        self.table_encoder = dict(table_encoder or {})
        self.fusion = dict(fusion or {})
        self.trainer = dict(trainer or {})
        self.table_imputer = table_imputer
        self.token_imputer = dict(token_imputer or {})
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.device = str(check_device(device))
        self.tracking_store = tracking_store
        self.experiment = experiment
        self.run_name = run_name or time.strftime("train-%Y%m%d-%H%M%S")
        self.resume = resume
        self.on_bad_subject = on_bad_subject

    def run(self) -> dict[str, Any]:
        """Train and save everything; return the summary also written to ``training_summary.json``.

        Under ``torchrun`` every process returns the summary of its own share of the work; that
        of rank 0 is the one written.

        Raises:
            RuntimeError: the job runs under ``torchrun`` with several processes, but the process
                group was not initialised (the multi-process config was not given).
        """
        stop_advice = (
            f"Run the same command again to continue from the last finished epoch (the state files are in {self.models_dir})."
            if self.resume else "Run the same command again."
        )
        with report_failure("training job", on_stop=stop_advice):
            return self._run()

    def _run(self) -> dict[str, Any]:
        started = time.perf_counter()
        _check_process_group()
        main = distributed.is_main_process()
        check_writable_folder(self.models_dir, "models_dir")
        with _main_process_first():
            manifest = open_cohort(self.manifest_path, self.schema_path, self.build_cohort)
        manifest, self.exclusions = drop_bad_rows(manifest, self.on_bad_subject)
        layout = cohort_layout(manifest, self.spatial_shape)
        if main:
            log_job_plan(
                "Training", manifest, modalities=layout.modality_names, embeddings=self.embeddings,
                table_imputer=self.table_imputer["kind"], seed=self.seed, bad_subjects=self.on_bad_subject,
                processes=distributed.world_size(), trained_files=self.models_dir,
            )
        encoders = fit_encoders(manifest)
        if main:
            save_encoders(encoders, self.models_dir / ENCODERS_FILE)
        loader = SplitLoader(manifest, encoders, layout, self.cache_dir, self.batch_size, self.on_bad_subject)

        tracking = _NoRun()
        if main:
            tracking_uri = tracking_uri_for(self.tracking_store or self.models_dir.parent / "eval" / "mlruns.db")
            tracking = TrackedRun(self.experiment, self.run_name, tracking_uri)
        with tracking as run:
            run.log_params(self._parameters(manifest))
            summary = self._train_all(manifest, layout, encoders, loader, run)
            summary["seconds"] = round(time.perf_counter() - started, 1)
            run.log_metrics({"training_seconds": summary["seconds"]}, step=0)
            if main:
                path = self._write_summary(summary)
                run.log_artifact(path)
                self._delete_training_states()
        distributed.barrier()
        if main:
            logger.info("Training finished in %.0f s; trained files are in %s.", summary["seconds"], self.models_dir)
        return summary

    def _train_all(
        self, manifest: Manifest, layout: CohortLayout, encoders: Mapping[str, TabularEncoder], loader: SplitLoader, run: TrackedRun
    ) -> dict[str, Any]:
        logger.info("Reading the training and validation images (%s).", manifest.path)
        train_batches = loader.preload("train")
        val_batches = loader.preload("val")
        self.exclusions = self.exclusions + loader.exclusions
        if self.exclusions:
            logger.warning(
                "Left out %d subjects whose data could not be used (listed in training_summary.json): %s.",
                len(self.exclusions), ", ".join(exclusion.subject_id for exclusion in self.exclusions),
            )
        run.log_params({"excluded_subjects": len(self.exclusions)})
        summary: dict[str, Any] = {
            "excluded_subjects": exclusion_table(self.exclusions).to_dict("records"),
            "cohort_manifest": str(manifest.path),
            "cohort_sha256": manifest_digest(manifest),
            "seed": self.seed,
            "modalities": layout.modality_names,
            "subjects": {split: int((manifest.frame[manifest.split_column] == split).sum()) for split in ("train", "val", "test")},
            "networks": {},
        }

        if distributed.is_main_process():
            summary["table_imputer"] = self._fit_table_imputer(manifest, encoders[layout.table], layout)
        for embedding in self.embeddings:
            summary["networks"][embedding] = self._train_network(
                embedding, manifest, layout, encoders[layout.table], train_batches, val_batches, run
            )
        return summary

    def _train_network(
        self,
        embedding: str,
        manifest: Manifest,
        layout: CohortLayout,
        encoder: TabularEncoder,
        train_batches: list[dict[str, Any]],
        val_batches: list[dict[str, Any]],
        run: TrackedRun,
    ) -> dict[str, Any]:
        torch.manual_seed(self.seed)
        network = build_network(
            layout, encoder, manifest.schema.label.num_classes, embedding, self.image_encoder, self.table_encoder, self.fusion
        )
        data_fingerprint = {
            "cohort_sha256": manifest_digest(manifest),
            "batch_size": self.batch_size,
            "spatial_shape": list(self.spatial_shape),
        }
        network, summary = train_fusion_network(
            network, train_batches, val_batches, self.models_dir, self.trainer, self.seed, self.device, run,
            resume=self.resume, keep_state=True, data_fingerprint=data_fingerprint,
        )
        if distributed.is_main_process():
            summary["image_token_validation_mse"] = self._fit_token_imputer(network, layout, train_batches, embedding)
            run.log_metrics({f"image_token_validation_mse.{embedding}": summary["image_token_validation_mse"]}, step=0)
        return summary

    def _fit_token_imputer(
        self, network: MaskedFusionTransformer, layout: CohortLayout, batches: list[dict[str, Any]], embedding: str
    ) -> float:
        """Fit image tokens from table tokens on training subjects with both; return the validation error."""
        image_tokens, table_tokens, has_image = [], [], []
        with torch.no_grad():
            for batch in batches:
                present = batch["present"].to(self.device)
                tokens = network.encode(
                    {layout.image: batch[layout.image].to(self.device), layout.table: _to(batch[layout.table], self.device)},
                    present,
                )
                image_tokens.append(tokens[:, network.token_slice(layout.image)].cpu())
                table_tokens.append(tokens[:, network.token_slice(layout.table)].cpu())
                has_image.append(present[:, 0].cpu())
        imputer = TokenImputer(random_state=self.seed, **self.token_imputer).fit(
            torch.cat(image_tokens).numpy(), torch.cat(table_tokens).numpy(), torch.cat(has_image).numpy()
        )
        imputer.fitted_for_ = network_fingerprint(network)  # inference checks the pairing
        save_imputer(imputer, self.models_dir / f"image_token_imputer_{embedding}.pt")
        losses = [entry["validation_loss"] for entry in imputer.history_ if entry.get("validation_loss") is not None]
        return float(min(losses)) if losses else float("nan")

    def _fit_table_imputer(self, manifest: Manifest, encoder: TabularEncoder, layout: CohortLayout) -> dict[str, Any]:
        started = time.perf_counter()
        parameters = {key: value for key, value in self.table_imputer.items() if key != "kind"}
        kind = self.table_imputer["kind"]
        rows = (manifest.frame[manifest.split_column] == "train").to_numpy()
        table: EncodedTable = encoder.transform(manifest.tabular(layout.table)[rows])
        if kind == "iterative":
            imputer = IterativeTabularImputer(random_state=self.seed, **parameters)
        else:
            imputer = LearnedTabularImputer(random_state=self.seed, **parameters)
        logger.info("Fitting the %s table imputer on %d training rows.", kind, int(rows.sum()))
        imputer.fit(table, encoder.cardinalities)
        save_imputer(imputer, self.models_dir / table_imputer_file(kind))
        return {"kind": kind, "parameters": parameters, "seconds": round(time.perf_counter() - started, 1)}

    def _parameters(self, manifest: Manifest) -> dict[str, Any]:
        return {
            "cohort": str(manifest.path),
            "schema": str(self.schema_path),
            "seed": self.seed,
            "embeddings": ",".join(self.embeddings),
            "spatial_shape": list(self.spatial_shape),
            "image_encoder": json.dumps(self.image_encoder, sort_keys=True),
            "table_encoder": json.dumps(self.table_encoder, sort_keys=True),
            "fusion": json.dumps(self.fusion, sort_keys=True),
            "trainer": json.dumps(self.trainer, sort_keys=True),
            "table_imputer": json.dumps(self.table_imputer, sort_keys=True),
            "token_imputer": json.dumps(self.token_imputer, sort_keys=True),
            "device": self.device,
            "processes": distributed.world_size(),
            "resume": self.resume,
        }

    def _write_summary(self, summary: Mapping[str, Any]) -> Path:
        return write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n", self.models_dir / "training_summary.json")

    def _delete_training_states(self) -> None:
        """Delete the training-state files once every trained file is written."""
        for embedding in self.embeddings:
            (self.models_dir / training_state_file(embedding)).unlink(missing_ok=True)


def train_fusion_network(
    network: MaskedFusionTransformer,
    train_batches: list[dict[str, Any]],
    val_batches: list[dict[str, Any]],
    models_dir: Path,
    trainer: Mapping[str, Any],
    seed: int,
    device: str,
    run: TrackedRun,
    *,
    resume: bool = True,
    keep_state: bool = False,
    data_fingerprint: Mapping[str, Any] | None = None,
) -> tuple[MaskedFusionTransformer, dict[str, Any]]:
    """Train one network with :class:`SubsetTrainer`, fit its prototypes, and save both.

    Writes ``model_<embedding>.pt`` and ``prototypes_<embedding>.pt`` under ``models_dir`` and logs
    the per-epoch loss and validation metric of every epoch, resumed ones included, to ``run``.
    Returns the trained network in eval mode and a summary of the training.

    The training state goes to ``training_state_<embedding>.pt`` under ``models_dir`` after every
    epoch. With ``resume``, a state file of a run with the same settings, ``seed`` and
    ``data_fingerprint`` (see :meth:`SubsetTrainer.fit`) is continued; without it, an existing
    state file is deleted first. The state file is deleted after training unless ``keep_state``,
    in which case the caller deletes it once its own files are written.

    In a process group, each process trains on its share of the batches, and rank 0 alone
    fits and writes the prototypes and logs to ``run``.
    """
    started = time.perf_counter()
    embedding = network.embedding
    main = distributed.is_main_process()
    models_dir = Path(models_dir)
    state_path = models_dir / training_state_file(embedding)
    if main:
        logger.info("Training the %s network (%d parameters).", embedding, sum(p.numel() for p in network.parameters()))
    if not resume and main and state_path.exists():
        logger.info("resume is false, so the training state %s is deleted and training starts at epoch 0.", state_path)
        state_path.unlink()
    distributed.barrier()

    # Subjects regrouped into new batches each epoch, never with exactly one image (BatchNorm).
    shuffled = _EpochShuffler(train_batches, seed, rank=distributed.rank(), world_size=distributed.world_size())
    history = SubsetTrainer(network, seed=seed, device=device, **dict(trainer)).fit(
        shuffled,
        val_batches,
        checkpoint_path=models_dir / f"model_{embedding}.pt",
        state_path=state_path,
        keep_state=keep_state,
        data_fingerprint=data_fingerprint,
    )
    network = network.to(device).eval()
    if main:
        prototypes = fit_subset_prototypes(network, train_batches, device=device)
        prototypes.save(models_dir / f"prototypes_{embedding}.pt")

    metric = history.val_metric_name
    run.log_metrics({f"best_validation_{metric}.{embedding}": float(history.best_metric), f"best_epoch.{embedding}": float(history.best_epoch)}, step=0)
    for epoch, (loss, value) in enumerate(zip(history.train_loss, history.val_metric, strict=True)):
        run.log_metrics({f"train_loss.{embedding}": float(loss), f"validation_{metric}.{embedding}": float(value)}, step=epoch)
    seconds = round(time.perf_counter() - started, 1)
    if main:
        logger.info(
            "%s network: best validation %s %.3f at epoch %d of %d (%.0f s).",
            embedding, metric, history.best_metric, history.best_epoch, history.epochs_run, seconds,
        )
    summary = {
        "best_validation_metric": float(history.best_metric),
        "metric": metric,
        "best_epoch": int(history.best_epoch),
        "epochs_run": int(history.epochs_run),
        "seconds": seconds,
    }
    return network, summary


class _NoRun(contextlib.AbstractContextManager):
    """Stand-in for :class:`TrackedRun` on processes other than rank 0, which log nothing to MLflow."""

    def __exit__(self, *exc_info: object) -> None:
        return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log nothing."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log nothing."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log nothing."""


def _check_process_group() -> None:
    """Raise when torchrun started several processes but none of them joined a process group."""
    if distributed.launched_by_torchrun() and not distributed.is_distributed():
        raise RuntimeError(
            "torchrun started several processes, but the process group is not initialised, so each process "
            "would train alone and overwrite the others' files. Add the multi-process config: --config_file "
            "\"['bundles/cad/train.json','bundles/cad/multi_gpu_train.json']\"."
        )


@contextlib.contextmanager
def _main_process_first() -> Iterator[None]:
    """Run the block on rank 0 first and on the other processes after it, e.g. to build a cohort once."""
    if not distributed.is_main_process():
        distributed.barrier()
    yield
    if distributed.is_main_process():
        distributed.barrier()


class _EpochShuffler:
    """Re-iterable view of preloaded batches that regroups the subjects into new batches every epoch.

    The image encoder uses BatchNorm, so no batch may hold exactly one image. Subjects with the
    image (column 0 of ``present``) are therefore dealt out separately from the others: with
    ``I`` images and ``n_batches`` batches, ``min(n_batches, I // 2)`` batches receive the images
    round-robin, so each of them gets at least 2. A batch of one subject is dropped.

    With ``world_size`` processes, every process makes the same draws from the same seed, so
    all agree on the batches of an epoch, and process ``rank`` takes every ``world_size``-th of
    them. ``n_batches`` is rounded up to a multiple of ``world_size``, and batches beyond the
    last full round are dropped, so every process gets the same number of batches.

    :meth:`state_dict` and :meth:`load_state_dict` save and restore the random state between
    epochs, so that a resumed training gets the batches of an uninterrupted one.
    """

    def __init__(self, batches: list[dict[str, Any]], seed: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size) = [0, {world_size}), got {rank}.")
        self.joined = _concatenate(batches)
        self.generator = np.random.default_rng(seed)
        self.batch_size = max(len(batch["label"]) for batch in batches)
        self.rank = rank
        self.world_size = world_size

    def __iter__(self):
        has_image = self.joined["present"][:, 0].numpy()
        count = len(has_image)
        n_batches = max(1, -(-count // self.batch_size))
        n_batches = -(-n_batches // self.world_size) * self.world_size
        with_image = self.generator.permutation(np.flatnonzero(has_image))
        without_image = self.generator.permutation(np.flatnonzero(~has_image))

        groups: list[list[int]] = [[] for _ in range(n_batches)]
        image_batches = min(n_batches, len(with_image) // 2) or 1
        for position, row in enumerate(with_image):
            groups[position % image_batches].append(int(row))
        # Fill the batches to about the same size with the subjects without the image.
        for row in without_image:
            smallest = min(range(n_batches), key=lambda index: len(groups[index]))
            groups[smallest].append(int(row))

        order = [int(index) for index in self.generator.permutation(n_batches) if len(groups[index]) >= 2]
        usable = len(order) - len(order) % self.world_size
        for position, index in enumerate(order[:usable]):
            # Every process draws every batch's order, so that the generators stay alike on all of them.
            rows = self.generator.permutation(groups[index])
            if position % self.world_size == self.rank:
                yield _take(self.joined, torch.as_tensor(rows))

    def state_dict(self) -> dict[str, str]:
        """Return the state of the random generator as a JSON string."""
        return {"bit_generator": json.dumps(self.generator.bit_generator.state)}

    def load_state_dict(self, state: Mapping[str, str]) -> None:
        """Restore a state returned by :meth:`state_dict`.

        Raises:
            ValueError: ``state`` is not such a state of this generator type.
        """
        try:
            bit_generator = json.loads(state["bit_generator"])
            self.generator.bit_generator.state = bit_generator
        except (KeyError, TypeError, ValueError) as error:
            expected = type(self.generator.bit_generator).__name__
            raise ValueError(
                f"batch source state must be {{'bit_generator': <JSON of a {expected} state>}}, got {state!r}: {error}"
            ) from error


def _concatenate(batches: list[dict[str, Any]]) -> dict[str, Any]:
    joined: dict[str, Any] = {}
    for key, value in batches[0].items():
        if isinstance(value, torch.Tensor):
            joined[key] = torch.cat([torch.as_tensor(batch[key]) for batch in batches])
        elif isinstance(value, Mapping):
            joined[key] = {name: torch.cat([torch.as_tensor(batch[key][name]) for batch in batches]) for name in value}
        else:
            joined[key] = [entry for batch in batches for entry in batch[key]]
    return joined


def _take(joined: Mapping[str, Any], rows: torch.Tensor) -> dict[str, Any]:
    selected: dict[str, Any] = {}
    for key, value in joined.items():
        if isinstance(value, torch.Tensor):
            selected[key] = value[rows]
        elif isinstance(value, Mapping):
            selected[key] = {name: tensor[rows] for name, tensor in value.items()}
        else:
            selected[key] = [value[int(row)] for row in rows]
    return selected


def _to(table: Mapping[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device) for name, tensor in table.items()}
