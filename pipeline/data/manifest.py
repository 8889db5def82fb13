"""Manifest CSV: one row per subject, parsed by a :class:`~pipeline.data.schema.CohortSchema`.

Every cell is read as text first and parsed by the schema afterwards, so a badly formatted value
is reported with its row and column instead of turning a whole column into strings or NaN.

Row numbers in :class:`Problem` count data rows from 1, without the header. A spreadsheet shows
the same row one line lower, because the header takes row 1; messages give both numbers.
"""

from __future__ import annotations

import csv
import difflib
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from pipeline.data.schema import (
    LABEL_COLUMN,
    CohortSchema,
    NumberFormatError,
    load_schema,
    parse_number,
)
from pipeline.data.splits import stratified_split

logger = logging.getLogger(__name__)

Severity = Literal["error", "warning"]
SPLITS = ("train", "val", "test")

_UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Problem:
    """One finding about a cohort; any ``error`` makes the cohort unusable.

    ``row`` is the 1-based data row (the header is not counted), or None for a whole-file or
    whole-column finding. ``value`` is the raw cell text.
    """

    severity: Severity
    file: Path
    message: str
    fix: str = ""
    row: int | None = None
    column: str | None = None
    value: str | None = None

    @property
    def location(self) -> str:
        """``file``, then the data row and spreadsheet row, then the column, as far as known."""
        parts = [str(self.file)]
        if self.row is not None:
            parts.append(f"row {self.row} (spreadsheet row {self.row + 1})")
        if self.column is not None:
            parts.append(f"column {self.column!r}")
        return ", ".join(parts)

    def __str__(self) -> str:
        text = f"{self.severity}: {self.location}: {self.message}"
        return f"{text}. Fix: {self.fix}" if self.fix else text


class ManifestError(ValueError):
    """Manifest that cannot be used; ``problems`` lists every finding."""

    def __init__(self, problems: Sequence[Problem], advice: str = "") -> None:
        self.problems = list(problems)
        text = f"{len(self.problems)} problem(s) in the manifest:\n" + "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{text}\n{advice}" if advice else text)


@dataclass
class Manifest:
    """Parsed manifest.

    ``frame`` has one row per subject, in file order, with these columns:

    - the subject id column (str), named as in the schema;
    - the split column (``train``, ``val``, ``test`` or None), named as in the schema or ``split``
      when the schema sets ``split_column: null``. Without a split column in the file, a seeded
      split stratified by class is drawn (``has_split_column`` is then False). None means
      the cell is invalid;
    - ``label``: class id, dtype ``Int64``, ``pd.NA`` where no class id could be derived (always
      reported as an error);
    - one column per image modality, under its manifest column name: an absolute ``Path`` or None;
    - one column per clinical column: continuous as float64 with NaN for missing, categorical as
      pandas ``string`` with ``pd.NA`` for missing.

    Columns the schema does not name are listed in ``extra_columns`` and left out of ``frame``.
    ``left_out`` holds the ids of subjects a job removed from ``frame`` because their data could
    not be used; files written for the whole cohort (the missingness masks) still list them.
    """

    path: Path
    schema: CohortSchema
    frame: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    extra_columns: tuple[str, ...] = ()
    has_split_column: bool = True
    left_out: tuple[str, ...] = ()

    @property
    def split_column(self) -> str:
        return self.schema.split_column or "split"

    @property
    def subject_ids(self) -> list[str]:
        return self.frame[self.schema.subject_id_column].tolist()

    @property
    def errors(self) -> list[Problem]:
        return [problem for problem in self.problems if problem.severity == "error"]

    def image_paths(self, modality: str) -> pd.Series:
        """Absolute image paths of one image modality (None where a subject has no image)."""
        for image in self.schema.images:
            if image.modality == modality:
                return self.frame[image.column]
        raise ValueError(f"schema {self.schema.name!r} has no image modality {modality!r}")

    def tabular(self, modality: str) -> pd.DataFrame:
        """Parsed clinical columns of one tabular modality, categorical first."""
        return self.frame[list(self.schema.tabular_columns(modality))]


def decode_manifest(path: Path) -> str:
    """Read ``path`` as UTF-8 text, dropping a leading byte-order mark.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when the file is empty or not UTF-8; the message gives the byte offset and
            line of the first invalid byte.
    """
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}; pass the manifest.csv of the cohort folder")

    data = path.read_bytes()
    offset = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    try:
        text = data[offset:].decode("utf-8")
    except UnicodeDecodeError as error:
        position = offset + error.start
        line = data[:position].count(b"\n") + 1
        raise ValueError(
            f"{path} is not UTF-8: byte {data[position:position + 1]!r} at byte offset {position} "
            f"(line {line}) cannot be decoded. Re-save the file as UTF-8 (in Excel: 'CSV UTF-8'; "
            f"or iconv -f cp1252 -t utf-8 if it came from Windows)"
        ) from error

    if not text.strip():
        raise ValueError(f"{path} is empty; the manifest needs a header and one row per subject")
    return text


