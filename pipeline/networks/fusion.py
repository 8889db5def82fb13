"""Masked multimodal fusion transformer: the classifier that DyMo selects modalities for.

Shape letters: ``B`` batch, ``M`` modalities, ``N_j`` tokens of modality ``j``, ``N = sum N_j``,
``D`` model width, ``P`` projection (embedding) width, ``K`` classes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
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
       per-modality LayerNorm. A row's tokens do not depend on which other modalities are used,
       so one call serves every subset of modalities. Given a presence mask, it skips absent rows.
    2. :meth:`fuse`: replace the tokens of unused modalities by zeros, add a modality embedding,
       prepend one CLS token and add a positional embedding. Then run pre-norm transformer blocks
       in which no token attends to an unused modality; the CLS token is never masked. Returns
       the CLS output.
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
        if isinstance(modalities, (str, Mapping)) or not isinstance(modalities, Sequence):
            raise TypeError(
                f"modalities must be a list of modality specifications (one mapping each), got {type(modalities).__name__}."
            )
        check_num_modalities(len(modalities))
        modalities = [_plain_value(spec, f"modalities[{index}]") for index, spec in enumerate(modalities)]
        num_classes, dim, depth, heads, projection_dim, mlp_ratio, dropout = (
            _plain_value(value, name)
            for name, value in (
                ("num_classes", num_classes),
                ("dim", dim),
                ("depth", depth),
                ("heads", heads),
                ("projection_dim", projection_dim),
                ("mlp_ratio", mlp_ratio),
                ("dropout", dropout),
            )
        )
        for name, value in (("num_classes", num_classes), ("dim", dim), ("projection_dim", projection_dim), ("heads", heads), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "depth" else 1):
                raise ValueError(f"{name} must be a {'non-negative' if name == 'depth' else 'positive'} int, got {value!r}.")
        for name, value in (("mlp_ratio", mlp_ratio), ("dropout", dropout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}.")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
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

    def encode(self, inputs: Mapping[str, ModalityInput], present_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encode every modality once and join the tokens.

        Args:
            inputs: per modality name, a tensor (passed to the encoder as its only argument) or a
                mapping of keyword arguments (the tabular tokeniser's ``categorical``,
                ``continuous``, ``missing_values``). Absent modalities still need a placeholder
                input of the right shape.
            present_mask: ``(B, M)`` bool, optional. When given, each encoder runs only on the rows
                where its modality is present and the other rows get zero tokens. So placeholders
                never reach an encoder: they cannot shift BatchNorm statistics in training, and a
                NaN placeholder cannot turn gradients into NaN.

        Returns:
            Tokens ``(B, N, D)``, modality ``j`` occupying the positions where
            ``token_modality == j``.
        """
        missing = [name for name in self.modality_names if name not in inputs]
        if missing:
            raise KeyError(f"inputs has no entry for modalities {missing}; it has {sorted(inputs)}.")
        batch_size = _check_batch_sizes({name: inputs[name] for name in self.modality_names})
        if present_mask is not None:
            self._check_mask(present_mask, batch_size)

        tokens = []
        for index, name in enumerate(self.modality_names):
            rows = None if present_mask is None else present_mask[:, index]
            tokens.append(self._encode_rows(name, inputs[name], rows, batch_size))
        return torch.cat(tokens, dim=1)

    def encode_modality(self, name: str, value: ModalityInput) -> torch.Tensor:
        """Encode one modality's input into its projected tokens ``(B, N_j, D)``."""
        if name not in self.modality_names:
            raise KeyError(f"unknown modality {name!r}; the network has {self.modality_names}.")
        index = self.modality_names.index(name)
        encoder = self.encoders[index]
        try:
            encoded = encoder(**value) if isinstance(value, Mapping) else encoder(value)  # (B, N_j, F_j)
        except (RuntimeError, ValueError, TypeError) as error:
            raise ValueError(
                f"modality {name!r}: the {self.config['modalities'][index]['encoder']!r} encoder failed on an input of "
                f"{_describe_input(value)}: {error}"
            ) from error
        return self.token_projections[index](encoded)

    def _encode_rows(self, name: str, value: ModalityInput, rows: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """Encode ``value`` on the ``rows`` ``(B,)`` that are True and return zero tokens ``(B, N_j, D)`` elsewhere."""
        if rows is None or bool(rows.all()):
            return self.encode_modality(name, value)

        index = self.modality_names.index(name)
        weight = self.token_projections[index][0].weight
        tokens = weight.new_zeros(batch_size, self.token_counts[index], weight.shape[0])
        if bool(rows.any()):
            tokens[rows] = self.encode_modality(name, _select_rows(value, rows))
        return tokens

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
        """Run all three stages; return logits ``(B, K)`` and embedding ``(B, P)``.

        Encoders run only on the rows where their modality is present, so placeholders of absent
        modalities never reach them.
        """
        return self.classify(self.fuse(self.encode(inputs, present_mask), present_mask))

    def _check_fusion_inputs(self, tokens: torch.Tensor, present_mask: torch.Tensor) -> None:
        num_tokens = int(self.token_modality.numel())
        dim = self.config["dim"]
        if tokens.dim() != 3 or tokens.shape[1] != num_tokens or tokens.shape[2] != dim:
            raise ValueError(f"tokens must have shape (B, {num_tokens}, {dim}), got {tuple(tokens.shape)}.")
        if tokens.dtype != self.position_embedding.dtype:
            raise TypeError(
                f"tokens have dtype {tokens.dtype} but the network's weights are {self.position_embedding.dtype}; "
                "convert one to match the other."
            )
        self._check_mask(present_mask, tokens.shape[0])

    def _check_mask(self, present_mask: torch.Tensor, batch_size: int) -> None:
        if not isinstance(present_mask, torch.Tensor) or present_mask.dtype != torch.bool:
            kind = present_mask.dtype if isinstance(present_mask, torch.Tensor) else type(present_mask).__name__
            raise TypeError(f"present_mask must be a bool tensor, got {kind}.")
        if tuple(present_mask.shape) != (batch_size, self.num_modalities):
            raise ValueError(
                f"present_mask must have shape ({batch_size}, {self.num_modalities}) for "
                f"modalities {self.modality_names}, got {tuple(present_mask.shape)}."
            )


def _batch_sizes_of(name: str, value: ModalityInput) -> dict[str, int | None]:
    """Return the first dimension of the input, or of each tensor in a mapping input, keyed by a label."""
    if isinstance(value, torch.Tensor):
        return {name: value.shape[0] if value.dim() else None}
    if isinstance(value, Mapping):
        return {
            f"{name}.{key}": item.shape[0] if item.dim() else None
            for key, item in value.items()
            if isinstance(item, torch.Tensor)
        }
    raise TypeError(
        f"the input of modality {name!r} must be a tensor or a mapping of tensors, got {type(value).__name__}; "
        "convert arrays with torch.as_tensor."
    )


def _check_batch_sizes(inputs: Mapping[str, ModalityInput]) -> int:
    """Return the common batch size of the modality inputs, or raise ``ValueError`` listing them."""
    sizes: dict[str, int | None] = {}
    for name, value in inputs.items():
        sizes.update(_batch_sizes_of(name, value))
    distinct = set(sizes.values())
    if len(distinct) != 1 or None in distinct:
        raise ValueError(f"every modality input must have the same batch size B in dimension 0, got {sizes}.")
    return distinct.pop()


def _select_rows(value: ModalityInput, rows: torch.Tensor) -> ModalityInput:
    if isinstance(value, torch.Tensor):
        return value[rows]
    return {key: item[rows] if isinstance(item, torch.Tensor) else item for key, item in value.items()}


def _describe_input(value: ModalityInput) -> str:
    if isinstance(value, torch.Tensor):
        return f"shape {tuple(value.shape)} and dtype {value.dtype}"
    parts = [
        f"{key} {tuple(item.shape)} {item.dtype}" if isinstance(item, torch.Tensor) else f"{key} {type(item).__name__}"
        for key, item in value.items()
    ]
    return "fields " + ", ".join(parts)


def _build_encoder(index: int, spec: Mapping[str, Any]) -> tuple[str, nn.Module]:
    """Build the encoder of modality ``index`` from its specification; return its name and module."""
    if not isinstance(spec, Mapping) or "name" not in spec or "encoder" not in spec:
        raise ValueError(f"modality {index} must be a mapping with 'name' and 'encoder' keys, got {spec!r}.")
    if not isinstance(spec["name"], str) or not spec["name"]:
        raise ValueError(f"modality {index}: 'name' must be a non-empty string, got {spec['name']!r}.")
    kind = spec["encoder"]
    if kind not in ENCODERS:
        raise ValueError(f"modality {spec['name']!r}: encoder must be one of {sorted(ENCODERS)}, got {kind!r}.")
    kwargs = {key: value for key, value in spec.items() if key not in ("name", "encoder")}
    try:
        encoder = ENCODERS[kind](**kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"modality {spec['name']!r}: invalid arguments for the {kind!r} encoder: {error}") from error
    return spec["name"], encoder


def _plain_value(value: Any, path: str) -> Any:
    """Return ``value`` as plain JSON-like data (numpy scalars become Python numbers), or raise ``TypeError``.

    The configuration is stored in checkpoints and hashed into the fingerprint, so it must
    survive ``json.dumps`` and ``torch.load(weights_only=True)``.
    """
    # numpy.float64 subclasses float, so numpy scalars are converted before the plain types pass.
    if isinstance(value, np.generic) and isinstance(value.item(), (bool, int, float, str)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain_value(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        return {key: _plain_value(item, f"{path}.{key}") for key, item in value.items()}
    raise TypeError(
        f"{path} must be plain data (numbers, strings, lists, dicts with string keys), got {type(value).__name__} {value!r}."
    )
