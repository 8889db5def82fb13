"""Bundle workflows: the jobs the MONAI bundle configs call, built from the layers below.

- :class:`ImageTableTraining`: trains the fusion networks, fits prototypes and imputers.
- :class:`MissingTableSweep`: DyMo and baselines across missing-table rates, logged to MLflow.
"""

from pipeline.workflows.inference import DEFAULT_GAMMAS, RESULT_COLUMNS, MissingTableSweep
from pipeline.workflows.training import EMBEDDINGS, ImageTableTraining, build_network

__all__ = ["DEFAULT_GAMMAS", "EMBEDDINGS", "RESULT_COLUMNS", "ImageTableTraining", "MissingTableSweep", "build_network"]
