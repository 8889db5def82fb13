"""Training: random modality subsets, the prototype loss, pooled validation and checkpoints."""

from pipeline.training.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint, save_checkpoint
from pipeline.training.losses import LossTerms, SubsetPrototypeLoss, prototype_similarity
from pipeline.training.prototypes import ClassPrototypeAccumulator
from pipeline.training.subset_sampling import available_subsets, sample_subsets
from pipeline.training.trainer import SubsetTrainer, TrainingHistory
from pipeline.training.validation import PooledValidation, evaluate_pooled

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "ClassPrototypeAccumulator",
    "LossTerms",
    "PooledValidation",
    "SubsetPrototypeLoss",
    "SubsetTrainer",
    "TrainingHistory",
    "available_subsets",
    "evaluate_pooled",
    "load_checkpoint",
    "prototype_similarity",
    "sample_subsets",
    "save_checkpoint",
]
