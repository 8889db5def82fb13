"""MONAI dictionary transforms that load one image modality and keep absent images collatable.

Shape letters: ``C`` channels, ``H``/``W`` in-plane size, ``D`` slices, ``T`` cine frames.
Image kinds follow :class:`pipeline.networks.ImageEncoder`: ``"2d"`` gives ``(C, H, W)``,
``"2d+t"`` gives ``(C, H, W, T)`` and ``"3d"`` gives ``(C, H, W, D)``.

A typical chain for a modality ``cine``::

    Compose([
        LoadModalityImaged("cine", cache_dir, kind="2d+t"),
        MarkAbsentModalityd("cine", spatial_shape=(96, 96, 16)),
        image_preprocessing("cine", spatial_shape=(96, 96, 16), kind="2d+t"),
    ])

Absent images are zero placeholders with ``present_<modality> = False``. The preprocessing skips
them and ends by converting every image to a plain float32 tensor, so a batch that mixes present
and absent subjects collates. The subject id must be carried in its own key, because image
metadata does not survive that conversion.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    Resized,
    ScaleIntensityd,
    Spacingd,
)

from pipeline.data.image_cache import cache_series_as_nifti
from pipeline.data.nifti import ImageKind, arrange_for_kind, load_nifti

logger = logging.getLogger(__name__)

IntensityScaling = Literal["normalize", "scale", "none"]
IMAGE_KINDS = ("2d", "2d+t", "3d")
# Axis labels of RAS codes; every affine made here is RAS, whatever the space key of the metadata.
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def is_absent(value: Any) -> bool:
    """Return True for the values a manifest uses for "no image": None, NaN and empty strings."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    return isinstance(value, float) and np.isnan(value)


def present_flag_key(key: Hashable) -> str:
    """Return the key of the per-modality presence flag, ``present_<modality>``."""
    return f"present_{key}"


def _check_kind(kind: str) -> None:
    if kind not in IMAGE_KINDS:
        raise ValueError(f"kind must be one of {IMAGE_KINDS}, got {kind!r}")


class LoadModalityImaged(MapTransform):
    """Load each key's NIfTI file or DICOM series folder as a channel-first float32 MetaTensor.

    A DICOM folder is converted once through :func:`cache_series_as_nifti`, so both inputs go
    through the same NIfTI reader (:func:`load_nifti`, nibabel, sform before qform). The affine is
    RAS, as MONAI's readers produce with their default ``affine_lps_to_ras=True``. Absent values
    (None, NaN, empty string) are left unchanged for :class:`MarkAbsentModalityd`.

    Args:
        keys: image modality keys.
        cache_dir: folder for NIfTI files converted from DICOM.
        series_rule: SeriesDescription regular expression used when a folder has several series.
        kind: ``"2d"``, ``"2d+t"`` or ``"3d"``, see :func:`arrange_for_kind`.
        frame: time point picked from a 4D cine when ``kind`` is ``"2d"`` or ``"3d"``.
        read_options: keyword arguments of :func:`pipeline.data.dicom.read_series`.
        allow_missing_keys: skip keys missing from the dictionary instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection,
        cache_dir: str | Path,
        series_rule: str | None = None,
        kind: ImageKind = "3d",
        frame: int | None = None,
        read_options: Mapping[str, Any] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        _check_kind(kind)
        self.cache_dir = Path(cache_dir)
        self.series_rule = series_rule
        self.kind = kind
        self.frame = frame
        self.read_options = dict(read_options or {})

    def load(self, value: str | Path) -> MetaTensor:
        """Load one path as ``(1, *spatial)`` with the affine and file name in its metadata."""
        path = Path(value)
        source = path
        if path.is_dir():
            path = cache_series_as_nifti(path, self.cache_dir, self.series_rule, **self.read_options)

        array, affine, info = load_nifti(path)
        spatial = arrange_for_kind(array, self.kind, source, self.frame)
        meta = {
            "filename_or_obj": str(source),
            "space": "RAS",
            "original_affine": affine,
            "spatial_shape": np.asarray(spatial.shape),
            "kind": self.kind,
        }
        return MetaTensor(torch.from_numpy(np.ascontiguousarray(spatial[np.newaxis])), affine=torch.as_tensor(affine), meta=meta)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if not is_absent(d[key]):
                d[key] = self.load(d[key])
        return d


class MarkAbsentModalityd(MapTransform):
    """Replace absent images with zeros and record which modalities are present.

    Each item gets ``present_<modality>`` (a bool tensor) and ``item[present_key][modality]``,
    a dict that other modalities' transforms extend and that collates to ``{modality: (B,)}``.

    Args:
        keys: image modality keys.
        spatial_shape: spatial shape of the placeholder, the same as the preprocessing output,
            e.g. ``(H, W, T)``.
        present_key: key of the dict of presence flags.
        channels: channels ``C`` of the placeholder ``(C, *spatial_shape)``.
        allow_missing_keys: treat a key missing from the dictionary as an absent image.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_shape: Sequence[int],
        present_key: str = "present",
        channels: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not spatial_shape or any(int(size) <= 0 for size in spatial_shape):
            raise ValueError(f"spatial_shape must be positive sizes, got {spatial_shape!r}")
        self.spatial_shape = tuple(int(size) for size in spatial_shape)
        self.present_key = present_key
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        flags = dict(d.get(self.present_key) or {})
        for key in self.keys:
            if key not in d and not self.allow_missing_keys:
                raise KeyError(f"Key {key!r} is missing from the data dictionary")
            present = not is_absent(d.get(key))
            if not present:
                d[key] = torch.zeros((self.channels, *self.spatial_shape), dtype=torch.float32)
            d[present_flag_key(key)] = torch.tensor(present)
            flags[key] = torch.tensor(present)
        d[self.present_key] = flags
        return d


