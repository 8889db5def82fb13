"""MoPoE-VAE imputer: generate each missing image modality from the modalities a subject has.

Shape letters: ``n`` rows (subjects), ``M`` modalities, ``C`` channels, ``H`` x ``W`` image size,
``L`` latent width, ``B`` batch, ``K`` subsets drawn per row.

Model (Sutter, Daunhawer, Vogt, "Generalized Multimodal ELBO", ICLR 2021). Each modality ``j``
has a convolutional encoder giving a Gaussian expert ``q_j(z | x_j) = N(mu_j, diag(exp(logvar_j)))``
and a decoder ``g_j(z)`` that is the mean of a unit-variance Gaussian likelihood for ``x_j``. For a
subset ``S`` of modalities, ``q_S`` is the product of the experts in ``S`` and the prior expert
``N(0, I)``, with precision ``T_S = 1 + sum_{j in S} exp(-logvar_j)``, mean
``mu_S = sum_{j in S} exp(-logvar_j) * mu_j / T_S`` and variance ``1 / T_S``.

Training objective. For a row with present modalities ``P``, let ``U(P)`` be the ``2^|P| - 1``
non-empty subsets of ``P``. The MoPoE ELBO used here takes the mixture
``q(z | X_P) = mean_{S in U(P)} q_S`` over these subsets.
Its reconstruction term splits exactly into the mean over ``S`` of ``E_{q_S}[log p(X_P | z)]``.
KL divergence is convex, so ``KL(mean_S q_S || p) <= mean_S KL(q_S || p)``. The loss minimised is
therefore, for ``beta = 1`` and up to the constant of the Gaussian normaliser, the negative of a
lower bound on the MoPoE ELBO::

    loss(X_P) = mean_{S in U(P)} ( E_{z ~ q_S} [ sum_{j in P} 0.5 * ||x_j - g_j(z)||^2 ]
                                   + beta * KL(q_S || N(0, I)) )

with the squared error summed over the ``C * H * W`` values of each image. Absent modalities
contribute no expert and no reconstruction term. Enumerating ``U(P)`` costs ``2^M - 1`` passes
per row, so each training step uses an unbiased Monte Carlo estimate instead. It draws ``K = 4``
subsets per row uniformly with replacement from ``U(P)``, takes one reparameterised sample
``z = mu_S + exp(logvar_S / 2) * eps`` per subset and averages the ``K`` terms. The batch loss is
the mean over rows. The validation loss is the same estimate with subsets and noise drawn once
before training, so every epoch is compared on the same draws.

Imputation. :meth:`MoPoEImputer.transform` decodes each absent modality of a row from the
posterior mean ``mu_S`` with ``S`` the row's present modalities, so it is deterministic.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from torch import nn

from pipeline.imputation.learned import train_with_early_stopping
from pipeline.imputation.torch_files import read_checked, rebuild_checked, write_checked

logger = logging.getLogger(__name__)

MOPOE_IMPUTER_FORMAT = "pipeline.imputation.MoPoEImputer"
MOPOE_IMPUTER_VERSION = 1

SUBSETS_PER_ROW = 4
# Bounds on an expert's log-variance, so that exp(-logvar) stays finite in float32.
LOGVAR_RANGE = (-10.0, 10.0)


class MoPoENetwork(nn.Module):
    """Per-modality convolutional encoders and decoders joined by a product of Gaussian experts.

    Each encoder is two stride-2 convolutions (kernel 4, padding 1) and a linear map to
    ``2 * L`` values (mean and log-variance). Each decoder mirrors it with a linear map and two
    stride-2 transposed convolutions. ``H`` and ``W`` must be divisible by 4.

    Args:
        num_modalities: ``M``.
        image_shape: ``(C, H, W)`` of one modality's image.
        latent_dim: ``L``.
        channels: channels after the first convolution. The second convolution has twice as many.
    """

    def __init__(self, num_modalities: int, image_shape: tuple[int, int, int], latent_dim: int, channels: int) -> None:
        super().__init__()
        in_channels, height, width = image_shape
        if height % 4 or width % 4:
            raise ValueError(
                f"image height and width must be divisible by 4 (two stride-2 convolutions), got {height} x {width}. "
                "Pad or crop the images."
            )
        self.num_modalities = num_modalities
        self.image_shape = (in_channels, height, width)
        self.latent_dim = latent_dim
        feature_shape = (2 * channels, height // 4, width // 4)
        features = int(np.prod(feature_shape))

        self.encoders = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(features, 2 * latent_dim),
            )
            for _ in range(num_modalities)
        )
        self.decoders = nn.ModuleList(
            nn.Sequential(
                nn.Linear(latent_dim, features),
                nn.ReLU(),
                nn.Unflatten(1, feature_shape),
                nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),
                nn.ReLU(),
                nn.ConvTranspose2d(channels, in_channels, 4, stride=2, padding=1),
            )
            for _ in range(num_modalities)
        )

    def encode(self, images: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the present images ``(B, M, C, H, W)`` into experts ``mu, logvar`` of shape ``(B, M, L)``.

        Only entries where ``present`` ``(B, M)`` is ``True`` go through an encoder, so absent
        entries may contain anything, NaN included. Their experts are 0 and are ignored by
        :func:`product_of_experts`.
        """
        batch = len(images)
        mus, logvars = [], []
        for modality, encoder in enumerate(self.encoders):
            rows = present[:, modality].nonzero().squeeze(1)
            expert = images.new_zeros(batch, 2 * self.latent_dim)
            if len(rows):
                expert = expert.index_put((rows,), encoder(images[rows, modality]))
            mu, logvar = expert.chunk(2, dim=1)
            mus.append(mu)
            logvars.append(logvar.clamp(*LOGVAR_RANGE))
        return torch.stack(mus, dim=1), torch.stack(logvars, dim=1)

    def decode(self, latent: torch.Tensor, modality: int) -> torch.Tensor:
        """Decode latents ``(B, L)`` into images ``(B, C, H, W)`` of modality ``modality``."""
        return self.decoders[modality](latent)


