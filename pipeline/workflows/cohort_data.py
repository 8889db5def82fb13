"""Cohort access shared by the bundle workflows: manifest, encoders, image loading and masks.

Shape letters: ``n`` subjects of a split, ``B`` batch, ``C_cat``/``C_num`` categorical/continuous
columns, ``N`` columns in all, ``H, W, T`` image size (a cine's phase last).

The workflows serve cohorts with exactly one image modality and one tabular modality, as in
the CAD setting (a cardiac cine and a clinical table).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.data import DataLoader, Dataset, list_data_collate
from monai.transforms import Compose
from nibabel.filebasedimages import ImageFileError
from pydicom.errors import InvalidDicomError

from pipeline import distributed
from pipeline.data.cohort_masks import MASK_FOLDER, write_cohort_masks
from pipeline.data.cohorts import build_cohort
from pipeline.data.dataset import fit_tabular_encoders, presence_matrix, subject_items
from pipeline.data.manifest import Manifest, ManifestError, read_manifest
from pipeline.data.missingness import mask_filename, read_mask
from pipeline.data.tabular import TabularEncoder
from pipeline.data.transforms import (
    LoadModalityImaged,
    MarkAbsentModalityd,
    image_preprocessing,
)
from pipeline.workflows.run_files import check_config_path, write_text

logger = logging.getLogger(__name__)

ENCODERS_FILE = "tabular_encoders.json"

# Choices for a subject whose image or table value cannot be used: stop the job, or leave it out.
BAD_SUBJECT_POLICIES = ("error", "skip")

# Errors raised by reading a broken, truncated or missing image file (as opposed to a bug).
IMAGE_READ_ERRORS = (ValueError, OSError, EOFError, zlib.error, ImageFileError, InvalidDicomError)

EXCLUSION_COLUMNS = ["subject_id", "split", "field", "reason"]


class SubjectDataError(ValueError):
    """A subject's image or table value cannot be used; the message names the file, subject and field."""


@dataclass(frozen=True)
class Exclusion:
    """A subject left out of a run because one of its values could not be used.

    Attributes:
        subject_id: the manifest's subject id (never a DICOM attribute).
        split: the subject's split, or None when the split cell itself is invalid.
        field: the manifest column (or image modality) whose value failed.
        reason: what failed, with the file and, for a table value, the row.
    """

    subject_id: str
    split: str | None
    field: str
    reason: str


@dataclass(frozen=True)
class CohortLayout:
    """The modalities of a cohort and how its images are prepared.

    Two layouts are served: one image and one table (the CAD setting, a cine and a clinical
    table), or several images of one kind and no table (the five digit images of
    ``polymnist_real``).

    Attributes:
        images: names of the image modalities, in schema order.
        table: name of the tabular modality, or None.
        kind: image kind from the schema: ``"2d"``, ``"2d+t"`` or ``"3d"``.
        spatial_shape: size every image is resized to, e.g. ``(H, W, T)``.
    """

    images: tuple[str, ...]
    table: str | None
    kind: str
    spatial_shape: tuple[int, ...]

    @property
    def image(self) -> str:
        """The image modality of an image + table cohort."""
        return self.images[0]

    @property
    def modality_names(self) -> list[str]:
        """Modality order of the networks and presence masks: the images, then the table."""
        return list(self.images) + ([self.table] if self.table else [])


@dataclass
class SplitData:
    """Every subject of one split, collated: ids, labels, the table and the presence mask.

    Attributes:
        subject_ids: the ``n`` manifest ids in manifest order.
        labels: ``(n,)`` int64 class ids.
        table: ``{"categorical": (n, C_cat), "continuous": (n, C_num), "missing_values": (n, N)}``,
            empty for a cohort without a table.
        present: ``(n, M)`` bool in ``CohortLayout.modality_names`` order, as recorded in the cohort.
    """

    subject_ids: list[str]
    labels: torch.Tensor
    table: dict[str, torch.Tensor]
    present: torch.Tensor


