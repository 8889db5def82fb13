"""Image encoders built from MONAI's ResNet that return a token sequence.

Shape letters: ``B`` batch, ``C`` channels, ``H``/``W``/``D`` spatial size, ``T`` cine frames,
``N`` tokens, ``F`` feature width of the last ResNet stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from monai.networks.nets import ResNet
from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck
from torch import nn

ImageKind = Literal["2d", "2d+t", "3d"]
IMAGE_KINDS: tuple[str, ...] = ("2d", "2d+t", "3d")

# Block type and blocks per stage of the ResNet depths in MONAI's ``resnet_params`` table.
RESNET_LAYOUTS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet10": (ResNetBlock, [1, 1, 1, 1]),
    "resnet18": (ResNetBlock, [2, 2, 2, 2]),
    "resnet34": (ResNetBlock, [3, 4, 6, 3]),
    "resnet50": (ResNetBottleneck, [3, 4, 6, 3]),
}


class ImageEncoder(nn.Module):
    """ResNet feature extractor whose last feature map, pooled to a fixed grid, gives the tokens.

    The network is MONAI's :class:`~monai.networks.nets.ResNet` without its pooling and fully
    connected head. The last stage's feature map is average-pooled to ``token_grid`` and each grid
    cell becomes one token, so the token count does not depend on the input size.

    Inputs by ``kind``:

    - ``"2d"``: ``(B, C, H, W)``, e.g. one cardiac MRI frame or a natural image.
    - ``"2d+t"``: ``(B, C, H, W, T)``, a cine MRI with time as the last axis. It runs a 3D ResNet
      whose first convolution keeps the temporal resolution (kernel 3, stride 1 along ``T``).
    - ``"3d"``: ``(B, C, H, W, D)``, a volume.

    Output: tokens ``(B, N, F)`` with ``N = prod(token_grid)`` and ``F = out_features``.

    The ResNet uses BatchNorm, so a training batch needs at least 2 subjects with this modality.

    NOTE: MONAI 1.6.1's ``ResNet`` applies its ``norm`` argument to the first layer only (the
    residual stages always build BatchNorm), so this encoder offers no other normalisation.

    Args:
        kind: ``"2d"``, ``"2d+t"`` or ``"3d"``.
        in_channels: channels ``C`` of the input.
        backbone: ``"resnet10"``, ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        widths: channels of the four ResNet stages before the bottleneck expansion; the published
            ResNet widths are ``(64, 128, 256, 512)``, smaller ones suit a CPU.
        token_grid: grid the last feature map is pooled to; 2 entries for ``"2d"``, 3 otherwise.
            ``(4, 4)`` gives the 16 tokens of the published CAD encoder.
        small_input_stem: replace the first 7x7 convolution by a 3x3 one (stride 2) and drop the
            max pooling, so that a 28 x 28 image keeps a 2 x 2 last feature map instead of 1 x 1.
    """

    def __init__(
        self,
        kind: ImageKind = "2d",
        in_channels: int = 1,
        backbone: str = "resnet18",
        widths: Sequence[int] = (64, 128, 256, 512),
        token_grid: Sequence[int] = (4, 4),
        small_input_stem: bool = False,
    ) -> None:
        super().__init__()
        if kind not in IMAGE_KINDS:
            raise ValueError(f"kind must be one of {IMAGE_KINDS}, got {kind!r}.")
        if backbone not in RESNET_LAYOUTS:
            raise ValueError(f"backbone must be one of {sorted(RESNET_LAYOUTS)}, got {backbone!r}.")
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"widths must be 4 positive channel counts, got {list(widths)}.")
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}.")
        spatial_dims = 2 if kind == "2d" else 3
        if len(token_grid) != spatial_dims or min(token_grid) < 1:
            raise ValueError(
                f"token_grid must have {spatial_dims} positive entries for kind {kind!r}, got {list(token_grid)}."
            )

        block, layers = RESNET_LAYOUTS[backbone]
        first_kernel: int | tuple[int, ...] = 7
        first_stride: int | tuple[int, ...] = 2
        if kind == "2d+t":
            first_kernel, first_stride = (7, 7, 3), (2, 2, 1)
        if small_input_stem:
            if kind != "2d":
                raise ValueError(f"small_input_stem is for kind '2d' images, got kind {kind!r}.")
            first_kernel, first_stride = 3, 2

        self.kind = kind
        self.spatial_dims = spatial_dims
        self.resnet = ResNet(
            block=block,
            layers=layers,
            block_inplanes=list(widths),
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=first_kernel,
            conv1_t_stride=first_stride,
            no_max_pool=bool(small_input_stem),
            feed_forward=False,
        )
        self.uses_batch_norm = any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in self.resnet.modules())
        pool = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d
        self.token_pool = pool(tuple(token_grid))
        self.num_tokens = int(torch.tensor(list(token_grid)).prod())
        self.out_features = widths[3] * block.expansion

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Encode images ``(B, C, *spatial)`` into tokens ``(B, N, F)``."""
        if image.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"ImageEncoder(kind={self.kind!r}) expects a {self.spatial_dims + 2}-D input "
                f"(B, C, *spatial), got shape {tuple(image.shape)}."
            )
        if self.training and self.uses_batch_norm and image.shape[0] < 2:
            raise ValueError(
                f"ImageEncoder with BatchNorm got a training batch of {image.shape[0]} image(s) and needs at least 2. "
                "Batches whose subjects mostly lack this modality can hold a single image even with drop_last=True; "
                "use larger batches, or batches sampled so that each has at least 2 subjects with the image."
            )
        net = self.resnet
        x = net.act(net.bn1(net.conv1(image)))
        if not net.no_max_pool:
            x = net.maxpool(x)
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))

        x = self.token_pool(x)  # (B, F, *token_grid)
        return x.flatten(2).transpose(1, 2)  # (B, N, F)
