"""From a cohort manifest to the per-subject items and batches the networks take.

Shape letters: ``B`` batch, ``M`` modalities, ``C_cat``/``C_num`` categorical/continuous columns.

An item is a dict with ``subject_id``, ``split``, ``label``, one entry per modality named by the
modality (an image path or None, or a table's ``{"categorical", "continuous",
"missing_values"}`` tensors), and ``present``, a dict of per-modality bool flags. The image
transforms (:class:`~pipeline.data.transforms.LoadModalityImaged`,
:class:`~pipeline.data.transforms.MarkAbsentModalityd`) fill in the images and their flags;
after collation, :func:`presence_matrix` stacks the flags into the ``(B, M)`` mask.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pipeline.data.manifest import Manifest
from pipeline.data.schema import LABEL_COLUMN, CohortSchema
from pipeline.data.tabular import TabularEncoder

logger = logging.getLogger(__name__)

PRESENT_KEY = "present"


def tabular_encoder_for(schema: CohortSchema, modality: str) -> TabularEncoder:
    """Build the (unfitted) encoder of one tabular modality from its schema columns and levels."""
    table = schema.tabular_modality(modality)
    levels = {column.column: list(column.levels) for column in table.categorical if column.levels is not None}
    return TabularEncoder(
        categorical_columns=[column.column for column in table.categorical],
        continuous_columns=[column.column for column in table.continuous],
        categorical_levels=levels or None,
    )


def fit_tabular_encoders(manifest: Manifest, split: str = "train") -> dict[str, TabularEncoder]:
    """Fit one encoder per tabular modality on the rows of ``split`` only (levels, normalisation)."""
    rows = manifest.frame[manifest.split_column] == split
    if not bool(rows.any()):
        raise ValueError(
            f"{manifest.path}: no subject is in split {split!r}, so the tabular encoders cannot be fitted; "
            f"splits present: {sorted(manifest.frame[manifest.split_column].dropna().unique())}."
        )
    encoders = {}
    for table in manifest.schema.tabular:
        encoder = tabular_encoder_for(manifest.schema, table.modality)
        encoders[table.modality] = encoder.fit(manifest.tabular(table.modality)[rows.to_numpy()])
    return encoders


def subject_items(
    manifest: Manifest, encoders: Mapping[str, TabularEncoder], split: str | None = None
) -> list[dict[str, Any]]:
    """Build one item per subject of ``split`` (all subjects when None), in manifest order.

    Subjects without a label are left out with a warning (``check-cohort`` reports them as errors).
    A tabular modality is present for a subject when at least one of its values is observed.
    """
    schema = manifest.schema
    frame = manifest.frame
    if split is not None:
        frame = frame[frame[manifest.split_column] == split]
    labelled = frame[LABEL_COLUMN].notna()
    if not bool(labelled.all()):
        logger.warning("%s: leaving out %d subjects without a label", manifest.path, int((~labelled).sum()))
        frame = frame[labelled]

    tables = {}
    for table in schema.tabular:
        encoded = encoders[table.modality].transform(frame[list(schema.tabular_columns(table.modality))])
        tables[table.modality] = encoded.to_tensors()

    items = []
    for position, (_, row) in enumerate(frame.iterrows()):
        item: dict[str, Any] = {
            "subject_id": row[schema.subject_id_column],
            "split": row[manifest.split_column],
            "label": torch.tensor(int(row[LABEL_COLUMN])),
            PRESENT_KEY: {},
        }
        for image in schema.images:
            path = row[image.column]
            item[image.modality] = None if path is None else str(path)
        for modality, tensors in tables.items():
            item[modality] = {name: value[position] for name, value in tensors.items()}
            item[PRESENT_KEY][modality] = torch.tensor(not bool(tensors["missing_values"][position].all()))
        items.append(item)
    return items


def presence_matrix(batch: Mapping[str, Any], modality_names: Sequence[str], present_key: str = PRESENT_KEY) -> torch.Tensor:
    """Stack a collated batch's presence flags into the ``(B, M)`` bool mask, in ``modality_names`` order."""
    flags = batch.get(present_key)
    if not isinstance(flags, Mapping):
        raise KeyError(f"batch has no {present_key!r} dict of presence flags; run MarkAbsentModalityd on every image key.")
    missing = [name for name in modality_names if name not in flags]
    if missing:
        raise KeyError(f"batch[{present_key!r}] has no flag for modalities {missing}; it has {sorted(flags)}.")
    return torch.stack([torch.as_tensor(flags[name]).bool().reshape(-1) for name in modality_names], dim=1)