def _read_text_table(path: Path, text: str) -> pd.DataFrame:
    header = next(csv.reader(io.StringIO(text)))
    names = [name.strip() for name in header]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{path}: the header repeats column(s) {duplicates}; give each column one name")
    if len(names) == 1 and ";" in header[0]:
        raise ValueError(
            f"{path}: the header is one column {header[0]!r}; the manifest must be comma-separated, "
            "not semicolon-separated. Re-export it with ',' as separator"
        )

    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=False)
    except pd.errors.ParserError as error:
        raise ValueError(f"{path}: invalid CSV ({error}); every row needs as many fields as the header") from error
    frame.columns = names

    if frame.empty:
        raise ValueError(f"{path} has a header but no data rows; add one row per subject")
    return frame


def _missing_column_message(path: Path, column: str, role: str, present: Sequence[str]) -> Problem:
    by_case = {name.lower(): name for name in present}
    match = by_case.get(column.lower()) or next(iter(difflib.get_close_matches(column, present, n=1, cutoff=0.6)), None)
    hint = f" Did you mean {match!r}?" if match else ""
    return Problem(
        "error",
        path,
        f"required {role} column {column!r} is missing; the manifest has columns {list(present)}.{hint}",
        fix="rename the column in the manifest or set its name in the schema",
        column=column,
    )


class _ManifestParser:
    """Parse each column of a text table, recording problems instead of raising."""

    def __init__(self, path: Path, schema: CohortSchema, table: pd.DataFrame) -> None:
        self.path = path
        self.schema = schema
        self.table = table
        self.problems: list[Problem] = []
        self.base_folder = path.resolve().parent

    def report(self, severity: Severity, row: int, column: str, value: str, message: str, fix: str) -> None:
        self.problems.append(Problem(severity, self.path, message, fix, row + 1, column, value))

    def subject_ids(self) -> pd.Series:
        column = self.schema.subject_id_column
        first_row: dict[str, int] = {}
        ids = []
        for row, raw in enumerate(self.table[column]):
            subject_id = raw.strip()
            ids.append(subject_id)
            if not subject_id:
                self.report("error", row, column, raw, "subject id is empty", "give every subject a unique id")
            elif subject_id in first_row:
                self.report(
                    "error", row, column, raw,
                    f"subject id {subject_id!r} repeats the id of row {first_row[subject_id] + 1}",
                    "give every subject one row with a unique id",
                )
            else:
                first_row[subject_id] = row
        return pd.Series(ids, dtype=object)

    def splits(self) -> pd.Series:
        column = self.schema.split_column
        values: list[str | None] = []
        for row, raw in enumerate(self.table[column]):
            split = raw.strip().lower()
            if split in SPLITS:
                values.append(split)
                continue
            values.append(None)
            self.report(
                "error", row, column, raw, f"split {raw!r} is not one of {list(SPLITS)}",
                "write train, val or test, or drop the column to draw the split with a fixed seed",
            )
        return pd.Series(values, dtype=object)

    def labels(self) -> pd.Series:
        rule = self.schema.label
        values: list[int | None] = []
        for row, raw in enumerate(self.table[rule.column]):
            if self.schema.is_missing_token(raw):
                values.append(None)
                self.report("error", row, rule.column, raw, "label value is missing", "fill in the label or drop the subject")
                continue
            try:
                values.append(rule.class_id(raw))
            except ValueError as error:
                values.append(None)
                self.report(
                    "error", row, rule.column, raw, f"no class id from label rule {rule.rule!r}: {error}",
                    "correct the value or the schema's label rule",
                )
        return pd.Series(values, dtype="Int64")

    def image_paths(self, column: str) -> pd.Series:
        paths: list[Path | None] = []
        for raw in self.table[column]:
            if self.schema.is_missing_token(raw):
                paths.append(None)
            else:
                paths.append(Path(os.path.normpath(self.base_folder / raw.strip())))
        return pd.Series(paths, dtype=object)

    def categorical(self, column: str, levels: tuple[str, ...] | None) -> pd.Series:
        """Read a categorical column; a value matches a schema level whatever its case and surrounding spaces."""
        canonical = {level.strip().casefold(): level for level in levels or ()}
        values: list[str | None] = []
        for row, raw in enumerate(self.table[column]):
            value = raw.strip()
            if self.schema.is_missing_token(raw):
                values.append(None)
            elif levels is not None and value.casefold() in canonical:
                values.append(canonical[value.casefold()])
            elif levels is not None:
                values.append(None)
                self.report(
                    "warning", row, column, raw, f"{raw!r} is not one of the levels {list(levels)}; read as missing",
                    "correct the value, add it to the schema's levels or list it in missing_tokens",
                )
            else:
                values.append(value)
        return pd.Series(values, dtype="string")

    def continuous(self, column: str, low: float | None, high: float | None, zero_is_missing: bool) -> pd.Series:
        values = np.full(len(self.table), np.nan)
        for row, raw in enumerate(self.table[column]):
            if self.schema.is_missing_token(raw):
                continue
            try:
                value = parse_number(raw)
            except NumberFormatError as error:
                self.report("error", row, column, raw, error.reason, error.fix)
                continue

            if zero_is_missing and value == 0:
                continue
            if (low is not None and value < low) or (high is not None and value > high):
                self.report(
                    "warning", row, column, raw,
                    f"{value:g} is outside the plausible range [{low}, {high}]; read as missing",
                    "correct the value or widen min/max in the schema",
                )
                continue
            values[row] = value
        return pd.Series(values, dtype="float64")