def product_of_experts(mu: torch.Tensor, logvar: torch.Tensor, subset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine the experts ``(..., M, L)`` selected by ``subset`` ``(..., M)`` with the prior ``N(0, I)``.

    Returns the mean and log-variance ``(..., L)`` of the product, a Gaussian whose precision is
    the sum of the experts' precisions.
    """
    precision = torch.exp(-logvar) * subset.unsqueeze(-1)
    total_precision = 1.0 + precision.sum(dim=-2)
    mean = (precision * mu).sum(dim=-2) / total_precision
    return mean, -torch.log(total_precision)


def sample_subsets(present: torch.Tensor, draws: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``draws`` non-empty subsets of each row's present modalities, uniformly with replacement.

    Args:
        present: ``(B, M)`` bool with at least one ``True`` per row.
        draws: ``K``.
        generator: CPU generator, or ``None`` for the global one.

    Returns:
        ``(K, B, M)`` bool, each row a subset of the matching row of ``present``.
    """
    present = present.cpu()
    counts = present.sum(dim=1).to(torch.float64)  # (B,)
    uniform = torch.rand(draws, len(present), dtype=torch.float64, generator=generator)
    # Subset number r in [1, 2^p - 1]: bit i of r selects the row's i-th present modality.
    numbers = 1 + torch.floor(uniform * (torch.pow(2.0, counts) - 1)).to(torch.int64)  # (K, B)
    rank = (present.cumsum(dim=1) - 1).clamp(min=0)  # (B, M)
    selected = (numbers.unsqueeze(-1) >> rank) & 1  # (K, B, M)
    return selected.bool() & present


class MoPoEImputer(BaseEstimator):
    """Generate missing image modalities with a mixture-of-products-of-experts VAE (MoPoE-VAE).

    Currently only supports ``H`` and ``W`` divisible by 4, and the same ``(C, H, W)`` for every
    modality.

    :meth:`fit` trains a :class:`MoPoENetwork` on the present modalities of each row with the
    subset-sampled MoPoE loss described in this module's docstring. A fraction
    ``validation_fraction`` of the rows is held out for early stopping. The kept weights are
    those with the lowest validation loss, which may be the initial weights (``best_epoch_ = 0``).
    :meth:`transform` returns present modalities unchanged and decodes each absent one from the
    posterior mean of the row's present modalities.

    All randomness (initial weights, row split, batch order, subsets, noise) comes from
    ``random_state`` and is drawn on the CPU, so the same seed and data give the same weights on
    the same machine and torch version.

    Args:
        latent_dim: latent width ``L``.
        channels: channels of the first convolution of each encoder. The second has twice as many.
        beta: weight of the KL term.
        max_epochs: upper bound on training epochs.
        batch_size: rows per optimisation step, and rows per chunk in :meth:`transform`.
        learning_rate: Adam learning rate.
        validation_fraction: fraction of the rows held out for early stopping, in [0, 1). With 0,
            training runs for ``max_epochs`` and keeps the last weights.
        patience: epochs without a lower validation loss before training stops.
        random_state: seed (int), ``numpy.random.RandomState`` or ``None`` for an unseeded run.
        device: torch device for training and :meth:`transform`, such as ``"cpu"`` or ``"cuda"``.

    Attributes:
        network_: the trained :class:`MoPoENetwork`, in eval mode.
        num_modalities_: ``M``.
        image_shape_: ``(C, H, W)``.
        best_epoch_: epoch whose weights were kept, 0 for the initial weights.
        history_: per epoch, ``{"train_loss": ..., "validation_loss": ...}``, losses per row.
    """

    def __init__(
        self,
        latent_dim: int = 32,
        channels: int = 32,
        beta: float = 1.0,
        max_epochs: int = 30,
        batch_size: int = 128,
        learning_rate: float = 1e-3,
        validation_fraction: float = 0.1,
        patience: int = 5,
        random_state: int | np.random.RandomState | None = 0,
        device: str = "cpu",
    ) -> None:
        self.latent_dim = latent_dim
        self.channels = channels
        self.beta = beta
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.random_state = random_state
        self.device = device

    def fit(self, images: np.ndarray | torch.Tensor, present: np.ndarray | torch.Tensor | None = None) -> MoPoEImputer:
        """Train on the present modalities of ``images``.

        Args:
            images: ``(n, M, C, H, W)`` float32 images, preprocessed (for example zero mean and
                unit variance per image). Absent entries are never read and may contain anything,
                NaN included.
            present: ``(n, M)`` bool, ``True`` where the row has the modality, or ``None`` for all
                ``True``. Rows with no present modality are skipped.

        Raises:
            ValueError: for inputs of the wrong shape, non-finite present values, a modality
                absent from every row, fewer than 2 rows with a present modality, or a
                parameter outside its range.
        """
        self._check_parameters()
        images, present = _checked_inputs(images, present, None)
        never_present = np.flatnonzero(~present.any(axis=0)).tolist()
        if never_present:
            raise ValueError(
                f"modalities {never_present} are absent from every row, so their decoders cannot be trained. "
                "Pass rows that have them, or drop them from images."
            )
        used = present.any(axis=1)
        if int(used.sum()) < 2:
            raise ValueError(f"MoPoEImputer needs at least 2 rows with a present modality, got {int(used.sum())}.")

        self.num_modalities_ = int(images.shape[1])
        self.image_shape_ = tuple(int(size) for size in images.shape[2:])
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._train(torch.from_numpy(images[used]), torch.from_numpy(present[used]))
        logger.info(
            "fitted the MoPoE imputer on %d of %d rows (%d present images).",
            int(used.sum()),
            len(used),
            int(present.sum()),
        )
        return self

    def transform(self, images: np.ndarray | torch.Tensor, present: np.ndarray | torch.Tensor) -> np.ndarray:
        """Fill in every absent modality and return the images ``(n, M, C, H, W)`` as float32.

        Present entries are returned unchanged, so they are bit-identical to a float32 input.
        Rows are grouped by their pattern of present modalities and processed ``batch_size`` rows
        at a time. Each present modality is encoded once and only the absent ones are decoded.

        Args:
            images: ``(n, M, C, H, W)`` with ``M`` and ``(C, H, W)`` as in :meth:`fit`. Absent
                entries are never read and may contain anything, NaN included.
            present: ``(n, M)`` bool, ``True`` where the row has the modality.

        Raises:
            NotFittedError: if :meth:`fit` has not been called.
            ValueError: for inputs of the wrong shape, non-finite present values, or a row with
                no present modality.
        """
        check_is_fitted(self, "network_")
        images, present = _checked_inputs(images, present, (self.num_modalities_, *self.image_shape_))
        empty = np.flatnonzero(~present.any(axis=1))
        if len(empty):
            raise ValueError(
                f"rows {empty[:10].tolist()} have no present modality ({len(empty)} in total), so there is "
                "nothing to generate their images from. Drop these rows or mark a modality present."
            )

        output = images  # already a copy of the caller's array
        device = torch.device(self.device)
        network = self.network_.to(device)
        patterns, pattern_of_row = np.unique(present, axis=0, return_inverse=True)
        with torch.no_grad():
            for pattern_index, pattern in enumerate(patterns):
                if pattern.all():
                    continue
                rows = np.flatnonzero(pattern_of_row.reshape(-1) == pattern_index)
                for start in range(0, len(rows), self.batch_size):
                    chunk = rows[start : start + self.batch_size]
                    output[chunk] = self._generate(network, images[chunk], pattern, device)
        return output

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the parameters, fitted state and weights to ``path`` with ``torch.save`` and return the path.

        :meth:`load` reads the file with ``torch.load(weights_only=True)`` and checks its SHA-256
        digest.
        """
        check_is_fitted(self, "network_")
        path = Path(path)
        params = self.get_params()
        if not (params["random_state"] is None or isinstance(params["random_state"], int)):
            # A RandomState cannot be stored, and the trained weights no longer depend on it.
            params["random_state"] = None
        contents = {
            "format": MOPOE_IMPUTER_FORMAT,
            "version": MOPOE_IMPUTER_VERSION,
            "params": params,
            "num_modalities": self.num_modalities_,
            "image_shape": list(self.image_shape_),
            "best_epoch": self.best_epoch_,
            "history": self.history_,
            "state_dict": {name: value.detach().cpu() for name, value in self.network_.state_dict().items()},
        }
        write_checked(contents, path)
        logger.info("saved the MoPoE imputer to %s.", path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MoPoEImputer:
        """Rebuild a fitted imputer from a file written by :meth:`save`, with the network on the CPU.

        Raises:
            ValueError: naming ``path``, if the file is not a saved MoPoE imputer of this version or
                its contents changed after it was written.
        """
        contents = read_checked(path, MOPOE_IMPUTER_FORMAT, MOPOE_IMPUTER_VERSION)

        def rebuild() -> MoPoEImputer:
            imputer = cls(**contents["params"])
            imputer.num_modalities_ = int(contents["num_modalities"])
            imputer.image_shape_ = tuple(int(size) for size in contents["image_shape"])
            imputer.best_epoch_ = int(contents["best_epoch"])
            imputer.history_ = list(contents["history"])
            network = imputer._build_network()
            network.load_state_dict(contents["state_dict"])
            imputer.network_ = network.eval()
            return imputer

        return rebuild_checked(path, rebuild)

    def _check_parameters(self) -> None:
        """Raise ``ValueError`` or ``TypeError`` for a constructor argument outside its range."""
        for name in ("latent_dim", "channels", "max_epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int of at least 1, got {value!r}.")
        for name in ("beta", "learning_rate", "validation_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}.")
        if not self.beta >= 0:
            raise ValueError(f"beta must be a non-negative number, got {self.beta!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate!r}.")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}.")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device must be a torch device name such as 'cpu' or 'cuda', got {self.device!r}.") from error
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device is {self.device!r} but CUDA is not available here. Use device='cpu'.")

    def _build_network(self) -> MoPoENetwork:
        return MoPoENetwork(self.num_modalities_, self.image_shape_, self.latent_dim, self.channels)

    def _generate(self, network: MoPoENetwork, images: np.ndarray, pattern: np.ndarray, device: torch.device) -> np.ndarray:
        """Return ``images`` ``(B, M, C, H, W)`` with the modalities absent from ``pattern`` ``(M,)`` decoded."""
        batch = torch.from_numpy(images).to(device)
        present = torch.from_numpy(np.repeat(pattern[None], len(images), axis=0)).to(device)
        mu, logvar = network.encode(batch, present)
        latent, _ = product_of_experts(mu, logvar, present)  # (B, L)

        result = images.copy()
        for modality in np.flatnonzero(~pattern):
            result[:, modality] = network.decode(latent, int(modality)).cpu().numpy()
        return result

    def _loss(
        self, network: MoPoENetwork, images: torch.Tensor, present: torch.Tensor, subsets: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Return the per-row MoPoE loss ``(B,)`` for ``K`` drawn subsets ``(K, B, M)`` and noise ``(K, B, L)``."""
        draws = len(subsets)
        mu, logvar = network.encode(images, present)  # (B, M, L)
        subset_mu, subset_logvar = product_of_experts(mu.unsqueeze(0), logvar.unsqueeze(0), subsets)  # (K, B, L)
        latent = subset_mu + torch.exp(0.5 * subset_logvar) * noise
        kl = 0.5 * (torch.exp(subset_logvar) + subset_mu**2 - 1.0 - subset_logvar).sum(dim=-1)  # (K, B)

        flat_latent = latent.reshape(-1, latent.shape[-1])  # (K * B, L)
        reconstruction = images.new_zeros(draws * len(images))
        for modality in range(network.num_modalities):
            rows = present[:, modality].repeat(draws).nonzero().squeeze(1)  # rows of (K * B) with the modality
            if not len(rows):
                continue
            target = images[rows % len(images), modality]
            error = 0.5 * (network.decode(flat_latent[rows], modality) - target).pow(2).flatten(1).sum(dim=1)
            reconstruction = reconstruction.index_add(0, rows, error)
        return (reconstruction.view(draws, -1) + self.beta * kl).mean(dim=0)

    def _draws(self, present: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``K`` subsets ``(K, B, M)`` and standard normal noise ``(K, B, L)`` on the CPU."""
        subsets = sample_subsets(present, SUBSETS_PER_ROW, generator)
        noise = torch.randn(SUBSETS_PER_ROW, len(present), self.latent_dim, generator=generator)
        return subsets, noise

    def _train(self, images: torch.Tensor, present: torch.Tensor) -> None:
        """Split the rows into training and validation rows and train :attr:`network_`."""
        device = torch.device(self.device)
        num_rows = len(images)
        network = self._build_network().to(device)

        order = torch.randperm(num_rows)
        num_validation = 0
        if self.validation_fraction > 0:
            num_validation = min(max(int(round(self.validation_fraction * num_rows)), 1), num_rows - 1)
        validation_rows, training_rows = order[:num_validation], order[num_validation:]
        validation_subsets, validation_noise = self._draws(present[validation_rows], None)

        def batch_loss(rows: torch.Tensor) -> torch.Tensor:
            selected = training_rows[rows]
            subsets, noise = self._draws(present[selected], None)
            batch = images[selected].to(device)
            return self._loss(network, batch, present[selected].to(device), subsets.to(device), noise.to(device)).mean()

        epochs_checked = 0

        def validation_loss() -> float:
            nonlocal epochs_checked
            total = 0.0
            for chunk in torch.arange(num_validation).split(self.batch_size):
                rows = validation_rows[chunk]
                losses = self._loss(
                    network,
                    images[rows].to(device),
                    present[rows].to(device),
                    validation_subsets[:, chunk].to(device),
                    validation_noise[:, chunk].to(device),
                )
                total += float(losses.sum())
            logger.info("MoPoE imputer: epoch %d, validation loss %.4g per row.", epochs_checked, total / num_validation)
            epochs_checked += 1
            return total / num_validation

        self.best_epoch_, self.history_ = train_with_early_stopping(
            network,
            batch_loss,
            validation_loss if num_validation else None,
            num_rows=len(training_rows),
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            weight_decay=0.0,
            patience=self.patience,
            description="MoPoE imputer",
        )
        self.network_ = network.eval()


def _checked_inputs(
    images: np.ndarray | torch.Tensor, present: np.ndarray | torch.Tensor | None, row_shape: tuple[int, ...] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``images`` as float32 ``(n, M, C, H, W)`` and ``present`` as bool ``(n, M)`` after checking them.

    ``row_shape`` is the expected ``(M, C, H, W)``, or ``None`` in :meth:`MoPoEImputer.fit`.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.array(images, dtype=np.float32)
    if images.ndim != 5 or 0 in images.shape:
        raise ValueError(f"images must have shape (n, M, C, H, W) with no empty axis, got {images.shape}.")
    if row_shape is not None and tuple(images.shape[1:]) != tuple(row_shape):
        raise ValueError(f"images rows must have shape (M, C, H, W) = {tuple(row_shape)} as in fit, got {images.shape[1:]}.")
    height, width = images.shape[3:]
    if height % 4 or width % 4:
        raise ValueError(
            f"image height and width must be divisible by 4 (two stride-2 convolutions), got {height} x {width}. "
            "Pad or crop the images."
        )

    if present is None:
        present = np.ones(images.shape[:2], dtype=bool)
    elif isinstance(present, torch.Tensor):
        present = present.detach().cpu().numpy()
    present = np.asarray(present)
    if present.dtype != bool or present.shape != images.shape[:2]:
        raise ValueError(
            f"present must be a bool array of shape (n, M) = {images.shape[:2]}, got {present.dtype} {present.shape}."
        )
    if not np.isfinite(images[present]).all():
        raise ValueError("images contain NaN or infinite values in entries where present is True.")
    return images, present
