"""Tabular tokeniser: one token per clinical column, a learned mask token for missing values.

Shape letters: ``B`` batch, ``C_cat`` categorical columns, ``C_num`` continuous columns,
``N = C_cat + C_num`` tokens, ``F`` token width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import TransformerBlock
from torch import nn


class TabularTokenizer(nn.Module):
    """Turn a table row into one token per column and mix them with a small transformer.

    Categorical column ``i`` has its own embedding table with ``categorical_cardinalities[i]``
    rows; continuous column ``j`` is mapped by its own affine map ``x * w_j + b_j``. A value marked
    missing is replaced by a learned mask token before a learned column embedding is added, so the
    transformer receives which column is missing but never the placeholder value.

    Forward inputs, categorical columns first in every tensor that spans all columns:

    - ``categorical``: ``(B, C_cat)`` integer levels in ``[0, cardinality)``; entries marked
      missing may hold any value (``-1`` is common). An observed level outside that range raises
      ``ValueError``.
    - ``continuous``: ``(B, C_num)`` float values, already normalised; missing entries may be NaN,
      and an observed non-finite value raises ``ValueError``.
    - ``missing_values``: ``(B, N)`` bool, ``True`` where the value is absent. ``None`` means
      every value is observed.

    Output: tokens ``(B, N, F)``.

    Args:
        categorical_cardinalities: number of levels of each categorical column.
        num_continuous: number of continuous columns.
        dim: token width ``F``.
        depth: transformer blocks after tokenisation (pre-norm, MONAI ``TransformerBlock``).
        heads: attention heads; must divide ``dim``.
        mlp_ratio: hidden width of each block's MLP as a multiple of ``dim``.
        dropout: dropout rate inside the transformer blocks.
    """

    def __init__(
        self,
        categorical_cardinalities: Sequence[int] = (),
        num_continuous: int = 0,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        cardinalities = list(categorical_cardinalities)
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in cardinalities):
            raise ValueError(f"every categorical cardinality must be an int of at least 1, got {cardinalities}.")
        for name, value, minimum in (("dim", dim, 1), ("heads", heads, 1), ("depth", depth, 0), ("num_continuous", num_continuous, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int of at least {minimum}, got {value!r}.")
        if not cardinalities and num_continuous == 0:
            raise ValueError("TabularTokenizer needs at least one categorical or continuous column.")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be a positive number, got {mlp_ratio!r}.")
        if dim % heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads}).")

        self.num_categorical = len(cardinalities)
        self.num_continuous = num_continuous
        self.num_tokens = self.num_categorical + num_continuous
        self.out_features = dim

        # One shared table; column i reads rows offset[i] .. offset[i] + cardinality[i] - 1.
        offsets = torch.tensor([0] + cardinalities, dtype=torch.long).cumsum(0)[:-1]
        self.register_buffer("category_offsets", offsets, persistent=False)
        self.register_buffer("category_max", torch.tensor(cardinalities, dtype=torch.long) - 1, persistent=False)
        self.category_embedding = nn.Embedding(max(sum(cardinalities), 1), dim)
        self.continuous_weight = nn.Parameter(torch.randn(num_continuous, dim) * 0.02)
        self.continuous_bias = nn.Parameter(torch.zeros(num_continuous, dim))

        self.mask_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.column_embedding = nn.Parameter(torch.randn(self.num_tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size=dim, mlp_dim=int(dim * mlp_ratio), num_heads=heads, dropout_rate=dropout)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        categorical: torch.Tensor | None = None,
        continuous: torch.Tensor | None = None,
        missing_values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tokenise one batch of rows; see the class docstring for the input shapes."""
        batch_size = self._check_inputs(categorical, continuous, missing_values)
        tokens = []

        if self.num_categorical:
            # Clamp so that placeholders of missing entries index a valid row; those tokens are
            # replaced by the mask token below.
            levels = torch.minimum(categorical.long().clamp(min=0), self.category_max)
            tokens.append(self.category_embedding(levels + self.category_offsets))  # (B, C_cat, F)

        if self.num_continuous:
            values = torch.nan_to_num(continuous.to(self.continuous_weight.dtype), nan=0.0, posinf=0.0, neginf=0.0)
            tokens.append(values[..., None] * self.continuous_weight + self.continuous_bias)  # (B, C_num, F)

        x = torch.cat(tokens, dim=1)  # (B, N, F)
        if missing_values is not None:
            x = torch.where(missing_values[..., None], self.mask_token.to(x.dtype), x)
        x = x + self.column_embedding

        for block in self.blocks:
            x = block(x)
        return self.norm(x).reshape(batch_size, self.num_tokens, self.out_features)

    def _check_inputs(
        self,
        categorical: torch.Tensor | None,
        continuous: torch.Tensor | None,
        missing_values: torch.Tensor | None,
    ) -> int:
        """Return the batch size after checking the input shapes against the configured columns."""
        for name, value, columns in (
            ("categorical", categorical, self.num_categorical),
            ("continuous", continuous, self.num_continuous),
        ):
            if columns and (value is None or value.dim() != 2 or value.shape[1] != columns):
                shape = None if value is None else tuple(value.shape)
                raise ValueError(f"TabularTokenizer expects {name} of shape (B, {columns}), got {shape}.")
        reference = categorical if self.num_categorical else continuous
        batch_size = reference.shape[0]

        if missing_values is not None:
            if missing_values.dtype != torch.bool:
                raise TypeError(f"missing_values must be a bool tensor, got dtype {missing_values.dtype}.")
            if tuple(missing_values.shape) != (batch_size, self.num_tokens):
                raise ValueError(
                    f"missing_values must have shape ({batch_size}, {self.num_tokens}), got {tuple(missing_values.shape)}."
                )
        observed = (
            torch.ones(batch_size, self.num_tokens, dtype=torch.bool, device=reference.device)
            if missing_values is None
            else ~missing_values
        )
        if self.num_categorical:
            self._check_levels(categorical, observed[:, : self.num_categorical])
        if self.num_continuous:
            self._check_continuous(continuous, observed[:, self.num_categorical :])
        return batch_size

    def _check_levels(self, categorical: torch.Tensor, observed: torch.Tensor) -> None:
        """Reject non-integer levels and observed levels outside ``[0, cardinality)``."""
        if categorical.dtype.is_floating_point or categorical.dtype.is_complex or categorical.dtype == torch.bool:
            raise TypeError(
                f"categorical must be an integer tensor of level indices, got dtype {categorical.dtype}. "
                "Encode each category as its index in the column's list of levels."
            )
        invalid = observed & ((categorical < 0) | (categorical > self.category_max.to(categorical.device)))
        if bool(invalid.any()):
            row, column = invalid.nonzero()[0].tolist()
            raise ValueError(
                f"categorical column {column} has level {int(categorical[row, column])} in row {row}, outside "
                f"[0, {int(self.category_max[column]) + 1}). Mark the value in missing_values if it is absent, "
                "or refit the column's levels."
            )

    def _check_continuous(self, continuous: torch.Tensor, observed: torch.Tensor) -> None:
        """Reject non-finite values that ``missing_values`` does not mark as absent."""
        invalid = observed & ~torch.isfinite(continuous)
        if bool(invalid.any()):
            row, column = invalid.nonzero()[0].tolist()
            raise ValueError(
                f"continuous column {column} is {float(continuous[row, column])} in row {row} but not marked in "
                f"missing_values (its column {self.num_categorical + column} there, after the categorical columns). "
                "Mark absent values there."
            )
