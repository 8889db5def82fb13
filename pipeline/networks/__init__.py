"""Networks: modality encoders, the tabular tokeniser and the masked fusion transformer."""

from pipeline.networks.batch import check_reiterable, unpack_batch
from pipeline.networks.feature_encoder import FeatureEncoder
from pipeline.networks.fingerprint import network_fingerprint
from pipeline.networks.fusion import ENCODERS, MaskedFusionTransformer
from pipeline.networks.image_encoder import ImageEncoder
from pipeline.networks.subsets import all_subsets, describe_subset, mask_to_subset_index, subset_index_to_mask
from pipeline.networks.tabular_tokenizer import TabularTokenizer

__all__ = [
    "ENCODERS",
    "FeatureEncoder",
    "ImageEncoder",
    "MaskedFusionTransformer",
    "TabularTokenizer",
    "all_subsets",
    "check_reiterable",
    "describe_subset",
    "mask_to_subset_index",
    "network_fingerprint",
    "subset_index_to_mask",
    "unpack_batch",
]
