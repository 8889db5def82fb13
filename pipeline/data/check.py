"""Check a whole cohort at once: schema, manifest, image files and a light image header check.

:func:`check_cohort` never stops at the first finding. It returns a :class:`CohortReport` with
every problem and a summary, which ``python -m pipeline check-cohort`` prints.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.dicom import (
    DicomSeriesError,
    index_dicom_folder,
    read_series,
    select_series,
)
from pipeline.data.manifest import (
    SPLITS,
    Manifest,
    ManifestError,
    Problem,
    read_manifest,
)
from pipeline.data.nifti import NiftiFileError, arrange_for_kind, check_nifti
from pipeline.data.schema import (
    LABEL_COLUMN,
    CohortSchema,
    ImageModality,
    SchemaError,
    load_schema,
)

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Split name used in the summary for subjects without a valid split.
NO_SPLIT = "(none)"

ExtraCheck = Callable[[Manifest], list[Problem]]


@dataclass
class CohortSummary:
    """Counts describing a cohort, each table indexed by split or modality.

    ``label_balance`` has one row per split and one column per class name. ``image_availability``
    has one row per image modality and the columns ``subjects``, ``listed`` (a path was given)
    and ``readable`` (the path passed the checks). ``missing_rate`` has one row per clinical
    column and the columns ``all`` and one per split, as fractions in ``[0, 1]``.
    """

    subjects_per_split: pd.Series
    label_balance: pd.DataFrame
    image_availability: pd.DataFrame
    missing_rate: pd.DataFrame
    extra_columns: tuple[str, ...] = ()
    has_split_column: bool = True


@dataclass
class CohortReport:
    """Every problem found in a cohort, and its summary when the manifest could be read."""

    manifest_path: Path
    schema_path: Path
    problems: list[Problem] = field(default_factory=list)
    summary: CohortSummary | None = None

    @property
    def usable(self) -> bool:
        """Whether no problem has severity ``error``."""
        return not any(problem.severity == "error" for problem in self.problems)


def _nifti_header_problem(path: Path, image: ImageModality) -> tuple[str, str] | None:
    """Check a NIfTI file's name, bytes and header, and that its shape fits the modality's kind."""
    try:
        info = check_nifti(path)
    except NiftiFileError as error:
        return str(error), _nifti_fix(str(error))
    shape = info["shape"]
    missing_bytes = _missing_data_bytes(path, info["header"], shape)
    if missing_bytes:
        return (
            f"{path}: the file ends {missing_bytes} bytes before the end of its image data (truncated or damaged)",
            "copy the file again from the original export",
        )
    try:
        # A zero-stride view checks the layout rule without reading or allocating the image.
        arrange_for_kind(np.broadcast_to(np.zeros((), dtype=np.float32), shape), image.kind, path)
    except ValueError as error:
        return str(error), f"export the image in the layout of kind {image.kind!r} (see docs/cohort-format.md)"
    return None


def _missing_data_bytes(path: Path, header: Any, shape: tuple[int, ...]) -> int:
    """Return how many bytes of image data the file lacks, 0 when complete; a .nii.gz is decompressed to count."""
    expected = int(header["vox_offset"]) + int(np.prod(shape)) * header.get_data_dtype().itemsize
    if path.name.endswith(".gz"):
        size = 0
        try:
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 20):
                    size += len(chunk)
        except (EOFError, OSError, zlib.error):
            return max(expected - size, 1)
    else:
        size = path.stat().st_size
    return max(expected - size, 0)


def _nifti_fix(message: str) -> str:
    if "twin" in message or "both" in message:
        return "keep one of the two files and delete the other"
    return "re-export the image as NIfTI and check its header (dim, qform and sform)"


def _dicom_folder_problem(path: Path, image: ImageModality) -> tuple[str, str] | None:
    """Select and read the folder's series as the loader will; return ``(message, fix)`` on failure.

    Reading the pixel data here means that gaps between slices, missing geometry, undecodable
    transfer syntaxes and layouts that do not fit the modality's kind fail the check, not training.
    """
    try:
        series = select_series(index_dicom_folder(path), image.series_rule)
        _, _, metadata = read_series(series, assume_missing_geometry=image.assume_missing_geometry)
    except DicomSeriesError as error:
        return str(error), _dicom_fix(str(error))

    expected_layout = {"2d+t": "HWT", "3d": "HWD"}.get(image.kind)
    if expected_layout is not None and metadata["layout"] != expected_layout:
        return (
            f"DICOM series in {path} has layout {metadata['layout']} but modality {image.modality!r} is of kind "
            f"{image.kind!r}, which needs {expected_layout}",
            "point the column at the right series, or change the modality's kind in the schema",
        )
    return None


def _dicom_fix(message: str) -> str:
    if "series" in message and ("contains" in message or "matches" in message):
        return "keep one series per subject folder, or set series_rule for the image modality in the schema"
    if "PixelSpacing" in message or "ImageOrientationPatient" in message or "ImagePositionPatient" in message:
        return "re-export the series with its geometry tags, or set assume_missing_geometry: true in the schema"
    return "re-export the subject's DICOM series, or leave the cell empty if the image is absent"


def _image_problem(path: Path, image: ImageModality, row: int, manifest_path: Path) -> Problem | None:
    """Check that one image path exists and looks like a NIfTI file or a DICOM series folder."""
    def problem(message: str, fix: str) -> Problem:
        return Problem("error", manifest_path, message, fix, row, image.column, str(path))

    if not path.exists():
        return problem(
            f"image of modality {image.modality!r} not found: {path}",
            "correct the path (relative to the manifest's folder) or leave the cell empty",
        )

    if path.name.endswith(NIFTI_SUFFIXES):
        if not path.is_file():
            return problem(f"NIfTI path {path} is not a file", "point the cell at the .nii or .nii.gz file")
        header_problem = _nifti_header_problem(path, image)
        return None if header_problem is None else problem(*header_problem)

    if path.is_dir():
        folder_problem = _dicom_folder_problem(path, image)
        return None if folder_problem is None else problem(*folder_problem)

    return problem(
        f"{path} is neither a NIfTI file ({', '.join(NIFTI_SUFFIXES)}) nor a DICOM series folder",
        "convert the image to NIfTI or point the cell at the folder of the DICOM series",
    )


def check_images(manifest: Manifest) -> list[Problem]:
    """Check every image path: NIfTI headers and layout, and DICOM series read as the loader reads them."""
    problems = []
    for image in manifest.schema.images:
        for row, path in enumerate(manifest.frame[image.column], start=1):
            if path is None:
                continue
            problem = _image_problem(path, image, row, manifest.path)
            if problem is not None:
                problems.append(problem)
    return problems


def subjects_without_modality(manifest: Manifest) -> list[Problem]:
    """Warn about subjects with no image and no clinical value: no method can classify them."""
    schema = manifest.schema
    frame = manifest.frame
    has_any = pd.Series(False, index=frame.index)
    for image in schema.images:
        has_any |= frame[image.column].notna()
    for table in schema.tabular:
        has_any |= manifest.tabular(table.modality).notna().any(axis=1)

    return [
        Problem(
            "warning",
            manifest.path,
            f"subject {frame.at[index, schema.subject_id_column]!r} has no image and no clinical value, "
            "so training learns nothing from it and inference classifies it from imputed values alone",
            "add its data or remove the row",
            row=int(position) + 1,
        )
        for position, index in enumerate(frame.index)
        if not has_any.at[index]
    ]


def _split_labels(manifest: Manifest) -> pd.Series:
    return manifest.frame[manifest.split_column].fillna(NO_SPLIT)


def summarize(manifest: Manifest, image_problems: Sequence[Problem] = ()) -> CohortSummary:
    """Count subjects, classes, images and missing clinical values per split."""
    frame = manifest.frame
    schema: CohortSchema = manifest.schema
    splits = _split_labels(manifest)
    split_order = [split for split in (*SPLITS, NO_SPLIT) if (splits == split).any()]

    subjects_per_split = splits.value_counts().reindex(split_order, fill_value=0).rename("subjects")

    class_names = frame[LABEL_COLUMN].map(lambda class_id: schema.label.classes[class_id], na_action="ignore")
    label_balance = (
        pd.crosstab(splits, class_names.fillna("(no label)"))
        .reindex(index=split_order, fill_value=0)
        .reindex(columns=[*schema.label.classes, *(["(no label)"] if class_names.isna().any() else [])], fill_value=0)
    )
    label_balance.index.name = "split"
    label_balance.columns.name = None

    unreadable = {(problem.row, problem.column) for problem in image_problems}
    availability_rows = []
    for image in schema.images:
        listed = [row for row, path in enumerate(frame[image.column], start=1) if path is not None]
        readable = [row for row in listed if (row, image.column) not in unreadable]
        availability_rows.append({"modality": image.modality, "subjects": len(frame), "listed": len(listed), "readable": len(readable)})
    image_availability = pd.DataFrame(availability_rows, columns=["modality", "subjects", "listed", "readable"]).set_index("modality")

    clinical = list(schema.clinical_columns)
    missing = frame[clinical].isna()
    missing_rate = pd.DataFrame({"all": missing.mean()}, index=clinical)
    for split in split_order:
        missing_rate[split] = missing[(splits == split).to_numpy()].mean()
    missing_rate.index.name = "column"

    return CohortSummary(
        subjects_per_split, label_balance, image_availability, missing_rate, manifest.extra_columns, manifest.has_split_column
    )


def check_cohort(
    manifest_path: str | Path,
    schema_path: str | Path,
    *,
    extra_checks: Sequence[ExtraCheck] = (),
) -> CohortReport:
    """Check a cohort and report every problem at once.

    Runs, in order: schema validation, manifest parsing, image checks (NIfTI headers and layout;
    each DICOM folder's series selected and read as the loader reads it, pixel data included),
    subjects without any modality, then each of
    ``extra_checks`` on the parsed manifest. A schema or manifest that cannot be read at all ends
    the checks early with its problems and no summary.

    Args:
        manifest_path: the cohort's manifest CSV.
        schema_path: the cohort schema YAML.
        extra_checks: functions run on the parsed manifest, each returning its problems, for
            deeper checks such as reading DICOM headers.
    """
    manifest_path, schema_path = Path(manifest_path), Path(schema_path)
    report = CohortReport(manifest_path, schema_path)

    try:
        schema = load_schema(schema_path)
    except SchemaError as error:
        report.problems.extend(
            Problem("error", schema_path, f"{key_path or '<top level>'}: {message}", fix="correct the schema file")
            for key_path, message in error.errors
        )
        return report
    except FileNotFoundError as error:
        report.problems.append(Problem("error", schema_path, str(error)))
        return report

    try:
        manifest = read_manifest(manifest_path, schema)
    except ManifestError as error:
        report.problems.extend(error.problems)
        return report
    except (FileNotFoundError, ValueError) as error:
        report.problems.append(Problem("error", manifest_path, str(error)))
        return report

    image_problems = check_images(manifest)
    report.problems.extend(manifest.problems)
    report.problems.extend(image_problems)
    report.problems.extend(subjects_without_modality(manifest))
    for extra_check in extra_checks:
        report.problems.extend(extra_check(manifest))
    # Whole-file findings first, then by data row; the sort is stable within a row.
    report.problems.sort(key=lambda problem: 0 if problem.row is None else problem.row)

    report.summary = summarize(manifest, image_problems)
    logger.info(
        "Checked cohort %s: %d subjects, %d problem(s), usable: %s",
        schema.name, len(manifest.frame), len(report.problems), report.usable,
    )
    return report
