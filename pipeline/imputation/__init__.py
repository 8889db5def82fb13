"""Imputation: recover missing clinical values and missing image tokens before selection.

Every imputer follows the scikit-learn contract (parameters in ``__init__``, learned state ending
in ``_``, randomness from ``random_state``) and works in the encoded table space of
:mod:`pipeline.data.tabular`. See ``docs/imputation.md``.
"""

from pipeline.imputation.base import (
    ImageTokenImputer,
    RecoveredBatch,
    RecoveredTable,
    TabularImputer,
    recover_batch,
)
from pipeline.imputation.baseline import MeanModeImputer
from pipeline.imputation.image_features import MeanTokenImputer, TokenImputer
from pipeline.imputation.iterative import IterativeTabularImputer
from pipeline.imputation.learned import LearnedTabularImputer
from pipeline.imputation.mopoe import MoPoEImputer
from pipeline.imputation.persistence import load_imputer, save_imputer

__all__ = [
    "ImageTokenImputer",
    "IterativeTabularImputer",
    "LearnedTabularImputer",
    "MeanModeImputer",
    "MeanTokenImputer",
    "MoPoEImputer",
    "RecoveredBatch",
    "RecoveredTable",
    "TabularImputer",
    "TokenImputer",
    "load_imputer",
    "recover_batch",
    "save_imputer",
]