def open_cohort(
    manifest_path: str | Path,
    schema_path: str | Path,
    build_if_missing: str | None = None,
) -> Manifest:
    """Read a cohort's manifest with its schema, building a repository cohort and its masks first when asked.

    Args:
        manifest_path: the manifest CSV.
        schema_path: the cohort schema YAML.
        build_if_missing: name of a repository cohort (e.g. ``"cad_demo"``) to build into the
            manifest's folder when the manifest does not exist; ``None`` makes a missing manifest
            an error.

    Raises:
        FileNotFoundError: the manifest is missing and no cohort may be built.
        ManifestError: the manifest has errors; the message lists each with its row and column.
    """
    manifest_path = check_config_path(Path(manifest_path).parent, "dataset_dir") / Path(manifest_path).name
    if not manifest_path.is_file():
        if not build_if_missing:
            raise FileNotFoundError(
                f"no cohort manifest at {manifest_path}. Pass --dataset_dir (and --manifest if it is not "
                "<dataset_dir>/manifest.csv) for your own cohort, or build a repository cohort with "
                "`python -m pipeline build-cohort cad_demo --output DIR`."
            )
        logger.info("No manifest at %s: building the %s cohort there (under a minute).", manifest_path, build_if_missing)
        built = build_cohort(build_if_missing, manifest_path.parent, seed=0)
        if built != manifest_path:
            raise FileNotFoundError(
                f"building {build_if_missing} wrote {built}, not {manifest_path}; set --manifest to {built}."
            )
        # The same masks `python -m pipeline build-cohort` writes, so both ways give one cohort.
        write_cohort_masks(read_manifest(manifest_path, schema_path, strict=True), manifest_path.parent)
    manifest = read_manifest(manifest_path, schema_path)
    check_some_images_exist(manifest)
    return manifest


def check_some_images_exist(manifest: Manifest) -> None:
    """Raise one error when none of an image column's paths exists (an empty or misplaced image folder).

    A few missing files are left to the loader, which names each subject; when every file is
    missing, the folder is the problem.

    Raises:
        FileNotFoundError: naming the column, how many paths it lists, and the folders they point to.
    """
    for image in manifest.schema.images:
        paths = [Path(path) for path in manifest.frame[image.column].dropna()]
        if not paths or any(path.exists() for path in paths):
            continue
        folders = sorted({str(path.parent) for path in paths})
        folder_list = ", ".join(folders[:3]) + (f" and {len(folders) - 3} more" if len(folders) > 3 else "")
        raise FileNotFoundError(
            f"{manifest.path}: none of the {len(paths)} image paths in column {image.column!r} exists (they point into "
            f"{folder_list}). Copy the images there, or fix the paths: relative paths are read from the manifest's folder."
        )


def check_bad_subject_policy(policy: str) -> str:
    """Return ``policy`` when it is one of :data:`BAD_SUBJECT_POLICIES`, else raise a ValueError saying what to pass."""
    if policy not in BAD_SUBJECT_POLICIES:
        raise ValueError(
            f"on_bad_subject must be one of {list(BAD_SUBJECT_POLICIES)}, got {policy!r}: 'error' stops at the first "
            "subject whose image or table value cannot be used, 'skip' leaves such subjects out and lists them."
        )
    return policy


