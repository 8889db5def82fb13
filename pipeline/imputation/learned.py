"""Learned tabular imputer: a small network that predicts masked table values.

Shape letters: ``n`` rows (subjects), ``C_cat`` categorical columns, ``C_num`` continuous columns,
``N = C_cat + C_num`` columns, ``N_img`` image tokens, ``D`` token width, ``B`` batch.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from torch import nn

from pipeline.data.tabular import EncodedTable
from pipeline.imputation.base import (
    RecoveredTable,
    TabularImputer,
    check_fitted_columns,
    check_table,
)
from pipeline.imputation.torch_files import read_checked, rebuild_checked, write_checked

logger = logging.getLogger(__name__)

LEARNED_IMPUTER_FORMAT = "pipeline.imputation.LearnedTabularImputer"
LEARNED_IMPUTER_VERSION = 1

# Rows per forward pass in transform. It bounds memory and does not change the results.
_INFERENCE_BATCH = 1024


class TabularImputationNetwork(nn.Module):
    """MLP that reads a partly observed row and predicts every column of it.

    The input of a row concatenates a one-hot vector per categorical column (all zeros where the
    value is missing), each continuous value (0 where missing) and one missing-value indicator
    per column. When ``image_features > 0``, the pooled image tokens (zeros when the image is
    absent) and an image-present flag follow.

    Outputs: one logit vector ``(B, cardinality_i)`` per categorical column and the predicted
    standardised continuous values ``(B, C_num)``.

    Args:
        cardinalities: number of levels of each categorical column.
        num_continuous: continuous columns ``C_num``.
        image_features: width of the pooled image input; 0 for a table-only network.
        hidden: width of the hidden layers.
        depth: hidden layers, at least 1.
        dropout: dropout rate after each hidden layer.
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        num_continuous: int,
        image_features: int = 0,
        hidden: int = 128,
        depth: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.cardinalities = [int(value) for value in cardinalities]
        self.num_continuous = int(num_continuous)
        self.image_features = int(image_features)
        num_columns = len(self.cardinalities) + self.num_continuous
        width = sum(self.cardinalities) + self.num_continuous + num_columns
        if self.image_features:
            width += self.image_features + 1

        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.categorical_heads = nn.ModuleList(nn.Linear(hidden, cardinality) for cardinality in self.cardinalities)
        self.continuous_head = nn.Linear(hidden, self.num_continuous) if self.num_continuous else None

    def forward(
        self,
        categorical: torch.Tensor,
        continuous: torch.Tensor,
        missing_values: torch.Tensor,
        image: torch.Tensor | None = None,
        image_present: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Predict every column from the observed ones.

        Args:
            categorical: ``(B, C_cat)`` int64 levels; entries marked missing may contain anything.
            continuous: ``(B, C_num)`` float32 standardised values; entries marked missing may be NaN.
            missing_values: ``(B, N)`` bool, ``True`` where the value is hidden from the network.
            image: ``(B, image_features)`` pooled image tokens, read only where ``image_present``.
            image_present: ``(B,)`` bool.

        Returns:
            The logits of each categorical column, ``(B, cardinality_i)`` each, and the continuous
            predictions ``(B, C_num)``.
        """
        num_categorical = len(self.cardinalities)
        observed = ~missing_values
        parts = []
        for index, cardinality in enumerate(self.cardinalities):
            levels = categorical[:, index].clamp(0, cardinality - 1)
            one_hot = F.one_hot(levels, cardinality).float()  # (B, cardinality)
            parts.append(one_hot * observed[:, index, None])
        values = torch.where(observed[:, num_categorical:], continuous, torch.zeros_like(continuous))
        parts += [values, missing_values.float()]

        if self.image_features:
            flag = image_present[:, None]
            parts += [torch.where(flag, image, torch.zeros_like(image)), flag.float()]

        hidden = self.body(torch.cat(parts, dim=1))
        logits = [head(hidden) for head in self.categorical_heads]
        if self.continuous_head is None:
            return logits, hidden.new_zeros(hidden.shape[0], 0)
        return logits, self.continuous_head(hidden)


class LearnedTabularImputer(TabularImputer):
    """Recover missing table values with a network trained to fill randomly hidden values.

    Training hides observed values of the training rows and teaches
    :class:`TabularImputationNetwork` to recover them. Each row draws its own hiding rate from the
    ``mask_probability`` range, so the network meets rows from almost complete to almost empty, as
    it does at test time across missing rates. With one fixed rate of 0.25 it lost to mean/mode
    filling when 90 % of a row was missing (measured in ``docs/imputation.md``). The loss is
    cross-entropy over the levels for a categorical column and squared error on the standardised
    value for a continuous column, averaged over the hidden values.

    When image tokens are given to :meth:`fit`, their mean over the tokens is a second input. The
    image of a present row is hidden with probability ``image_drop_probability``, so the network
    also learns to impute subjects without an image.

    A fraction ``validation_fraction`` of the training rows is held out for early stopping, with
    a hidden-value mask drawn once. The weights of the epoch with the lowest validation loss are
    kept.

    :meth:`transform` fills every missing value of a column that was observed in at least one
    training row. A categorical value gets the level with the highest logit, so always one of the
    column's levels, and a continuous value the regression output, in standardised units. A column
    that no training row observed is filled with level 0 or the standardised value 0, marked
    recovered, and reported by a warning in :meth:`fit`.

    All randomness (initial weights, row split, hidden values, dropout, batch order) comes from
    ``random_state``, so the same seed and data give the same values on the same machine and
    torch version. Training runs on the CPU.

    Args:
        hidden: width of the hidden layers.
        depth: hidden layers.
        dropout: dropout rate after each hidden layer.
        mask_probability: ``(low, high)``: each training row hides its observed values with a
            rate drawn uniformly from this range, within (0, 1). A single number is a fixed rate.
        image_drop_probability: probability of hiding a present image during training, in [0, 1).
        max_epochs: upper bound on training epochs.
        batch_size: rows per optimisation step.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        validation_fraction: fraction of the training rows held out for early stopping, in
            [0, 1); 0 trains for ``max_epochs`` and keeps the last weights.
        patience: epochs without a lower validation loss before training stops.
        random_state: seed (int), ``numpy.random.RandomState`` or ``None`` for an unseeded run.

    Attributes:
        network_: the trained :class:`TabularImputationNetwork`, in eval mode.
        cardinalities_: levels of each categorical column, as given to :meth:`fit`.
        columns_: the column names of the training table.
        image_features_: width of the pooled image input, 0 when fitted without image tokens.
        image_mean_, image_scale_: ``(D,)`` statistics that standardise the pooled image tokens.
        trainable_columns_: ``(N,)`` bool, columns observed in at least one training row.
        best_epoch_: epoch whose weights were kept, 0 for the initial weights.
        history_: per epoch, ``{"train_loss": ..., "validation_loss": ...}``.
    """

    def __init__(
        self,
        hidden: int = 128,
        depth: int = 2,
        dropout: float = 0.1,
        mask_probability: float | tuple[float, float] = (0.05, 0.95),
        image_drop_probability: float = 0.25,
        max_epochs: int = 200,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        validation_fraction: float = 0.2,
        patience: int = 15,
        random_state: int | np.random.RandomState | None = 0,
    ) -> None:
        self.hidden = hidden
        self.depth = depth
        self.dropout = dropout
        self.mask_probability = mask_probability
        self.image_drop_probability = image_drop_probability
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.random_state = random_state

    def fit(
        self,
        table: EncodedTable,
        cardinalities: Sequence[int],
        image_tokens: np.ndarray | None = None,
        image_present: np.ndarray | None = None,
    ) -> LearnedTabularImputer:
        """Train the network on the rows of ``table`` (the training split) and return ``self``.

        Args:
            table: encoded training rows with their missing values.
            cardinalities: ``C_cat`` level counts, as ``TabularEncoder.cardinalities``.
            image_tokens: optional ``(n, N_img, D)`` image tokens of the same rows; when given,
                :meth:`transform` uses the image of every row that has one.
            image_present: ``(n,)`` bool, ``True`` where the row has an image; required with
                ``image_tokens``.

        Raises:
            ValueError: for an inconsistent table, a level index outside its cardinality,
                image inputs of the wrong shape, or a parameter outside its range.
        """
        self._check_parameters()
        check_table(table, cardinalities)
        if len(table.categorical) < 2:
            raise ValueError(f"LearnedTabularImputer needs at least 2 training rows, got {len(table.categorical)}.")
        image, has_image = _pooled_image(image_tokens, image_present, len(table.categorical), None)

        self.cardinalities_ = tuple(int(value) for value in cardinalities)
        self.columns_ = tuple(table.columns)
        self.trainable_columns_ = ~table.missing_values.all(axis=0)
        if not self.trainable_columns_.all():
            untrained = [name for name, ok in zip(self.columns_, self.trainable_columns_) if not ok]
            logger.warning(
                "columns %s are missing in every training row, so the imputer fills them with level 0 or the "
                "standardised mean 0 instead of a prediction.",
                untrained,
            )
        self.image_features_ = 0 if image is None else image.shape[1]
        self.image_mean_, self.image_scale_ = _image_statistics(image, has_image)

        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._train(_as_tensors(table, self._scaled(image), has_image, self.image_features_))
        return self

    def transform(
        self,
        table: EncodedTable,
        image_tokens: np.ndarray | None = None,
        image_present: np.ndarray | None = None,
    ) -> RecoveredTable:
        """Fill in every missing value of ``table``; observed values are returned unchanged.

        Image inputs are read only when the imputer was fitted with image tokens. Without them,
        every row is treated as having no image.

        Raises:
            NotFittedError: if :meth:`fit` has not been called.
            ValueError: if the columns differ from those seen in :meth:`fit`, a level index is
                outside its cardinality, or the image inputs have the wrong shape.
        """
        check_is_fitted(self, "network_")
        check_fitted_columns(self, table)
        if tuple(table.columns) != self.columns_:
            raise ValueError(
                f"table has columns {list(table.columns)}, but the imputer was fitted on {list(self.columns_)}."
            )
        image, has_image = _pooled_image(image_tokens, image_present, len(table.categorical), self.image_features_)
        if self.image_features_ == 0 and image is not None:
            logger.debug("the imputer was fitted without image tokens, so the given image tokens are ignored.")
            image, has_image = None, None

        tensors = _as_tensors(table, self._scaled(image), has_image, self.image_features_)
        logits, predicted = _predict(self.network_, tensors)
        return _completed(table, logits, predicted, self.trainable_columns_)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the parameters, fitted state and weights to ``path`` with ``torch.save``; return the path.

        The file contains only plain Python values and tensors, so :meth:`load` reads it with
        ``torch.load(weights_only=True)``.
        """
        check_is_fitted(self, "network_")
        path = Path(path)
        contents = {
            "format": LEARNED_IMPUTER_FORMAT,
            "version": LEARNED_IMPUTER_VERSION,
            "params": _plain_params(self.get_params()),
            "cardinalities": list(self.cardinalities_),
            "columns": list(self.columns_),
            "num_continuous": self.network_.num_continuous,
            "trainable_columns": torch.from_numpy(self.trainable_columns_.copy()),
            "image_features": self.image_features_,
            "image_mean": torch.from_numpy(self.image_mean_.copy()),
            "image_scale": torch.from_numpy(self.image_scale_.copy()),
            "best_epoch": self.best_epoch_,
            "history": self.history_,
            "state_dict": {name: value.detach().cpu() for name, value in self.network_.state_dict().items()},
        }
        write_checked(contents, path)
        logger.info("saved the learned tabular imputer to %s.", path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LearnedTabularImputer:
        """Rebuild a fitted imputer from a file written by :meth:`save`.

        Raises:
            ValueError: if the file is not a saved learned tabular imputer of this version.
        """
        contents = read_checked(path, LEARNED_IMPUTER_FORMAT, LEARNED_IMPUTER_VERSION)

        def rebuild() -> LearnedTabularImputer:
            imputer = cls(**contents["params"])
            imputer.cardinalities_ = tuple(contents["cardinalities"])
            imputer.columns_ = tuple(contents["columns"])
            imputer.trainable_columns_ = contents["trainable_columns"].numpy().astype(bool)
            imputer.image_features_ = int(contents["image_features"])
            imputer.image_mean_ = contents["image_mean"].numpy()
            imputer.image_scale_ = contents["image_scale"].numpy()
            imputer.best_epoch_ = int(contents["best_epoch"])
            imputer.history_ = list(contents["history"])
            network = imputer._build_network(int(contents["num_continuous"]))
            network.load_state_dict(contents["state_dict"])
            imputer.network_ = network.eval()
            return imputer

        return rebuild_checked(path, rebuild)

    def _check_parameters(self) -> None:
        """Raise ``ValueError`` or ``TypeError`` for a constructor argument outside its range."""
        for name in ("hidden", "depth", "max_epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        rates = _mask_rate_range(self.mask_probability)
        if not 0.0 < rates[0] <= rates[1] < 1.0:
            raise ValueError(f"mask_probability must lie in (0, 1) with low <= high, got {self.mask_probability!r}.")
        ranges = {
            "dropout": (0.0, 1.0, False),
            "image_drop_probability": (0.0, 1.0, False),
            "validation_fraction": (0.0, 1.0, False),
        }
        for name, (low, high, open_low) in ranges.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}.")
            if not (low < value < high if open_low else low <= value < high):
                bracket = "(" if open_low else "["
                raise ValueError(f"{name} must be in {bracket}{low}, {high}), got {value}.")
        for name in ("learning_rate", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}.")

    def _build_network(self, num_continuous: int) -> TabularImputationNetwork:
        return TabularImputationNetwork(
            self.cardinalities_,
            num_continuous,
            image_features=self.image_features_,
            hidden=self.hidden,
            depth=self.depth,
            dropout=self.dropout,
        )

    def _scaled(self, image: np.ndarray | None) -> np.ndarray | None:
        """Standardise pooled image tokens ``(n, D)`` with the training statistics."""
        if image is None or self.image_features_ == 0:
            return None
        return ((image - self.image_mean_) / self.image_scale_).astype(np.float32)

    def _train(self, data: dict[str, torch.Tensor]) -> None:
        """Split ``data`` into training and validation rows and train :attr:`network_` on it."""
        num_rows = data["missing_values"].shape[0]
        network = self._build_network(data["continuous"].shape[1])

        order = torch.randperm(num_rows)
        num_validation = int(round(self.validation_fraction * num_rows))
        if self.validation_fraction > 0:
            num_validation = min(max(num_validation, 1), num_rows - 1)
        validation_rows, training_rows = order[:num_validation], order[num_validation:]
        training = _select_rows(data, training_rows)
        validation = _select_rows(data, validation_rows)
        validation_hidden = _hidden_values(validation["missing_values"], self.mask_probability)

        def batch_loss(rows: torch.Tensor) -> torch.Tensor:
            batch = _select_rows(training, rows)
            hidden = _hidden_values(batch["missing_values"], self.mask_probability)
            if batch["image_present"] is not None and self.image_drop_probability > 0:
                dropped = torch.rand(len(rows)) < self.image_drop_probability
                batch["image_present"] = batch["image_present"] & ~dropped
            return _masked_loss(network, batch, hidden)

        def validation_loss() -> float:
            return float(_masked_loss(network, validation, validation_hidden))

        self.best_epoch_, self.history_ = train_with_early_stopping(
            network,
            batch_loss,
            validation_loss if num_validation else None,
            num_rows=len(training_rows),
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            patience=self.patience,
            description="learned tabular imputer",
        )
        self.network_ = network.eval()


def train_with_early_stopping(
    network: nn.Module,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    validation_loss: Callable[[], float] | None,
    *,
    num_rows: int,
    max_epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    patience: int,
    description: str,
) -> tuple[int, list[dict[str, float]]]:
    """Train ``network`` with AdamW and keep the weights with the lowest validation loss.

    Each epoch visits the ``num_rows`` training rows once in a random order drawn from the global
    torch generator, so callers seed it. ``batch_loss(rows)`` returns the loss of the training rows
    ``rows`` ``(B,)``. ``validation_loss()`` is called in eval mode without gradients, once before
    training (epoch 0, the initial weights) and after every epoch. Training stops after
    ``patience`` epochs without a lower validation loss. Without a validation loss, every epoch
    runs and the last weights are kept.

    Returns:
        The epoch whose weights ``network`` holds on return (0 for the initial weights), and the
        per-epoch history ``[{"train_loss": ..., "validation_loss": ...}]`` for epochs 1, 2, ...
        (validation ``nan`` when there is none).
    """
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=weight_decay)
    best_loss, best_epoch = _evaluate(network, validation_loss), 0
    best_state = copy.deepcopy(network.state_dict())
    history: list[dict[str, float]] = []

    for epoch in range(1, max_epochs + 1):
        network.train()
        total, batches = 0.0, 0
        for rows in torch.randperm(num_rows).split(batch_size):
            loss = batch_loss(rows)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1

        checked = _evaluate(network, validation_loss)
        history.append({"train_loss": total / max(batches, 1), "validation_loss": checked})

        if validation_loss is None:
            best_epoch = epoch
        elif checked < best_loss:
            best_loss, best_epoch = checked, epoch
            best_state = copy.deepcopy(network.state_dict())
        elif epoch - best_epoch >= patience:
            logger.debug("%s: stopping after epoch %d, no improvement since epoch %d.", description, epoch, best_epoch)
            break

    if validation_loss is not None:
        network.load_state_dict(best_state)
    network.eval()
    logger.info(
        "trained the %s for %d epochs; kept epoch %d (validation loss %.4g).",
        description,
        len(history),
        best_epoch,
        best_loss,
    )
    return best_epoch, history


def _evaluate(network: nn.Module, validation_loss: Callable[[], float] | None) -> float:
    """Return ``validation_loss()`` computed in eval mode without gradients, or ``nan`` without one."""
    if validation_loss is None:
        return float("nan")
    network.eval()
    with torch.no_grad():
        return float(validation_loss())


def _pooled_image(
    image_tokens: np.ndarray | None, image_present: np.ndarray | None, num_rows: int, expected_width: int | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Average the image tokens over the token axis to ``(n, D)`` and return them with the flags ``(n,)``.

    Rows without an image may contain anything, NaN included, and their pooled tokens are set to 0.
    """
    if image_tokens is None and image_present is None:
        return None, None
    if image_tokens is None or image_present is None:
        raise ValueError("image_tokens and image_present must be given together, got only one of them.")
    tokens = np.asarray(image_tokens, dtype=np.float32)
    present = np.asarray(image_present)
    if tokens.ndim != 3 or tokens.shape[0] != num_rows:
        raise ValueError(f"image_tokens must have shape (n={num_rows}, N_img, D), got {tokens.shape}.")
    if present.dtype != bool or present.shape != (num_rows,):
        raise ValueError(
            f"image_present must be a bool array of shape ({num_rows},), got {present.dtype} {present.shape}."
        )
    if expected_width and tokens.shape[2] != expected_width:
        raise ValueError(f"image_tokens must have width D={expected_width} as in fit, got {tokens.shape[2]}.")

    pooled = np.zeros((num_rows, tokens.shape[2]), dtype=np.float32)
    pooled[present] = tokens[present].mean(axis=1)
    if not np.isfinite(pooled).all():
        raise ValueError("image_tokens contain NaN or infinite values in rows where image_present is True.")
    return pooled, present


def _image_statistics(image: np.ndarray | None, present: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean and standard deviation ``(D,)`` of the pooled tokens of rows with an image.

    A feature with zero spread, or no row with an image, is scaled by 1.
    """
    if image is None or not present.any():
        width = 0 if image is None else image.shape[1]
        return np.zeros(width, dtype=np.float32), np.ones(width, dtype=np.float32)
    rows = image[present]
    scale = rows.std(axis=0)
    return rows.mean(axis=0).astype(np.float32), np.where(scale > 0, scale, 1.0).astype(np.float32)


def _as_tensors(
    table: EncodedTable, image: np.ndarray | None, present: np.ndarray | None, image_features: int
) -> dict[str, Any]:
    """Convert a table and its pooled image to the network's inputs.

    A network with an image input gets zeros and ``False`` flags where no image was given; a
    table-only network gets ``None`` for both image entries.
    """
    tensors: dict[str, Any] = table.to_tensors()
    tensors["continuous"] = torch.nan_to_num(tensors["continuous"], nan=0.0)
    num_rows = table.missing_values.shape[0]
    if image_features == 0:
        tensors["image"], tensors["image_present"] = None, None
    elif image is None:
        tensors["image"] = torch.zeros(num_rows, image_features)
        tensors["image_present"] = torch.zeros(num_rows, dtype=torch.bool)
    else:
        tensors["image"] = torch.from_numpy(image)
        tensors["image_present"] = torch.from_numpy(present.copy())
    return tensors


def _select_rows(tensors: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
    """Index every tensor of ``tensors`` with ``rows`` ``(B,)``; ``None`` entries stay ``None``."""
    return {name: None if value is None else value[rows] for name, value in tensors.items()}


def _mask_rate_range(mask_probability: Any) -> tuple[float, float]:
    """Return ``(low, high)`` from a fixed rate or a pair, or raise ``TypeError``."""
    if isinstance(mask_probability, (int, float)) and not isinstance(mask_probability, bool):
        return float(mask_probability), float(mask_probability)
    if (
        isinstance(mask_probability, (list, tuple))
        and len(mask_probability) == 2
        and all(isinstance(rate, (int, float)) and not isinstance(rate, bool) for rate in mask_probability)
    ):
        return float(mask_probability[0]), float(mask_probability[1])
    raise TypeError(f"mask_probability must be a number or a (low, high) pair, got {mask_probability!r}.")


def _hidden_values(missing_values: torch.Tensor, probability: float | tuple[float, float]) -> torch.Tensor:
    """Draw the observed values to hide: ``(n, N)`` bool, at a rate drawn per row from ``probability``."""
    low, high = _mask_rate_range(probability)
    rates = low + (high - low) * torch.rand(missing_values.shape[0], 1)  # (n, 1)
    return ~missing_values & (torch.rand(missing_values.shape) < rates)


def _masked_loss(network: TabularImputationNetwork, batch: dict[str, Any], hidden: torch.Tensor) -> torch.Tensor:
    """Return the loss on the ``hidden`` values ``(B, N)``, averaged over them; 0 when none is hidden.

    Categorical values contribute cross-entropy and continuous values squared error, so a
    hidden value counts once whatever its kind.
    """
    logits, predicted = network(
        batch["categorical"],
        batch["continuous"],
        batch["missing_values"] | hidden,
        batch["image"],
        batch["image_present"],
    )
    total = predicted.new_zeros(())
    for index, column_logits in enumerate(logits):
        rows = hidden[:, index]
        if rows.any():
            total = total + F.cross_entropy(column_logits[rows], batch["categorical"][rows, index], reduction="sum")
    continuous_hidden = hidden[:, len(logits) :]
    errors = (predicted - batch["continuous"]).square()
    total = total + errors[continuous_hidden].sum()
    return total / hidden.sum().clamp(min=1)


def _predict(network: TabularImputationNetwork, tensors: dict[str, Any]) -> tuple[list[np.ndarray], np.ndarray]:
    """Run the network over all rows in chunks; return the per-column logits and the continuous predictions."""
    num_rows = tensors["missing_values"].shape[0]
    logits: list[list[torch.Tensor]] = [[] for _ in network.cardinalities]
    predicted = []
    with torch.no_grad():
        for rows in torch.arange(num_rows).split(_INFERENCE_BATCH):
            chunk = _select_rows(tensors, rows)
            chunk_logits, chunk_predicted = network(
                chunk["categorical"],
                chunk["continuous"],
                chunk["missing_values"],
                chunk["image"],
                chunk["image_present"],
            )
            for index, column_logits in enumerate(chunk_logits):
                logits[index].append(column_logits)
            predicted.append(chunk_predicted)
    return [torch.cat(parts).numpy() for parts in logits], torch.cat(predicted).numpy()


def _completed(
    table: EncodedTable, logits: list[np.ndarray], predicted: np.ndarray, trainable: np.ndarray
) -> RecoveredTable:
    """Fill the missing values of ``table`` from the predictions and return the recovered table."""
    missing = table.missing_values
    num_categorical = table.categorical.shape[1]
    categorical = table.categorical.copy()
    continuous = table.continuous.astype(np.float32, copy=True)

    for index, column_logits in enumerate(logits):
        rows = missing[:, index]
        categorical[rows, index] = column_logits[rows].argmax(axis=1) if trainable[index] else 0
    fill = np.where(trainable[num_categorical:], predicted, 0.0).astype(np.float32)  # (n, C_num)
    continuous_missing = missing[:, num_categorical:]
    continuous[continuous_missing] = fill[continuous_missing]

    completed = EncodedTable(
        categorical=categorical,
        continuous=continuous,
        missing_values=np.zeros_like(missing),
        columns=tuple(table.columns),
    )
    return RecoveredTable(table=completed, recovered=missing.copy())


def _plain_params(params: dict[str, Any]) -> dict[str, Any]:
    """Return the constructor parameters as plain values that ``torch.load(weights_only=True)`` reads.

    A ``RandomState`` cannot be stored, so it is saved as ``None``. The trained weights no longer depend on it.
    """
    plain = dict(params)
    if not (plain["random_state"] is None or isinstance(plain["random_state"], int)):
        plain["random_state"] = None
    return plain
