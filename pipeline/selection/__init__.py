"""Selection: per-subset prototypes, the label-free reward and the greedy DyMo selector."""

from pipeline.selection.greedy import DyMoSelector, greedy_step
from pipeline.selection.prototypes import (
    SubsetPrototypes,
    compute_subset_prototypes,
    embedding_distance,
    fit_subset_prototypes,
)
from pipeline.selection.result import SelectionResult, SelectionStep
from pipeline.selection.reward import (
    calibration_factor,
    intra_class_similarity,
    modality_reward,
    quality,
    similarity,
)

__all__ = [
    "DyMoSelector",
    "SelectionResult",
    "SelectionStep",
    "SubsetPrototypes",
    "calibration_factor",
    "compute_subset_prototypes",
    "embedding_distance",
    "fit_subset_prototypes",
    "greedy_step",
    "intra_class_similarity",
    "modality_reward",
    "quality",
    "similarity",
]