def drop_bad_rows(manifest: Manifest, on_bad_subject: str = "error") -> tuple[Manifest, list[Exclusion]]:
    """Check the manifest's errors: raise them all, or leave out the subjects they concern.

    Warnings (a value outside its plausible range read as missing, for example) are logged and
    kept. An error of a whole file or column (no row) always raises, because no subject can be
    left out to fix it.

    Args:
        manifest: the cohort, as read with its problems.
        on_bad_subject: ``"error"`` raises every error at once; ``"skip"`` removes the rows with
            an error and returns them as exclusions.

    Returns:
        The manifest without the excluded rows, and the exclusions in row order.

    Raises:
        ManifestError: an error was found and ``on_bad_subject`` is ``"error"``, or an error has
            no row. The message lists every error with its file, row and column.
    """
    check_bad_subject_policy(on_bad_subject)
    for problem in manifest.problems:
        if problem.severity == "warning":
            logger.warning("%s", problem)
    errors = manifest.errors
    if not errors:
        return manifest, []
    if any(problem.row is None for problem in errors):
        raise ManifestError(errors)
    if on_bad_subject == "error":
        rows = sorted({problem.row for problem in errors})
        subjects = ", ".join(f"{manifest.frame[manifest.schema.subject_id_column].iloc[row - 1]} (row {row})" for row in rows)
        raise ManifestError(
            errors, f"Subjects concerned: {subjects}. Correct these cells, or pass --on_bad_subject skip to leave "
            "these subjects out (they are listed in the run's report)."
        )

    frame = manifest.frame
    id_column = manifest.schema.subject_id_column
    exclusions: dict[int, Exclusion] = {}
    for problem in sorted(errors, key=lambda problem: problem.row):
        position = problem.row - 1
        if position in exclusions:
            continue
        subject = frame[id_column].iloc[position]
        split = frame[manifest.split_column].iloc[position]
        exclusion = Exclusion(
            subject_id=str(subject) if isinstance(subject, str) and subject else f"row {problem.row}",
            split=split if isinstance(split, str) else None,
            field=problem.column or "",
            reason=f"{problem.location}: {problem.message}",
        )
        exclusions[position] = exclusion
        logger.warning("Leaving out subject %s: %s", exclusion.subject_id, exclusion.reason)

    remaining_rows = frame.drop(index=frame.index[sorted(exclusions)]).reset_index(drop=True)
    remaining = [problem for problem in manifest.problems if problem.severity != "error"]
    left_out = tuple(str(subject) for subject in frame[id_column].iloc[sorted(exclusions)])
    manifest = dataclasses.replace(manifest, frame=remaining_rows, problems=remaining, left_out=manifest.left_out + left_out)
    return manifest, list(exclusions.values())


def log_job_plan(job: str, manifest: Manifest, **details: Any) -> None:
    """Log, before any work, what a job will do: the cohort, its subjects per split, and ``details``.

    Args:
        job: what runs, for example ``"DyMo sweep"``.
        manifest: the cohort.
        details: further settings to list, such as ``methods``, ``gammas`` or ``output``.
    """
    splits = manifest.frame[manifest.split_column].value_counts()
    counts = ", ".join(f"{split} {int(splits.get(split, 0))}" for split in ("train", "val", "test"))
    listed = "".join(f", {name.replace('_', ' ')} {value}" for name, value in details.items())
    logger.info("%s: cohort %s (subjects: %s)%s.", job, manifest.path, counts, listed)


def cohort_layout(manifest: Manifest, spatial_shape: Sequence[int], with_table: bool = True) -> CohortLayout:
    """Check the cohort's modalities against the layout a workflow serves and describe them.

    Args:
        manifest: the cohort.
        spatial_shape: size images are resized to.
        with_table: True for one image and one tabular modality, False for two or more image
            modalities of one kind and no table.

    Raises:
        ValueError: the schema declares other modalities; the message names them.
    """
    schema = manifest.schema
    images = [image.modality for image in schema.images]
    tables = [table.modality for table in schema.tabular]
    kinds = sorted({image.kind for image in schema.images})
    if with_table and (len(images) != 1 or len(tables) != 1):
        raise ValueError(
            f"{manifest.path}: this bundle needs a schema with exactly one image modality and one tabular "
            f"modality; the schema given with --schema has images {images} and tables {tables}. Remove the extra "
            "modalities from the schema (the columns can stay in the manifest), or use the bundle for several image "
            "modalities (bundles/polymnist)."
        )
    if not with_table and (len(images) < 2 or tables or len(kinds) != 1):
        raise ValueError(
            f"{manifest.path}: this bundle needs a schema with two or more image modalities of one kind and no "
            f"table; the schema given with --schema has images {images} of kinds {kinds} and tables {tables}. For "
            "one image and one table use the CAD bundle (bundles/cad)."
        )
    return CohortLayout(
        tuple(images), tables[0] if with_table else None, kinds[0], tuple(int(size) for size in spatial_shape)
    )


