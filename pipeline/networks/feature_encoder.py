"""Encoder for modalities given as feature vectors, such as precomputed image features."""

from __future__ import annotations

import torch
from torch import nn


class FeatureEncoder(nn.Module):
    """Map a feature vector ``(B, F_in)`` to ``N`` tokens ``(B, N, F)`` with one linear layer and GELU.

    Args:
        in_features: width ``F_in`` of the input vector.
        num_tokens: tokens ``N`` produced per sample.
        out_features: width ``F`` of each token.
    """

    def __init__(self, in_features: int, num_tokens: int = 1, out_features: int = 64) -> None:
        super().__init__()
        if in_features < 1 or num_tokens < 1 or out_features < 1:
            raise ValueError(
                "in_features, num_tokens and out_features must be positive, got "
                f"{in_features}, {num_tokens} and {out_features}."
            )
        self.num_tokens = num_tokens
        self.out_features = out_features
        self.layer = nn.Sequential(nn.Linear(in_features, num_tokens * out_features), nn.GELU())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Encode features ``(B, F_in)`` into tokens ``(B, N, F)``."""
        if features.dim() != 2:
            raise ValueError(f"FeatureEncoder expects features of shape (B, F_in), got {tuple(features.shape)}.")
        return self.layer(features).view(features.shape[0], self.num_tokens, self.out_features)
