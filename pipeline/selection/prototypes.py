"""Per-subset class prototypes and spreads, fitted once on the training set after training.

Shape letters: ``B`` batch, ``M`` modalities, ``S = 2**M - 1`` subsets, ``K`` classes,
``P`` embedding width.

For every subset ``s`` and class ``k`` the network is run on the training subjects of class ``k``
with exactly the modalities of ``s``, and

- ``centers[s, k]`` is the mean embedding,
- ``sigmas[s, k]`` is the root mean square distance of those embeddings to ``centers[s, k]``,
  with distance ``1 - <e, c>`` for cosine embeddings and ``||e - c||_2`` for Euclidean ones,
- ``overall[k]`` is the mean of ``centers[s, k]`` over the fitted subsets.

A subject contributes to subset ``s`` only when it has every modality of ``s``, so training
cohorts with absent modalities are supported. A subset is *fitted* when every class has at least
``min_samples_per_class`` contributing subjects; the selector rejects any other subset.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.networks.batch import unpack_batch
from pipeline.networks.fingerprint import network_fingerprint
from pipeline.networks.fusion import MaskedFusionTransformer
from pipeline.networks.loading import summarise_load_error
from pipeline.networks.subsets import all_subsets, describe_subset, mask_to_subset_index

logger = logging.getLogger(__name__)

FILE_FORMAT = "pipeline.subset_prototypes"
FILE_VERSION = 1


@dataclass(frozen=True)
class SubsetPrototypes:
    """Fitted prototypes of one network, with what is needed to check they belong to it.

    Attributes:
        centers: ``(S, K, P)`` mean training embedding per subset and class.
        sigmas: ``(S, K)`` root mean square distance to the center per subset and class.
        overall: ``(K, P)`` mean of ``centers`` over the fitted subsets.
        counts: ``(S, K)`` training subjects that contributed per subset and class.
        fitted: ``(S,)`` bool, ``True`` where every class reached the minimum count.
        subsets: ``(S, M)`` bool, the presence mask of each subset index.
        embedding: ``"cosine"`` or ``"euclidean"``.
        modality_names: the network's modality names, in modality-index order.
        fingerprint: :func:`~pipeline.networks.network_fingerprint` of the fitted network.
    """

    centers: torch.Tensor
    sigmas: torch.Tensor
    overall: torch.Tensor
    counts: torch.Tensor
    fitted: torch.Tensor
    subsets: torch.Tensor
    embedding: str
    modality_names: list[str]
    fingerprint: str

    @property
    def num_modalities(self) -> int:
        return int(self.subsets.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.centers.shape[1])

    def to(self, device: torch.device | str) -> SubsetPrototypes:
        """Return a copy with every tensor on ``device``."""
        moved = {name: getattr(self, name).to(device) for name in _TENSOR_FIELDS}
        return SubsetPrototypes(
            **moved, embedding=self.embedding, modality_names=list(self.modality_names), fingerprint=self.fingerprint
        )

    def check_network(self, network: nn.Module) -> None:
        """Raise ``ValueError`` unless these prototypes were fitted for ``network`` (same fingerprint)."""
        actual = network_fingerprint(network)
        if actual != self.fingerprint:
            raise ValueError(
                f"the prototypes were fitted for network fingerprint {self.fingerprint[:16]}..., but this network's "
                f"fingerprint is {actual[:16]}...; refit them with fit_subset_prototypes for this network."
            )

    def subset_indices(self, present_mask: torch.Tensor, sample_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Map presence masks ``(B, M)`` to subset indices ``(B,)``, rejecting unfitted or empty subsets.

        ``sample_ids`` ``(B,)`` gives the batch row each mask belongs to, for the error message;
        it defaults to the mask's own row.
        """
        if present_mask.dtype != torch.bool or present_mask.dim() != 2 or present_mask.shape[1] != self.num_modalities:
            raise ValueError(
                f"present_mask must be a bool tensor of shape (B, {self.num_modalities}), "
                f"got dtype {present_mask.dtype} and shape {tuple(present_mask.shape)}."
            )
        indices = mask_to_subset_index(present_mask)
        usable = (indices >= 0) & self.fitted.to(indices.device)[indices.clamp(min=0)]
        if not bool(usable.all()):
            row = int((~usable).nonzero()[0, 0])
            sample = row if sample_ids is None else int(sample_ids[row])
            subset = describe_subset(present_mask[row], self.modality_names)
            raise ValueError(
                f"subset {subset} (needed for sample {sample} of the batch) has no fitted prototype; fitted "
                f"subsets are {self.describe_fitted()}. Fit prototypes on training data that contains this "
                "subset, or leave that modality out of the sample's candidates."
            )
        return indices

    def describe_fitted(self) -> str:
        """List the fitted subsets by modality names, e.g. ``'{image}, {image, table}'``."""
        names = [describe_subset(mask, self.modality_names) for mask, ok in zip(self.subsets, self.fitted) if ok]
        return ", ".join(names) if names else "none"

    def save(self, path: str | Path) -> None:
        """Write the prototypes to ``path`` atomically, in a file ``torch.load(weights_only=True)`` reads."""
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"{path} is a directory; pass the path of the prototypes file to write.")
        contents: dict[str, Any] = {name: getattr(self, name).detach().cpu() for name in _TENSOR_FIELDS}
        contents.update(
            format=FILE_FORMAT,
            version=FILE_VERSION,
            embedding=self.embedding,
            modality_names=list(self.modality_names),
            fingerprint=self.fingerprint,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            # Saved through the open file, so the random temporary name is not recorded in the archive.
            with os.fdopen(handle, "wb") as file:
                torch.save(contents, file)
            os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp creates files readable by the owner only
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)

    @classmethod
    def load(cls, path: str | Path, network: nn.Module | None = None) -> SubsetPrototypes:
        """Read prototypes written by :meth:`save`; with ``network`` given, also check its fingerprint.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is not a prototypes file of this version, or belongs to another network.
        """
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"{path} is a directory, expected a prototypes file.")
        if not path.is_file():
            raise FileNotFoundError(f"prototypes file not found: {path}")
        if path.stat().st_size == 0:
            raise ValueError(f"{path} is not a readable prototypes file: the file is empty.")
        try:
            contents = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for corrupt or unsafe files
            raise ValueError(
                f"{path} is not a readable prototypes file ({summarise_load_error(error)}). Fit the prototypes "
                "again (the bundle's train.json writes them) or restore the file."
            ) from error

        if not isinstance(contents, dict) or contents.get("format") != FILE_FORMAT:
            raise ValueError(f"{path} is not a prototypes file (expected format {FILE_FORMAT!r}).")
        if contents.get("version") != FILE_VERSION:
            raise ValueError(f"{path} has prototypes file version {contents.get('version')!r}; expected {FILE_VERSION}.")
        missing = [key for key in (*_TENSOR_FIELDS, "embedding", "modality_names", "fingerprint") if key not in contents]
        if missing:
            raise ValueError(f"{path} lacks the fields {missing}; write it again with SubsetPrototypes.save.")

        prototypes = cls(
            **{name: contents[name] for name in _TENSOR_FIELDS},
            embedding=contents["embedding"],
            modality_names=list(contents["modality_names"]),
            fingerprint=contents["fingerprint"],
        )
        if network is not None:
            try:
                prototypes.check_network(network)
            except ValueError as error:
                raise ValueError(f"{path}: {error}") from error
        return prototypes


