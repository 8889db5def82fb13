"""Image-token imputers: generate the image modality's tokens for subjects without an image.

Shape letters: ``n`` rows (subjects), ``N_img`` image tokens, ``D`` token width, ``N_src``
source tokens, ``F`` source features per row after pooling, ``B`` batch.

The tokens live in the fusion network's token space, the output of
``MaskedFusionTransformer.encode_modality`` for the image modality. A typical source is the
table tokens of the same subjects from ``encode_modality`` for the table modality, shape
``(n, N_src, D)``; any ``(n, F)`` feature matrix works too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from torch import nn

from pipeline.imputation.base import ImageTokenImputer
from pipeline.imputation.learned import train_with_early_stopping
from pipeline.imputation.torch_files import read_checked, rebuild_checked, write_checked

logger = logging.getLogger(__name__)

SourcePooling = Literal["flatten", "mean"]
SOURCE_POOLINGS: tuple[str, ...] = ("flatten", "mean")

TOKEN_IMPUTER_FORMAT = "pipeline.imputation.TokenImputer"
TOKEN_IMPUTER_VERSION = 1


class TokenRegressionNetwork(nn.Module):
    """MLP from source features ``(B, F)`` to image tokens ``(B, N_img, D)``.

    The output layer starts with zero weights and the mean training tokens as its bias, so the
    untrained network is the mean-token baseline. Early stopping keeps these initial weights when
    no epoch lowers the validation error.

    Args:
        in_features: source features ``F``.
        mean_tokens: ``(N_img, D)`` mean image tokens of the training subjects.
        hidden: width of the hidden layers.
        depth: hidden layers; 0 gives a linear map.
        dropout: dropout rate after each hidden layer.
    """

    def __init__(
        self, in_features: int, mean_tokens: torch.Tensor, hidden: int = 256, depth: int = 1, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.num_tokens, self.token_dim = (int(size) for size in mean_tokens.shape)
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.output = nn.Linear(width, self.num_tokens * self.token_dim)
        with torch.no_grad():
            self.output.weight.zero_()
            self.output.bias.copy_(mean_tokens.reshape(-1))

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        """Map standardised source features ``(B, F)`` to tokens ``(B, N_img, D)``."""
        return self.output(self.body(source)).view(-1, self.num_tokens, self.token_dim)


class TokenImputer(ImageTokenImputer):
    """Predict a subject's image tokens from the modalities it has, by regression in token space.

    :meth:`fit` trains :class:`TokenRegressionNetwork` with squared error on the subjects that
    have both the image and the source. A fraction ``validation_fraction`` of those subjects is
    held out for early stopping. The kept weights are those with the lowest validation error,
    which may be the initial mean-token weights. Source features are standardised with the
    training mean and standard deviation.

    All randomness (initial weights, row split, dropout, batch order) comes from
    ``random_state``, so the same seed and data give the same tokens on the same machine and
    torch version. Training runs on the CPU.

    Args:
        source_pooling: how a ``(n, N_src, D)`` source becomes ``(n, F)`` features:
            ``"flatten"`` keeps each source token (``F = N_src * D``) and ``"mean"`` averages them
            (``F = D``). A ``(n, F)`` source is used as it is.
        hidden: width of the hidden layers.
        depth: hidden layers; 0 gives a linear map.
        dropout: dropout rate after each hidden layer.
        max_epochs: upper bound on training epochs.
        batch_size: subjects per optimisation step.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        validation_fraction: fraction of the training subjects held out for early stopping, in
            [0, 1); 0 trains for ``max_epochs`` and keeps the last weights.
        patience: epochs without a lower validation error before training stops.
        random_state: seed (int), ``numpy.random.RandomState`` or ``None`` for an unseeded run.

    Attributes:
        network_: the trained :class:`TokenRegressionNetwork`, in eval mode.
        source_shape_: shape of one row of the source, without the row axis.
        source_mean_, source_scale_: ``(F,)`` statistics that standardise the pooled source.
        best_epoch_: epoch whose weights were kept, 0 for the initial mean-token weights.
        history_: per epoch, ``{"train_loss": ..., "validation_loss": ...}``.
        fitted_for_: fingerprint of the network whose token space the imputer learned
            (:func:`~pipeline.networks.network_fingerprint`), set by the caller after :meth:`fit`
            and saved with the imputer, so that a file paired with another network is caught; or None.
    """

    def __init__(
        self,
        source_pooling: SourcePooling = "flatten",
        hidden: int = 256,
        depth: int = 1,
        dropout: float = 0.1,
        max_epochs: int = 300,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        validation_fraction: float = 0.2,
        patience: int = 20,
        random_state: int | np.random.RandomState | None = 0,
    ) -> None:
        self.source_pooling = source_pooling
        self.hidden = hidden
        self.depth = depth
        self.dropout = dropout
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.random_state = random_state

    def fit(self, tokens: np.ndarray, source: np.ndarray, present: np.ndarray) -> TokenImputer:
        """Learn to predict ``tokens`` from ``source`` on the subjects where ``present`` is ``True``.

        Args:
            tokens: ``(n, N_img, D)`` image tokens; rows where ``present`` is ``False`` are ignored
                and may contain anything, NaN included.
            source: ``(n, N_src, D)`` or ``(n, F)`` finite inputs of the same subjects.
            present: ``(n,)`` bool, ``True`` where the subject has an image.

        Raises:
            ValueError: for inputs of the wrong shape, non-finite values in the rows used,
                fewer than 2 subjects with an image, or a parameter outside its range.
        """
        self._check_parameters()
        self.fitted_for_ = None
        tokens, present = _checked_tokens(tokens, present)
        source = _checked_source(source, len(tokens), None)
        if int(present.sum()) < 2:
            raise ValueError(f"TokenImputer needs at least 2 subjects with an image, got {int(present.sum())}.")

        features = self._pooled(source[present])  # (n_present, F)
        targets = torch.from_numpy(tokens[present])  # (n_present, N_img, D)
        self.source_shape_ = tuple(int(size) for size in source.shape[1:])
        scale = features.std(axis=0)
        self.source_mean_ = features.mean(axis=0).astype(np.float32)
        self.source_scale_ = np.where(scale > 0, scale, 1.0).astype(np.float32)

        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._train(torch.from_numpy(self._standardised(features)), targets)
        logger.info(
            "fitted the token imputer on %d of %d subjects (those with an image).", int(present.sum()), len(present)
        )
        return self

    def transform(self, source: np.ndarray) -> np.ndarray:
        """Predict image tokens ``(n, N_img, D)`` float32 from ``source`` of the shape seen in :meth:`fit`.

        Raises:
            NotFittedError: if :meth:`fit` has not been called.
            ValueError: if ``source`` has another row shape than in :meth:`fit` or a non-finite value.
        """
        check_is_fitted(self, "network_")
        source = _checked_source(source, None, self.source_shape_)
        features = torch.from_numpy(self._standardised(self._pooled(source)))
        with torch.no_grad():
            return self.network_(features).numpy()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the parameters, fitted state and weights to ``path`` with ``torch.save``; return the path.

        :meth:`load` reads the file with ``torch.load(weights_only=True)``.
        """
        check_is_fitted(self, "network_")
        path = Path(path)
        params = self.get_params()
        if not (params["random_state"] is None or isinstance(params["random_state"], int)):
            # A RandomState cannot be stored, and the trained weights no longer depend on it.
            params["random_state"] = None
        contents = {
            "format": TOKEN_IMPUTER_FORMAT,
            "version": TOKEN_IMPUTER_VERSION,
            "params": params,
            "fitted_for": getattr(self, "fitted_for_", None),
            "source_shape": list(self.source_shape_),
            "source_mean": torch.from_numpy(self.source_mean_.copy()),
            "source_scale": torch.from_numpy(self.source_scale_.copy()),
            "num_tokens": self.network_.num_tokens,
            "token_dim": self.network_.token_dim,
            "best_epoch": self.best_epoch_,
            "history": self.history_,
            "state_dict": {name: value.detach().cpu() for name, value in self.network_.state_dict().items()},
        }
        write_checked(contents, path)
        logger.info("saved the token imputer to %s.", path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TokenImputer:
        """Rebuild a fitted imputer from a file written by :meth:`save`.

        Raises:
            ValueError: if the file is not a saved token imputer of this version.
        """
        contents = read_checked(path, TOKEN_IMPUTER_FORMAT, TOKEN_IMPUTER_VERSION)

        def rebuild() -> TokenImputer:
            imputer = cls(**contents["params"])
            imputer.source_shape_ = tuple(contents["source_shape"])
            imputer.source_mean_ = contents["source_mean"].numpy()
            imputer.source_scale_ = contents["source_scale"].numpy()
            imputer.best_epoch_ = int(contents["best_epoch"])
            imputer.history_ = list(contents["history"])
            imputer.fitted_for_ = contents.get("fitted_for")
            mean_tokens = torch.zeros(int(contents["num_tokens"]), int(contents["token_dim"]))
            network = imputer._build_network(len(imputer.source_mean_), mean_tokens)
            network.load_state_dict(contents["state_dict"])
            imputer.network_ = network.eval()
            return imputer

        return rebuild_checked(path, rebuild)

    def _check_parameters(self) -> None:
        """Raise ``ValueError`` or ``TypeError`` for a constructor argument outside its range."""
        if self.source_pooling not in SOURCE_POOLINGS:
            raise ValueError(f"source_pooling must be one of {SOURCE_POOLINGS}, got {self.source_pooling!r}.")
        for name, minimum in (("hidden", 1), ("depth", 0), ("max_epochs", 1), ("batch_size", 1), ("patience", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int of at least {minimum}, got {value!r}.")
        for name in ("dropout", "validation_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}.")
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}.")
        for name in ("learning_rate", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}.")

    def _build_network(self, in_features: int, mean_tokens: torch.Tensor) -> TokenRegressionNetwork:
        return TokenRegressionNetwork(
            in_features, mean_tokens, hidden=self.hidden, depth=self.depth, dropout=self.dropout
        )

    def _pooled(self, source: np.ndarray) -> np.ndarray:
        """Turn the source ``(n, N_src, D)`` or ``(n, F)`` into features ``(n, F)``."""
        if source.ndim == 2:
            return source
        if self.source_pooling == "mean":
            return source.mean(axis=1)
        return source.reshape(len(source), -1)

    def _standardised(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.source_mean_) / self.source_scale_).astype(np.float32)

    def _train(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        """Split the subjects into training and validation rows and train :attr:`network_`."""
        num_rows = len(features)
        network = self._build_network(features.shape[1], targets.mean(dim=0))

        order = torch.randperm(num_rows)
        num_validation = 0
        if self.validation_fraction > 0:
            num_validation = min(max(int(round(self.validation_fraction * num_rows)), 1), num_rows - 1)
        validation_rows, training_rows = order[:num_validation], order[num_validation:]

        def batch_loss(rows: torch.Tensor) -> torch.Tensor:
            selected = training_rows[rows]
            return F.mse_loss(network(features[selected]), targets[selected])

        def validation_loss() -> float:
            return float(F.mse_loss(network(features[validation_rows]), targets[validation_rows]))

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
            description="token imputer",
        )
        self.network_ = network.eval()


class MeanTokenImputer(ImageTokenImputer):
    """Baseline that gives every subject the mean image tokens of the training subjects.

    ``source`` is read only for its number of rows, so any ``(n, ...)`` array works.

    Attributes:
        mean_tokens_: ``(N_img, D)`` mean tokens over the subjects with an image.
    """

    def fit(self, tokens: np.ndarray, source: np.ndarray, present: np.ndarray) -> MeanTokenImputer:
        """Average ``tokens`` ``(n, N_img, D)`` over the rows where ``present`` ``(n,)`` is ``True``.

        Raises:
            ValueError: for inputs of the wrong shape, no subject with an image, or non-finite
                tokens in the rows used.
        """
        tokens, present = _checked_tokens(tokens, present)
        if len(source) != len(tokens):
            raise ValueError(f"source must have n={len(tokens)} rows like tokens, got {len(source)}.")
        if not present.any():
            raise ValueError("MeanTokenImputer needs at least 1 subject with an image, got none.")
        self.mean_tokens_ = tokens[present].mean(axis=0)
        return self

    def transform(self, source: np.ndarray) -> np.ndarray:
        """Return the mean tokens repeated for each of the ``n`` rows of ``source``: ``(n, N_img, D)`` float32."""
        check_is_fitted(self, "mean_tokens_")
        return np.repeat(self.mean_tokens_[None], len(source), axis=0)


def _checked_tokens(tokens: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``tokens`` as float32 ``(n, N_img, D)`` and ``present`` as bool ``(n,)`` after checking them."""
    tokens = np.asarray(tokens, dtype=np.float32)
    present = np.asarray(present)
    if tokens.ndim != 3 or 0 in tokens.shape:
        raise ValueError(f"tokens must have shape (n, N_img, D) with no empty axis, got {tokens.shape}.")
    if present.dtype != bool or present.shape != (len(tokens),):
        raise ValueError(
            f"present must be a bool array of shape ({len(tokens)},), got {present.dtype} {present.shape}."
        )
    if not np.isfinite(tokens[present]).all():
        raise ValueError("tokens contain NaN or infinite values in rows where present is True.")
    return tokens, present


def _checked_source(source: np.ndarray, num_rows: int | None, row_shape: tuple[int, ...] | None) -> np.ndarray:
    """Return ``source`` as float32 after checking its rows, its row shape and that it is finite."""
    source = np.asarray(source, dtype=np.float32)
    if source.ndim not in (2, 3):
        raise ValueError(f"source must have shape (n, F) or (n, N_src, D), got {source.shape}.")
    if num_rows is not None and len(source) != num_rows:
        raise ValueError(f"source must have n={num_rows} rows like tokens, got {len(source)}.")
    if row_shape is not None and tuple(source.shape[1:]) != tuple(row_shape):
        raise ValueError(f"source rows must have shape {tuple(row_shape)} as in fit, got {tuple(source.shape[1:])}.")
    if not np.isfinite(source).all():
        raise ValueError("source contains NaN or infinite values. Recover the table before computing its tokens.")
    return source