def read_manifest(
    path: str | Path, schema: CohortSchema | str | Path, *, strict: bool = False, split_seed: int = 0
) -> Manifest:
    """Read a manifest CSV and parse every column the schema names.

    Cell-level findings (bad numbers, duplicate ids, underivable labels, out-of-range values) are
    collected in ``Manifest.problems`` so one run reports all of them. Image paths are resolved
    against the manifest's folder but not checked for existence: :func:`pipeline.data.check.check_cohort`
    does that.

    Args:
        path: manifest CSV, UTF-8 with or without a byte-order mark.
        schema: a loaded schema or the path of its YAML file.
        strict: raise when any error-severity problem was found, instead of returning it.
        split_seed: seed of the stratified 60/20/20 split drawn when the manifest has no split
            column; the same seed always gives the same split.

    Raises:
        FileNotFoundError: when the manifest or schema file does not exist.
        ValueError: for an empty, header-only, non-UTF-8 or malformed file.
        ManifestError: a ValueError listing every problem, when required columns are missing, or
            with ``strict=True`` when any error was found.
    """
    path = Path(path)
    if not isinstance(schema, CohortSchema):
        schema = load_schema(schema)

    table = _read_text_table(path, decode_manifest(path))
    present = list(table.columns)
    required = {schema.subject_id_column: "subject id", schema.label.column: "label"}
    required.update({column: "clinical" for column in schema.clinical_columns})
    missing = [_missing_column_message(path, column, role, present) for column, role in required.items() if column not in present]
    if missing:
        raise ManifestError(missing)

    parser = _ManifestParser(path, schema, table)
    columns: dict[str, pd.Series] = {schema.subject_id_column: parser.subject_ids()}
    has_split_column = schema.split_column is not None and schema.split_column in present
    split_name = schema.split_column or "split"
    columns[split_name] = parser.splits() if has_split_column else pd.Series([None] * len(table), dtype=object)
    columns[LABEL_COLUMN] = parser.labels()
    if not has_split_column:
        # Stratified by class; subjects whose label could not be read form a stratum of their own.
        strata = columns[LABEL_COLUMN].astype("Int64").fillna(-1).astype(int)
        columns[split_name] = stratified_split(strata, split_seed).astype(object)
        logger.info("Manifest %s has no split column: drew a stratified 60/20/20 split with seed %d", path, split_seed)

    for image in schema.images:
        if image.column in present:
            columns[image.column] = parser.image_paths(image.column)
            continue
        columns[image.column] = pd.Series([None] * len(table), dtype=object)
        parser.problems.append(Problem(
            "warning", path, f"image column {image.column!r} of modality {image.modality!r} is absent; "
            "no subject has this image", fix="add the column if the cohort has these images", column=image.column,
        ))

    for modality in schema.tabular:
        for categorical in modality.categorical:
            columns[categorical.column] = parser.categorical(categorical.column, categorical.levels)
        for continuous in modality.continuous:
            columns[continuous.column] = parser.continuous(
                continuous.column, continuous.min, continuous.max, continuous.zero_is_missing
            )

    used = set(required) | {schema.split_column} | {image.column for image in schema.images}
    extra_columns = tuple(column for column in present if column not in used)
    if extra_columns:
        logger.info("Manifest %s: ignoring columns the schema does not name: %s", path, ", ".join(extra_columns))

    manifest = Manifest(path, schema, pd.DataFrame(columns), parser.problems, extra_columns, has_split_column)
    logger.info("Read %d subjects from %s with %d problem(s)", len(table), path, len(manifest.problems))
    if strict and manifest.errors:
        raise ManifestError(manifest.problems)
    return manifest