class ApplyToPresentd(MapTransform):
    """Apply a dictionary transform only when ``present_<key>`` is True, leaving placeholders alone."""

    def __init__(self, key: Hashable, transform: Callable[[dict], dict]) -> None:
        super().__init__([key])
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        key = self.keys[0]
        flag = data.get(present_flag_key(key))
        if flag is None:
            raise KeyError(f"{present_flag_key(key)!r} is missing; run MarkAbsentModalityd first")
        return self.transform(dict(data)) if bool(flag) else dict(data)


class CheckShaped(MapTransform):
    """Raise when an image's shape differs from the configured one, naming the file and both shapes."""

    def __init__(self, keys: KeysCollection, shape: Sequence[int]) -> None:
        super().__init__(keys)
        self.shape = tuple(shape)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        for key in self.keys:
            image = data[key]
            if tuple(image.shape) != self.shape:
                source = getattr(image, "meta", {}).get("filename_or_obj", "a placeholder")
                raise ValueError(f"{key}: image from {source} has shape {tuple(image.shape)}, expected {self.shape}")
        return dict(data)


def image_preprocessing(
    keys: KeysCollection,
    spatial_shape: Sequence[int],
    kind: ImageKind = "3d",
    axcodes: str = "RAS",
    pixdim: Sequence[float] | None = None,
    intensity: IntensityScaling = "normalize",
    channels: int = 1,
) -> Compose:
    """Build the preprocessing of one image modality, applied only to present images.

    Each step skips placeholders:

    1. For ``"3d"`` only: ``Orientationd(axcodes)``, and ``Spacingd`` when ``pixdim`` is set.
    2. Intensity scaling: ``"normalize"`` (zero mean, unit variance), ``"scale"`` (to [0, 1]) or
       ``"none"``.
    3. ``Resized`` to ``spatial_shape``.

    Every image then has its shape checked and becomes a plain float32 tensor.

    NOTE: for ``"2d"`` and ``"2d+t"`` the in-plane orientation stays as acquired. Orientationd
    treats the third axis as spatial, so it would permute the time axis of an oblique cine.
    Resizing ``T`` interpolates linearly in time.

    Args:
        keys: image modality keys.
        spatial_shape: output size, ``(H, W)``, ``(H, W, T)`` or ``(H, W, D)`` by ``kind``.
        kind: ``"2d"``, ``"2d+t"`` or ``"3d"``.
        axcodes: orientation codes for ``"3d"``.
        pixdim: target spacing in mm for ``"3d"``; None keeps the input spacing.
        intensity: ``"normalize"``, ``"scale"`` or ``"none"``.
        channels: channels ``C`` expected in the output ``(C, *spatial_shape)``.
    """
    _check_kind(kind)
    rank = 2 if kind == "2d" else 3
    if len(spatial_shape) != rank:
        raise ValueError(f"spatial_shape for kind {kind!r} needs {rank} sizes, got {tuple(spatial_shape)}")
    if intensity not in ("normalize", "scale", "none"):
        raise ValueError(f"intensity must be 'normalize', 'scale' or 'none', got {intensity!r}")

    key_list = [keys] if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence) else list(keys)
    steps: list[Callable] = []
    for key in key_list:
        per_key: list[Callable] = []
        if kind == "3d":
            per_key.append(Orientationd(key, axcodes=axcodes, labels=RAS_LABELS))
            if pixdim is not None:
                per_key.append(Spacingd(key, pixdim=pixdim, mode="bilinear"))
        if intensity == "normalize":
            per_key.append(NormalizeIntensityd(key))
        elif intensity == "scale":
            per_key.append(ScaleIntensityd(key, minv=0.0, maxv=1.0))
        per_key.append(Resized(key, spatial_size=tuple(spatial_shape), mode="bilinear" if rank == 2 else "trilinear"))
        steps.extend(ApplyToPresentd(key, transform) for transform in per_key)

    steps.append(CheckShaped(key_list, (channels, *spatial_shape)))
    steps.append(EnsureTyped(key_list, data_type="tensor", dtype=torch.float32, track_meta=False))
    return Compose(steps)