def manifest_digest(manifest: Manifest) -> str:
    """SHA-256 of the manifest file, recorded with trained files and runs to identify the cohort."""
    return hashlib.sha256(Path(manifest.path).read_bytes()).hexdigest()


def save_encoders(encoders: Mapping[str, TabularEncoder], path: str | Path) -> Path:
    """Write fitted tabular encoders as JSON (plain data, safe to read)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {name: encoder.to_dict() for name, encoder in encoders.items()}
    write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", path)
    return path


def load_encoders(path: str | Path, manifest: Manifest) -> dict[str, TabularEncoder]:
    """Read encoders saved by :func:`save_encoders` and check they fit the cohort's schema.

    Raises:
        FileNotFoundError: the file is missing (the models were not trained).
        ValueError: the encoders were fitted for other tables or columns than the schema's.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tabular encoders at {path}; run the bundle's train.json first.")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(document, dict):
            raise ValueError(f"expected a JSON object of encoders by table, got {type(document).__name__}")
        encoders = {name: TabularEncoder.from_dict(data) for name, data in document.items()}
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(
            f"{path} is not a readable tabular encoders file ({error}). Restore it, or train again with the bundle's "
            "train.json, which writes it."
        ) from error
    for table in manifest.schema.tabular:
        expected = list(manifest.schema.tabular_columns(table.modality))
        encoder = encoders.get(table.modality)
        if encoder is None:
            raise ValueError(
                f"{path} has no encoder for table {table.modality!r} of {manifest.path} (it has {sorted(encoders)}). "
                "Train the bundle on this cohort (train.json with the same --dataset_dir and --schema)."
            )
        found = list(encoder.categorical_columns) + list(encoder.continuous_columns)
        if found != expected:
            raise ValueError(
                f"{path} was fitted for table {table.modality!r} with columns {found}, but the schema of "
                f"{manifest.path} gives {expected}. The trained files belong to another cohort: train the "
                "bundle on this cohort (train.json with the same --dataset_dir and --schema)."
            )
    return encoders


def fit_encoders(manifest: Manifest) -> dict[str, TabularEncoder]:
    """Fit the tabular encoders on the training split."""
    return fit_tabular_encoders(manifest, split="train")


