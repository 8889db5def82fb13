"""Cohort schema: how to read a manifest CSV, loaded from a YAML file in ``configs/``.

The file format is described in ``docs/cohort-format.md``. :func:`load_schema` checks the whole
file before returning and raises one :class:`SchemaError` that lists every invalid key with its
key path (for example ``tabular[1].continuous[0].min``).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

logger = logging.getLogger(__name__)

LabelRuleKind = Literal["threshold", "map", "identity"]
ImageKind = Literal["2d", "2d+t", "3d"]

# Name of the derived class-id column in a parsed manifest; no other schema column may use it.
LABEL_COLUMN = "label"

_PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+")
_GROUPED_THOUSANDS = re.compile(r"[+-]?\d{1,3}([.,' \u00a0\u202f]\d{3})+([.,]\d+)?")


class NumberFormatError(ValueError):
    """Cell that is not a plain number; ``reason`` describes the fault and ``fix`` how to rewrite it."""

    def __init__(self, reason: str, fix: str) -> None:
        self.reason = reason
        self.fix = fix
        super().__init__(f"{reason}. {fix}")


def parse_number(text: str) -> float:
    """Parse one manifest cell as a finite float, written with a decimal point and no grouping.

    Raises:
        NumberFormatError: a ValueError for decimal commas (``12,5``), thousands separators
            (``1.234,5``, ``1,234``, ``1 234``), non-finite values and any other text. The caller
            adds the file, row and column.
    """
    stripped = text.strip()
    if _PLAIN_NUMBER.fullmatch(stripped):
        value = float(stripped)
        if not math.isfinite(value):
            raise NumberFormatError(f"{text!r} is not a finite number", "write a finite value or leave the cell empty")
        return value

    if _GROUPED_THOUSANDS.fullmatch(stripped):
        raise NumberFormatError(
            f"{text!r} looks like a number with a thousands separator or a decimal comma, and its value "
            "would be a guess",
            "write it without grouping and with a decimal point, e.g. 1234.5",
        )
    if _DECIMAL_COMMA.fullmatch(stripped):
        raise NumberFormatError(
            f"{text!r} uses a decimal comma, and its value would be a guess",
            f"write it with a decimal point: {stripped.replace(',', '.')}",
        )
    raise NumberFormatError(f"{text!r} is not a number", "write a plain number such as 12.5")


@dataclass(frozen=True)
class LabelRule:
    """Rule that turns the raw values of the label column into class ids ``0 .. K-1``.

    ``threshold`` gives class 1 when the number is greater than ``greater_than``, else class 0.
    ``map`` looks the stripped raw text up in ``values``. ``identity`` reads an integer class id.
    """

    column: str
    rule: LabelRuleKind
    classes: tuple[str, ...]
    greater_than: float | None = None
    values: tuple[tuple[str, int], ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_id(self, raw_value: str) -> int:
        """Derive the class id of one raw value; raise ValueError saying why it has none."""
        text = raw_value.strip()
        if self.rule == "threshold":
            return int(parse_number(text) > self.greater_than)

        if self.rule == "map":
            mapping = dict(self.values)
            if text not in mapping:
                raise ValueError(f"{raw_value!r} is not one of the mapped values {sorted(mapping)}")
            return mapping[text]

        number = parse_number(text)
        if not number.is_integer() or not 0 <= number < self.num_classes:
            raise ValueError(f"{raw_value!r} is not a class id in 0..{self.num_classes - 1}")
        return int(number)

    def apply(self, raw_values: Iterable[str]) -> list[int]:
        """Derive the class id of every raw value.

        Raises:
            ValueError: listing every value without a class id by its 1-based position, which is
                the data row number when ``raw_values`` is a manifest column.
        """
        class_ids: list[int] = []
        failures: list[str] = []
        for position, raw_value in enumerate(raw_values, start=1):
            try:
                class_ids.append(self.class_id(raw_value))
            except ValueError as error:
                failures.append(f"row {position}: {error}")

        if failures:
            raise ValueError(
                f"label rule {self.rule!r} on column {self.column!r} failed for "
                f"{len(failures)} value(s): " + "; ".join(failures)
            )
        return class_ids


@dataclass(frozen=True)
class ImageModality:
    """Image modality: the manifest column holding a NIfTI path or a DICOM series folder."""

    modality: str
    column: str
    kind: ImageKind
    series_rule: str | None = None  # regex on SeriesDescription choosing one series per DICOM folder
    assume_missing_geometry: bool = False  # read DICOM without PixelSpacing/IOP/IPP, with a warning


@dataclass(frozen=True)
class CategoricalColumn:
    """Categorical clinical column; ``levels`` is None when fitted on the training split."""

    column: str
    levels: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ContinuousColumn:
    """Continuous clinical column with its unit and plausible range ``[min, max]``."""

    column: str
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    zero_is_missing: bool = False


@dataclass(frozen=True)
class TabularModality:
    """Tabular modality: a group of clinical columns that is present or absent as one."""

    modality: str
    categorical: tuple[CategoricalColumn, ...] = ()
    continuous: tuple[ContinuousColumn, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        """Column names, categorical first, each group in file order."""
        return tuple(c.column for c in self.categorical) + tuple(c.column for c in self.continuous)


@dataclass(frozen=True)
class CohortSchema:
    """Validated content of a cohort schema file."""

    name: str
    label: LabelRule
    subject_id_column: str = "subject_id"
    split_column: str | None = "split"
    missing_tokens: tuple[str, ...] = ("",)
    images: tuple[ImageModality, ...] = ()
    tabular: tuple[TabularModality, ...] = ()
    source: Path | None = None

    @property
    def modality_names(self) -> tuple[str, ...]:
        """Modality names: image modalities first, then tabular ones, each in file order."""
        return tuple(m.modality for m in self.images) + tuple(m.modality for m in self.tabular)

    @property
    def clinical_columns(self) -> tuple[str, ...]:
        """Every clinical column of every tabular modality, in modality order."""
        return tuple(column for modality in self.tabular for column in modality.columns)

    def tabular_modality(self, modality: str) -> TabularModality:
        for entry in self.tabular:
            if entry.modality == modality:
                return entry
        names = [entry.modality for entry in self.tabular]
        raise ValueError(f"schema {self.name!r} has no tabular modality {modality!r}; it has {names}")

    def tabular_columns(self, modality: str) -> tuple[str, ...]:
        """Column names of one tabular modality, categorical first."""
        return self.tabular_modality(modality).columns

    def is_missing_token(self, text: str) -> bool:
        """Return whether a cell is a missing value: empty after stripping, or a missing token."""
        stripped = text.strip()
        return stripped == "" or stripped in self.missing_tokens


class SchemaError(ValueError):
    """Invalid schema file; ``errors`` contains ``(key_path, message)`` for every invalid key."""

    def __init__(self, path: Path, errors: Sequence[tuple[str, str]]) -> None:
        self.path = path
        self.errors = list(errors)
        lines = [f"  {key_path or '<top level>'}: {message}" for key_path, message in self.errors]
        super().__init__(f"invalid cohort schema {path} ({len(self.errors)} error(s)):\n" + "\n".join(lines))


class _SchemaReader:
    """Build the dataclasses from parsed YAML, recording every error instead of stopping."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    def error(self, key_path: str, message: str) -> None:
        self.errors.append((key_path, message))

    def mapping(self, value: Any, key_path: str, required: set[str], optional: set[str]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.error(key_path, f"expected a mapping, got {type(value).__name__} {value!r}")
            return None

        for key in value:
            if key not in required | optional:
                allowed = ", ".join(sorted(required | optional))
                self.error(_join(key_path, str(key)), f"unknown key; allowed keys here: {allowed}")
        for key in sorted(required - value.keys()):
            self.error(_join(key_path, key), "required key is missing")
        return value

    def string(self, value: Any, key_path: str) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.error(key_path, f"expected a non-empty string, got {value!r}")
            return None
        return value

    def number(self, value: Any, key_path: str) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.error(key_path, f"expected a finite number, got {value!r}")
            return None
        return float(value)

    def boolean(self, value: Any, key_path: str) -> bool:
        if not isinstance(value, bool):
            self.error(key_path, f"expected true or false, got {value!r}")
            return False
        return value

    def sequence(self, value: Any, key_path: str) -> list[Any]:
        if not isinstance(value, list):
            self.error(key_path, f"expected a list, got {type(value).__name__} {value!r}")
            return []
        return value

    def token(self, value: Any, key_path: str) -> str | None:
        # YAML reads 1 and yes as int and bool, so integers are taken as their text and the rest
        # must be quoted to mean the text the CSV contains.
        if isinstance(value, str):
            return value.strip()
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        self.error(key_path, f"expected a string, got {type(value).__name__} {value!r}; quote it in the YAML")
        return None

    def unique_tokens(self, value: Any, key_path: str) -> tuple[str, ...] | None:
        tokens = [self.token(item, f"{key_path}[{index}]") for index, item in enumerate(self.sequence(value, key_path))]
        kept = [token for token in tokens if token is not None]
        duplicates = sorted({token for token in kept if kept.count(token) > 1})
        if duplicates:
            self.error(key_path, f"duplicate entries {duplicates}")
        return tuple(kept)

    def label(self, value: Any) -> LabelRule | None:
        entry = self.mapping(value, "label", {"column", "rule", "classes"}, {"greater_than", "values"})
        if entry is None:
            return None

        column = self.string(entry.get("column"), "label.column")
        rule = entry.get("rule")
        if rule not in get_args(LabelRuleKind):
            self.error("label.rule", f"expected one of {list(get_args(LabelRuleKind))}, got {rule!r}")
            rule = None
        classes = self.unique_tokens(entry.get("classes", []), "label.classes")
        if classes is not None and len(classes) < 2:
            self.error("label.classes", f"expected at least 2 class names, got {list(classes)}")

        greater_than = None
        values: tuple[tuple[str, int], ...] = ()
        if rule == "threshold":
            greater_than = self.number(entry.get("greater_than"), "label.greater_than")
            if classes is not None and len(classes) != 2:
                self.error("label.classes", f"a threshold rule gives 2 classes, got {list(classes)}")
        elif "greater_than" in entry:
            self.error("label.greater_than", f"only used by rule 'threshold', not {rule!r}")
        if rule == "map":
            values = self.label_map(entry.get("values"), len(classes or ()))
        elif "values" in entry:
            self.error("label.values", f"only used by rule 'map', not {rule!r}")

        if column is None or rule is None or classes is None:
            return None
        return LabelRule(column, rule, classes, greater_than, values)

    def label_map(self, value: Any, num_classes: int) -> tuple[tuple[str, int], ...]:
        if not isinstance(value, dict) or not value:
            self.error("label.values", f"rule 'map' needs a non-empty mapping raw value -> class id, got {value!r}")
            return ()

        pairs = []
        for raw, class_id in value.items():
            key_path = f"label.values.{raw}"
            raw_text = self.token(raw, key_path)
            if isinstance(class_id, bool) or not isinstance(class_id, int) or not 0 <= class_id < num_classes:
                self.error(key_path, f"expected a class id in 0..{num_classes - 1}, got {class_id!r}")
            elif raw_text is not None:
                pairs.append((raw_text, class_id))
        return tuple(pairs)

    def image(self, value: Any, key_path: str) -> ImageModality | None:
        entry = self.mapping(value, key_path, {"modality", "column", "kind"}, {"series_rule", "assume_missing_geometry"})
        if entry is None:
            return None
        series_rule = entry.get("series_rule")
        if series_rule is not None:
            series_rule = self.string(series_rule, f"{key_path}.series_rule")
            try:
                re.compile(series_rule or "")
            except re.error as error:
                self.error(f"{key_path}.series_rule", f"invalid regular expression {series_rule!r}: {error}")
        assume = entry.get("assume_missing_geometry", False)
        if not isinstance(assume, bool):
            self.error(f"{key_path}.assume_missing_geometry", f"expected true or false, got {assume!r}")
            assume = False

        modality = self.string(entry.get("modality"), f"{key_path}.modality")
        column = self.string(entry.get("column"), f"{key_path}.column")
        kind = entry.get("kind")
        if kind not in get_args(ImageKind):
            self.error(f"{key_path}.kind", f"expected one of {list(get_args(ImageKind))}, got {kind!r}")
            return None
        if modality is None or column is None:
            return None
        return ImageModality(modality, column, kind, series_rule, assume)

    def tabular(self, value: Any, key_path: str) -> TabularModality | None:
        entry = self.mapping(value, key_path, {"modality"}, {"categorical", "continuous"})
        if entry is None:
            return None

        modality = self.string(entry.get("modality"), f"{key_path}.modality")
        categorical = [
            self.categorical(item, f"{key_path}.categorical[{index}]")
            for index, item in enumerate(self.sequence(entry.get("categorical", []), f"{key_path}.categorical"))
        ]
        continuous = [
            self.continuous(item, f"{key_path}.continuous[{index}]")
            for index, item in enumerate(self.sequence(entry.get("continuous", []), f"{key_path}.continuous"))
        ]
        if not categorical and not continuous:
            self.error(key_path, "a tabular modality needs at least one categorical or continuous column")
        if modality is None or None in categorical or None in continuous:
            return None
        return TabularModality(modality, tuple(categorical), tuple(continuous))

    def categorical(self, value: Any, key_path: str) -> CategoricalColumn | None:
        entry = self.mapping(value, key_path, {"column"}, {"levels"})
        if entry is None:
            return None

        column = self.string(entry.get("column"), f"{key_path}.column")
        levels = None
        if "levels" in entry:
            levels = self.unique_tokens(entry["levels"], f"{key_path}.levels")
            if not levels:
                self.error(f"{key_path}.levels", "expected at least one level; leave the key out to fit levels")
        return None if column is None else CategoricalColumn(column, levels)

    def continuous(self, value: Any, key_path: str) -> ContinuousColumn | None:
        entry = self.mapping(value, key_path, {"column"}, {"unit", "min", "max", "zero_is_missing"})
        if entry is None:
            return None

        column = self.string(entry.get("column"), f"{key_path}.column")
        unit = self.string(entry["unit"], f"{key_path}.unit") if "unit" in entry else None
        low = self.number(entry["min"], f"{key_path}.min") if "min" in entry else None
        high = self.number(entry["max"], f"{key_path}.max") if "max" in entry else None
        zero_is_missing = self.boolean(entry.get("zero_is_missing", False), f"{key_path}.zero_is_missing")
        if low is not None and high is not None and low > high:
            self.error(f"{key_path}.min", f"min {low} is greater than max {high}")
        return None if column is None else ContinuousColumn(column, unit, low, high, zero_is_missing)


def _join(key_path: str, key: str) -> str:
    return f"{key_path}.{key}" if key_path else key


def _check_column_names(reader: _SchemaReader, schema: CohortSchema) -> None:
    """Record columns and modality names that are used twice, and the reserved label name."""
    owners: dict[str, str] = {}

    def claim(column: str, key_path: str) -> None:
        if column in owners:
            reader.error(key_path, f"column {column!r} is already used by {owners[column]}; each column has one role")
        else:
            owners[column] = key_path

    claim(schema.subject_id_column, "subject_id_column")
    if schema.split_column is not None:
        claim(schema.split_column, "split_column")
    claim(schema.label.column, "label.column")
    for index, image in enumerate(schema.images):
        claim(image.column, f"images[{index}].column")
    for index, modality in enumerate(schema.tabular):
        for group in ("categorical", "continuous"):
            for position, entry in enumerate(getattr(modality, group)):
                claim(entry.column, f"tabular[{index}].{group}[{position}].column")

    if LABEL_COLUMN in owners and owners[LABEL_COLUMN] != "label.column":
        reader.error(owners[LABEL_COLUMN], f"column name {LABEL_COLUMN!r} is reserved for the derived class id")

    seen: set[str] = set()
    for name in schema.modality_names:
        if name in seen:
            reader.error("images/tabular", f"modality name {name!r} is used twice")
        seen.add(name)


def parse_schema(document: Any, source: Path) -> CohortSchema:
    """Validate a parsed YAML document and build the schema; ``source`` names it in errors."""
    reader = _SchemaReader()
    top = reader.mapping(
        document,
        "",
        {"name", "label"},
        {"subject_id_column", "split_column", "missing_tokens", "images", "tabular"},
    )
    if top is None:
        raise SchemaError(source, reader.errors)

    name = reader.string(top.get("name"), "name")
    subject_id_column = reader.string(top.get("subject_id_column", "subject_id"), "subject_id_column")
    split_column = top.get("split_column", "split")
    if split_column is not None:
        split_column = reader.string(split_column, "split_column")
    missing_tokens = reader.unique_tokens(top.get("missing_tokens", [""]), "missing_tokens")
    label = reader.label(top.get("label"))
    images = [
        reader.image(item, f"images[{index}]")
        for index, item in enumerate(reader.sequence(top.get("images", []), "images"))
    ]
    tabular = [
        reader.tabular(item, f"tabular[{index}]")
        for index, item in enumerate(reader.sequence(top.get("tabular", []), "tabular"))
    ]
    if not images and not tabular:
        reader.error("", "the schema declares no modality; add an 'images' or 'tabular' entry")

    if reader.errors or None in (name, subject_id_column, label) or None in images or None in tabular:
        raise SchemaError(source, reader.errors)

    schema = CohortSchema(
        name=name,
        label=label,
        subject_id_column=subject_id_column,
        split_column=split_column,
        missing_tokens=missing_tokens or ("",),
        images=tuple(images),
        tabular=tuple(tabular),
        source=source,
    )
    _check_column_names(reader, schema)
    if reader.errors:
        raise SchemaError(source, reader.errors)
    return schema


def load_schema(path: str | Path) -> CohortSchema:
    """Load and validate a cohort schema YAML file.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        SchemaError: a ValueError listing every invalid key of the file by its key path.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cohort schema not found: {path}; pass the YAML file from configs/")

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise SchemaError(path, [("", f"not UTF-8 at byte {error.start}; re-save the file as UTF-8")]) from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SchemaError(path, [("", f"invalid YAML{where}: {problem}")]) from error

    schema = parse_schema(document, path)
    logger.debug("Loaded cohort schema %s from %s", schema.name, path)
    return schema