_TENSOR_FIELDS = ("centers", "sigmas", "overall", "counts", "fitted", "subsets")


def embedding_distance(embedding: torch.Tensor, center: torch.Tensor, kind: str) -> torch.Tensor:
    """Distance ``(...)`` between embeddings and centers ``(..., P)``: ``1 - <e, c>`` or ``||e - c||_2``."""
    if kind == "cosine":
        return 1.0 - (embedding * center).sum(dim=-1)
    if kind == "euclidean":
        return (embedding - center).norm(dim=-1)
    raise ValueError(f"embedding kind must be 'cosine' or 'euclidean', got {kind!r}.")


def compute_subset_prototypes(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    available: torch.Tensor,
    num_classes: int,
    kind: str,
    min_samples_per_class: int = 2,
) -> dict[str, torch.Tensor]:
    """Compute centers, sigmas, counts and the fitted flags from per-subset embeddings.

    Args:
        embeddings: ``(S, B, P)`` embedding of each subject under each subset.
        labels: ``(B,)`` class of each subject.
        available: ``(S, B)`` bool, ``True`` where the subject has every modality of the subset.
        num_classes: classes ``K``.
        kind: ``"cosine"`` or ``"euclidean"``.
        min_samples_per_class: contributing subjects every class needs for a subset to be fitted.

    Returns:
        ``centers (S, K, P)``, ``sigmas (S, K)``, ``overall (K, P)``, ``counts (S, K)`` and
        ``fitted (S,)``. Entries of unfitted subsets are zero and ``overall`` averages fitted
        subsets only.
    """
    weights = available[..., None] & (labels[None, :, None] == torch.arange(num_classes)[None, None, :])  # (S, B, K)
    weights = weights.to(embeddings.dtype)
    counts = weights.sum(dim=1)  # (S, K)

    centers = torch.einsum("sbk,sbp->skp", weights, embeddings) / counts.clamp(min=1)[..., None]
    distances = embedding_distance(embeddings[:, :, None, :], centers[:, None, :, :], kind)  # (S, B, K)
    sigmas = ((weights * distances**2).sum(dim=1) / counts.clamp(min=1)).sqrt()

    fitted = (counts >= min_samples_per_class).all(dim=1)
    if not bool(fitted.any()):
        raise ValueError(
            f"no subset has {min_samples_per_class} training subjects of every class; counts per subset and "
            f"class are {counts.long().tolist()}."
        )
    centers = centers * fitted[:, None, None]
    sigmas = sigmas * fitted[:, None]
    overall = centers[fitted].mean(dim=0)
    return {"centers": centers, "sigmas": sigmas, "overall": overall, "counts": counts.long(), "fitted": fitted}


