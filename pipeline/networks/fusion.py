"""Masked multimodal fusion transformer: the classifier that DyMo selects modalities for.

Shape letters: ``B`` batch, ``M`` modalities, ``N_j`` tokens of modality ``j``, ``N = sum N_j``,
``D`` model width, ``P`` projection (embedding) width, ``K`` classes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from monai.networks.blocks import TransformerBlock
from torch import nn

from pipeline.networks.feature_encoder import FeatureEncoder
from pipeline.networks.image_encoder import ImageEncoder
from pipeline.networks.subsets import check_num_modalities
from pipeline.networks.tabular_tokenizer import TabularTokenizer

EmbeddingKind = Literal["cosine", "euclidean"]
EMBEDDING_KINDS: tuple[str, ...] = ("cosine", "euclidean")

# Encoder kinds a modality specification may name, with the class that builds them.
ENCODERS: dict[str, type[nn.Module]] = {
    "image": ImageEncoder,
    "tabular": TabularTokenizer,
    "features": FeatureEncoder,
}

ModalityInput = torch.Tensor | Mapping[str, torch.Tensor]


class MaskedFusionTransformer(nn.Module):
    """Fuse the tokens of any subset of modalities with key masking, then classify.

    The forward pass has three stages that can be called alone:

    1. :meth:`encode`: run each modality's encoder, project its tokens to width ``D`` and apply a
       per-modality LayerNorm. Encoders never see the presence mask, so one call serves every
       subset of modalities.
    2. :meth:`fuse`: zero the tokens of unused modalities, add a modality embedding, prepend one
       CLS token, add a positional embedding and run pre-norm transformer blocks in which no token
       attends to an unused modality (the CLS token is never masked). Returns the CLS output.
    3. :meth:`classify`: a classifier head gives logits and a projection head gives the embedding
       used by prototypes, L2-normalised when ``embedding == "cosine"``.

    Each modality is given as a mapping with its ``name``, its ``encoder`` kind (``"image"``,
    ``"tabular"`` or ``"features"``) and the keyword arguments of that encoder class, for example
    ``{"name": "cine", "encoder": "image", "kind": "2d+t", "backbone": "resnet18"}``. The whole
    configuration is plain data (:attr:`config`), so a checkpoint can store it beside the weights
    and be read back with ``torch.load(weights_only=True)``.

    Args:
        modalities: one specification per modality; their order fixes the modality index ``j``.
        num_classes: classes ``K``.
        dim: model width ``D``; 256 in the published CAD setting.
        depth: transformer blocks; 2 in every published setting.
        heads: attention heads; must divide ``dim``.
        projection_dim: embedding width ``P``; 128 in the published CAD setting.
        embedding: ``"cosine"`` (L2-normalised embedding) or ``"euclidean"``.
        mlp_ratio: hidden width of each block's MLP as a multiple of ``dim``.
        dropout: dropout rate inside the transformer blocks.
    """

    def __init__(
        self,
        modalities: Sequence[Mapping[str, Any]],
        num_classes: int,
        dim: int = 256,
        depth: int = 2,
        heads: int = 8,
        projection_dim: int = 128,
        embedding: EmbeddingKind = "cosine",
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_num_modalities(len(modalities))
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
        if embedding not in EMBEDDING_KINDS:
            raise ValueError(f"embedding must be one of {EMBEDDING_KINDS}, got {embedding!r}.")
        if dim % heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads}).")

        self.config: dict[str, Any] = {
            "modalities": [dict(spec) for spec in copy.deepcopy(list(modalities))],
            "num_classes": num_classes,
            "dim": dim,
            "depth": depth,
            "heads": heads,
            "projection_dim": projection_dim,
            "embedding": embedding,
            "mlp_ratio": mlp_ratio,
            "dropout": dropout,
        }
        self.modality_names: list[str] = []
        self.encoders = nn.ModuleList()
        for index, spec in enumerate(modalities):
            name, encoder = _build_encoder(index, spec)
            if name in self.modality_names:
                raise ValueError(f"modality names must be unique, got {name!r} twice.")
            self.modality_names.append(name)
            self.encoders.append(encoder)
        self.num_modalities = len(self.encoders)
        self.num_classes = num_classes
        self.embedding = embedding

        self.token_counts = [encoder.num_tokens for encoder in self.encoders]
        self.token_projections = nn.ModuleList(
            nn.Sequential(nn.Linear(encoder.out_features, dim), nn.LayerNorm(dim)) for encoder in self.encoders
        )
        token_modality = torch.repeat_interleave(torch.arange(self.num_modalities), torch.tensor(self.token_counts))
        self.register_buffer("token_modality", token_modality, persistent=False)  # (N,)

        self.modality_embedding = nn.Embedding(self.num_modalities, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position_embedding = nn.Parameter(torch.randn(1, 1 + sum(self.token_counts), dim) * 0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size=dim, mlp_dim=int(dim * mlp_ratio), num_heads=heads, dropout_rate=dropout)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)
        self.projection = nn.Linear(dim, projection_dim)

    def encode(self, inputs: Mapping[str, ModalityInput]) -> torch.Tensor:
        """Encode every modality once and join the tokens.

        Args:
            inputs: per modality name, a tensor (passed to the encoder as its only argument) or a
                mapping of keyword arguments (the tabular tokeniser's ``categorical``,
                ``continuous``, ``missing_values``). Absent modalities still need a placeholder
                input of the right shape; :meth:`fuse` masks them.

        Returns:
            Tokens ``(B, N, D)``, modality ``j`` occupying the positions where
            ``token_modality == j``.
        """
        missing = [name for name in self.modality_names if name not in inputs]
        if missing:
            raise KeyError(f"inputs has no entry for modalities {missing}; it has {sorted(inputs)}.")

        return torch.cat([self.encode_modality(name, inputs[name]) for name in self.modality_names], dim=1)

    def encode_modality(self, name: str, value: ModalityInput) -> torch.Tensor:
        """Encode one modality's input into its projected tokens ``(B, N_j, D)``."""
        if name not in self.modality_names:
            raise KeyError(f"unknown modality {name!r}; the network has {self.modality_names}.")
        index = self.modality_names.index(name)
        encoder = self.encoders[index]
        encoded = encoder(**value) if isinstance(value, Mapping) else encoder(value)  # (B, N_j, F_j)
        return self.token_projections[index](encoded)

    def token_slice(self, name: str) -> slice:
        """Positions of modality ``name`` in the joined token sequence ``(B, N, D)``."""
        index = self.modality_names.index(name)
        start = sum(self.token_counts[:index])
        return slice(start, start + self.token_counts[index])

    def fuse(self, tokens: torch.Tensor, present_mask: torch.Tensor) -> torch.Tensor:
        """Fuse tokens ``(B, N, D)`` under a presence mask ``(B, M)``; return the CLS output ``(B, D)``."""
        self._check_fusion_inputs(tokens, present_mask)
        token_present = present_mask[:, self.token_modality]  # (B, N)

        # torch.where rather than a product, so that a NaN placeholder of an absent modality becomes 0.
        x = torch.where(token_present[..., None], tokens, torch.zeros_like(tokens))
        x = x + self.modality_embedding.weight[self.token_modality]
        cls = self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + self.position_embedding  # (B, 1 + N, D)

        key_mask = torch.cat([token_present.new_ones(x.shape[0], 1), token_present], dim=1)  # True = attend
        for block in self.blocks:
            x = block(x, attn_mask=key_mask)
        return self.norm(x[:, 0])

    def classify(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map the CLS output ``(B, D)`` to logits ``(B, K)`` and the embedding ``(B, P)``."""
        logits = self.classifier(fused)
        embedding = self.projection(fused)
        if self.embedding == "cosine":
            embedding = F.normalize(embedding, dim=-1)
        return logits, embedding

    def forward(
        self, inputs: Mapping[str, ModalityInput], present_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run all three stages; return logits ``(B, K)`` and embedding ``(B, P)``."""
        return self.classify(self.fuse(self.encode(inputs), present_mask))

    def _check_fusion_inputs(self, tokens: torch.Tensor, present_mask: torch.Tensor) -> None:
        num_tokens = int(self.token_modality.numel())
        if tokens.dim() != 3 or tokens.shape[1] != num_tokens:
            raise ValueError(f"tokens must have shape (B, {num_tokens}, D), got {tuple(tokens.shape)}.")
        if present_mask.dtype != torch.bool:
            raise TypeError(f"present_mask must be a bool tensor, got dtype {present_mask.dtype}.")
        if tuple(present_mask.shape) != (tokens.shape[0], self.num_modalities):
            raise ValueError(
                f"present_mask must have shape ({tokens.shape[0]}, {self.num_modalities}) for "
                f"modalities {self.modality_names}, got {tuple(present_mask.shape)}."
            )


def _build_encoder(index: int, spec: Mapping[str, Any]) -> tuple[str, nn.Module]:
    """Build the encoder of modality ``index`` from its specification; return its name and module."""
    if not isinstance(spec, Mapping) or "name" not in spec or "encoder" not in spec:
        raise ValueError(f"modality {index} must be a mapping with 'name' and 'encoder' keys, got {spec!r}.")
    kind = spec["encoder"]
    if kind not in ENCODERS:
        raise ValueError(f"modality {spec['name']!r}: encoder must be one of {sorted(ENCODERS)}, got {kind!r}.")
    kwargs = {key: value for key, value in spec.items() if key not in ("name", "encoder")}
    try:
        encoder = ENCODERS[kind](**kwargs)
    except TypeError as error:
        raise ValueError(f"modality {spec['name']!r}: invalid arguments for the {kind!r} encoder: {error}") from error
    return str(spec["name"]), encoder
