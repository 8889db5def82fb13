"""Bundle workflows: the jobs the MONAI bundle configs call, built from the layers below.

- :class:`ImageTableTraining`, :class:`MissingTableSweep`: one image and one table (the CAD
  bundle): training, then DyMo and baselines across missing-table rates.
- :class:`ImageModalitiesTraining`, :class:`ModalitySweep`: several image modalities (the
  PolyMNIST bundle): training with a MoPoE imputer, then DyMo, baselines and ablations across
  missing-modality rates.
"""

from pipeline.workflows.image_modalities import ImageModalitiesTraining, ModalitySweep
from pipeline.workflows.inference import (
    DEFAULT_GAMMAS,
    RESULT_COLUMNS,
    MissingTableSweep,
)
from pipeline.workflows.training import EMBEDDINGS, ImageTableTraining, build_network

__all__ = [
    "DEFAULT_GAMMAS",
    "EMBEDDINGS",
    "RESULT_COLUMNS",
    "ImageModalitiesTraining",
    "ImageTableTraining",
    "MissingTableSweep",
    "ModalitySweep",
    "build_network",
]