@torch.no_grad()
def fit_subset_prototypes(
    network: MaskedFusionTransformer,
    batches: Iterable[Mapping[str, Any]],
    *,
    present_key: str = "present",
    label_key: str = "label",
    device: torch.device | str | None = None,
    min_samples_per_class: int = 2,
) -> SubsetPrototypes:
    """Fit per-subset prototypes of a trained network on the training batches.

    Each batch is encoded once; the fusion stage then runs for all ``S`` subsets in one call.

    Args:
        network: the trained network; it is put in eval mode for the pass and restored after.
        batches: training batches (dicts with one entry per modality name, ``present_key`` of
            shape ``(B, M)`` bool and ``label_key`` of shape ``(B,)``), e.g. a DataLoader. Use
            one without ``drop_last``, so that every training subject counts, and without
            shuffling, so that the sums run in a fixed order.
        present_key: batch key of the availability mask.
        label_key: batch key of the class labels.
        device: where to run; defaults to the device of the network's parameters.
        min_samples_per_class: see :func:`compute_subset_prototypes`.
    """
    if not isinstance(network, MaskedFusionTransformer):
        raise TypeError(f"network must be a MaskedFusionTransformer, got {type(network).__name__}.")
    if isinstance(batches, Mapping):
        raise TypeError("batches is a single batch (a mapping); pass an iterable of batches, e.g. [batch] or a DataLoader.")
    if isinstance(min_samples_per_class, bool) or not isinstance(min_samples_per_class, int) or min_samples_per_class < 1:
        raise ValueError(f"min_samples_per_class must be an int of at least 1, got {min_samples_per_class!r}.")
    if device is None:
        device = next(network.parameters()).device
    subsets = all_subsets(network.num_modalities).to(device)  # (S, M)
    num_subsets = subsets.shape[0]

    was_training = network.training
    network.eval()
    embeddings, labels, available = [], [], []
    try:
        for batch in batches:
            inputs, present, batch_labels = unpack_batch(
                batch, network, present_key=present_key, label_key=label_key, device=device
            )
            present = present.to(device)
            tokens = network.encode(inputs, present)  # (B, N, D); absent modalities give zero tokens
            batch_size = tokens.shape[0]

            masks = subsets[:, None, :].expand(num_subsets, batch_size, -1).reshape(-1, subsets.shape[1])
            repeated = tokens.repeat(num_subsets, 1, 1)  # (S * B, N, D), subset-major
            _, embedding = network.classify(network.fuse(repeated, masks))

            embeddings.append(embedding.view(num_subsets, batch_size, -1))
            labels.append(batch_labels.to(device))
            available.append((subsets[:, None, :] <= present[None, :, :]).all(dim=-1))  # s within present
    finally:
        network.train(was_training)
    if not labels:
        raise ValueError("fit_subset_prototypes received no batches; pass the training DataLoader.")

    statistics = compute_subset_prototypes(
        torch.cat(embeddings, dim=1),
        torch.cat(labels),
        torch.cat(available, dim=1),
        network.num_classes,
        network.embedding,
        min_samples_per_class,
    )
    for index in (~statistics["fitted"]).nonzero().flatten().tolist():
        logger.warning(
            "Subset %s has fewer than %d training subjects in some class (counts %s); the selector will reject it.",
            describe_subset(subsets[index], network.modality_names),
            min_samples_per_class,
            statistics["counts"][index].tolist(),
        )
    return SubsetPrototypes(
        **{name: value.cpu() for name, value in statistics.items()},
        subsets=subsets.cpu(),
        embedding=network.embedding,
        modality_names=list(network.modality_names),
        fingerprint=network_fingerprint(network),
    )


def _current_umask() -> int:
    """Return the process umask; reading it requires setting it, so it is restored at once."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