class SplitLoader:
    """Load the subjects of one split as MONAI batches (images read, absent ones marked).

    Args:
        manifest: the cohort.
        encoders: fitted tabular encoders.
        layout: the cohort's modalities.
        cache_dir: folder for NIfTI files converted from DICOM series.
        batch_size: subjects per batch.
        on_bad_subject: ``"error"`` stops at the first image that cannot be read with a
            :class:`SubjectDataError` naming the file, subject and manifest column; ``"skip"``
            leaves the subject out with a warning and records it in :attr:`exclusions`.

    Attributes:
        exclusions: subjects left out while reading images, in the order they were met.
    """

    def __init__(
        self,
        manifest: Manifest,
        encoders: Mapping[str, TabularEncoder],
        layout: CohortLayout,
        cache_dir: str | Path,
        batch_size: int = 32,
        on_bad_subject: str = "error",
    ) -> None:
        self.manifest = manifest
        self.encoders = dict(encoders)
        self.layout = layout
        self.cache_dir = Path(cache_dir)
        self.batch_size = batch_size
        self.on_bad_subject = check_bad_subject_policy(on_bad_subject)
        self.exclusions: list[Exclusion] = []
        self._items: dict[tuple[str, int | None], list[dict[str, Any]]] = {}
        # One chain per image modality, so a failure names the modality's manifest column.
        self.image_steps = {
            image.modality: (
                image.column,
                Compose([
                    LoadModalityImaged(keys=[image.modality], cache_dir=self.cache_dir, series_rule=image.series_rule, kind=layout.kind),
                    MarkAbsentModalityd(keys=[image.modality], spatial_shape=layout.spatial_shape),
                    image_preprocessing(keys=[image.modality], spatial_shape=layout.spatial_shape, kind=layout.kind),
                ]),
            )
            for image in manifest.schema.images
        }

    def items(self, split: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Return the uncollated items of ``split`` in manifest order, or ``limit`` of them spread evenly over it.

        Evenly spaced subjects rather than the first ones, because repository cohorts are sorted
        (polymnist_real by digit, cad_demo by centre). The items of each ``(split, limit)`` are
        built once, since building them encodes the split's table.
        """
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a whole number of subjects of at least 1 or None, got {limit!r}.")
        key = (split, limit)
        if key not in self._items:
            items = subject_items(self.manifest, self.encoders, split=split)
            if not items:
                raise ValueError(f"{self.manifest.path}: no labelled subject is in split {split!r}.")
            if limit is not None and limit < len(items):
                rows = np.unique(np.linspace(0, len(items) - 1, limit).round().astype(int))
                items = [items[row] for row in rows]
            self._items[key] = items
        return list(self._items[key])

    def loader(
        self, split: str, shuffle: bool = False, drop_last: bool = False, seed: int = 0, limit: int | None = None
    ) -> _Batches:
        """Return the re-iterable batches of ``split``; each batch has ``present`` as a ``(B, M)`` mask.

        Subjects left out under ``on_bad_subject="skip"`` make their batch smaller; a batch left
        empty is not yielded.
        """
        items = self.items(split, limit)
        generator = torch.Generator().manual_seed(seed)
        dataset = Dataset(items, transform=self._load_subject)
        return _Batches(
            DataLoader(
                dataset,
                batch_size=self.batch_size,
                shuffle=shuffle,
                drop_last=drop_last,
                num_workers=0,
                generator=generator,
                collate_fn=self._collate,
            )
        )

    def blocks(self, split: str, limit: int | None = None) -> Iterator[Block]:
        """Yield this process's blocks of ``split``: the batches of :meth:`loader`, dealt out by position.

        Block ``k`` holds the same subjects whatever the number of processes (manifest order,
        ``batch_size`` per block, after ``limit``), and process ``r`` of ``N`` reads blocks
        ``r, r + N, ...``. Every computation that runs block by block therefore gives the same
        bits in one process as in several, since some kernels round differently with the batch size.
        """
        items = self.items(split, limit)
        starts = range(0, len(items), self.batch_size)
        for index in distributed.shard(range(len(starts))):
            block = items[starts[index] : starts[index] + self.batch_size]
            left_out = len(self.exclusions)
            loaded = [self._load_subject(item) for item in block]
            yield Block(index, self._collate(loaded), self.exclusions[left_out:])

    def preload(self, split: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Read every batch of ``split`` (or ``limit`` subjects of it) once and keep them in memory."""
        batches = list(self.loader(split, limit=limit))
        logger.info("Loaded split %r: %d subjects in %d batches.", split, sum(len(b["label"]) for b in batches), len(batches))
        return batches

    def _load_subject(self, item: Mapping[str, Any]) -> dict[str, Any] | None:
        """Read and prepare one subject's images; on a broken file raise or record the exclusion."""
        item = dict(item)
        for modality, (column, steps) in self.image_steps.items():
            path = item.get(modality)
            try:
                item = steps(item)
            except Exception as error:
                cause = next((link for link in _chain(error) if isinstance(link, IMAGE_READ_ERRORS)), None)
                if cause is None:
                    raise
                detail = str(cause) if str(path) in str(cause) else f"{path}: {cause}"
                reason = f"subject {item['subject_id']}, column {column!r} of {self.manifest.path}: {detail}"
                if self.on_bad_subject == "error":
                    raise SubjectDataError(
                        f"{reason}. Replace or repair the file, clear the cell to mark the image absent, or pass "
                        "--on_bad_subject skip to leave such subjects out (they are listed in the run's report)."
                    ) from None
                exclusion = Exclusion(str(item["subject_id"]), item.get("split"), column, reason)
                self.exclusions.append(exclusion)
                logger.warning("Leaving out subject %s: %s", exclusion.subject_id, reason)
                return None
        return item

    def _collate(self, items: list[dict[str, Any] | None]) -> dict[str, Any] | None:
        items = [item for item in items if item is not None]
        if not items:
            return None
        batch = list_data_collate(items)
        batch["present"] = presence_matrix(batch, self.layout.modality_names)
        return batch


@dataclass
class Block:
    """One block of a split, see :meth:`SplitLoader.blocks`.

    Attributes:
        index: position of the block in the split, from 0.
        batch: the collated subjects, or None when every subject of the block was left out.
        exclusions: the subjects of the block left out under ``on_bad_subject="skip"``.
    """

    index: int
    batch: dict[str, Any] | None
    exclusions: list[Exclusion]


class _Batches:
    """Re-iterable batches of a DataLoader, without the empty ones (every subject of a batch left out).

    MONAI's Dataset wraps an error of the subject loader in ``RuntimeError: applying transform``;
    a :class:`SubjectDataError` is raised as it is instead, since its message is complete.
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            for batch in self.loader:
                if batch is not None:
                    yield batch
        except RuntimeError as error:
            if isinstance(error.__cause__, SubjectDataError):
                raise error.__cause__ from None
            raise


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the errors it wraps, outermost first (MONAI wraps a transform's error in a RuntimeError)."""
    chain = [error]
    while len(chain) < 50 and (chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    return chain


def exclusion_table(exclusions: Sequence[Exclusion]) -> pd.DataFrame:
    """Return the exclusions as a table with :data:`EXCLUSION_COLUMNS`, one row per subject."""
    return pd.DataFrame([dataclasses.asdict(exclusion) for exclusion in exclusions], columns=EXCLUSION_COLUMNS)


def split_data(batches: Sequence[Mapping[str, Any]], layout: CohortLayout) -> SplitData:
    """Join the non-image parts of a split's batches into one :class:`SplitData`."""
    table_keys = ("categorical", "continuous", "missing_values") if layout.table else ()
    return SplitData(
        subject_ids=[str(subject) for batch in batches for subject in batch["subject_id"]],
        labels=torch.cat([torch.as_tensor(batch["label"]).long() for batch in batches]),
        table={key: torch.cat([batch[layout.table][key] for batch in batches]) for key in table_keys},
        present=torch.cat([batch["present"] for batch in batches]),
    )


def read_table_mask(
    cohort_dir: str | Path,
    manifest: Manifest,
    columns: Sequence[str],
    subject_ids: Sequence[str],
    gamma: float,
    mode: str = "value",
    seed: int = 0,
) -> np.ndarray:
    """Read the saved tabular missingness mask of rate ``gamma`` for ``subject_ids``.

    ``gamma = 0`` needs no file and masks nothing.

    Returns:
        ``(n, N)`` bool, ``True`` where the simulation hid the value, rows in ``subject_ids`` order.

    Raises:
        FileNotFoundError: the mask file is missing; the message gives the command that writes it.
    """
    if gamma == 0:
        return np.zeros((len(subject_ids), len(columns)), dtype=bool)
    path = check_table_masks(cohort_dir, manifest, [gamma], mode, seed)[0]
    frame = read_mask(path, manifest.subject_ids + list(manifest.left_out), list(columns))
    frame = frame.set_index("subject_id").loc[list(subject_ids), list(columns)]
    return frame.to_numpy().astype(bool)


def check_table_masks(
    cohort_dir: str | Path,
    manifest: Manifest,
    gammas: Sequence[float],
    mode: str = "value",
    seed: int = 0,
    schema_path: str | Path = "SCHEMA",
) -> list[Path]:
    """Return the mask files of the ``gammas`` above 0, or raise one error listing every missing file.

    Raises:
        FileNotFoundError: a mask file is missing; the message gives the command that writes it.
    """
    paths = [Path(cohort_dir) / MASK_FOLDER / mask_filename("tabular", gamma, seed, mode) for gamma in gammas if gamma > 0]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        requested = " ".join(f"{gamma:.2f}" for gamma in gammas if gamma > 0)
        raise FileNotFoundError(
            f"no missingness mask at {', '.join(missing)}. Write the masks once with `python -m pipeline write-masks "
            f"--manifest {manifest.path} --schema {schema_path} --gammas {requested} --seeds {seed}`, or "
            "pick gammas that have masks with --gammas."
        )
    return paths
