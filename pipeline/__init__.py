"""DyMo on MONAI: classify subjects from incomplete multimodal data.

Layers, from bottom to top (imports point downward only):

- :mod:`pipeline.networks`: modality encoders, the tabular tokeniser and the masked fusion transformer.
- :mod:`pipeline.selection`: per-subset prototypes, the reward and the greedy modality selector.
- :mod:`pipeline.training`: random-subset training with the prototype loss, and checkpoints.
"""

__version__ = "0.1.0"
