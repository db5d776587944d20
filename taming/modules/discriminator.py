"""PatchGAN discriminators: pix2pix `NLayerDiscriminator` (taming-transformers, Open-MAGVIT2 images) and its 3-D
version `NLayerDiscriminator3D` (Open-MAGVIT2 video, from Open-Sora-Plan).

Parameter names match the released checkpoints (`loss.discriminator.main.{idx}.*`). The 2-D one with n_layers=3,
ndf=64 has 2,765,633 parameters and maps a 256x256 image to a 30x30 logit map (14x14 at 128x128); the 3-D one has
4,665,729 and maps a 17 x 128 x 128 clip to 5 x 16 x 16 logits.
"""
from typing import Sequence

from torch import nn

from .component import Component


def _patchgan(conv, norm, input_nc: int, ndf: int, n_layers: int, kernel: int, strides: Sequence) -> nn.Sequential:
    """conv/s2 + LeakyReLU, then n_layers conv + norm + LeakyReLU (strides[n - 1]; the last one stride 1), then a
    stride-1 conv to one logit channel. Widths ndf * min(2^n, 8)."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    pad = 1
    layers = [conv(input_nc, ndf, kernel, stride=2, padding=pad), nn.LeakyReLU(0.2, True)]
    mult = 1
    for n in range(1, n_layers + 1):
        prev, mult = mult, min(2**n, 8)
        layers += [conv(ndf * prev, ndf * mult, kernel, stride=strides[n - 1] if n < n_layers else 1, padding=pad,
                        bias=False),
                   norm(ndf * mult), nn.LeakyReLU(0.2, True)]
    layers.append(conv(ndf * mult, 1, kernel, stride=1, padding=pad))
    return nn.Sequential(*layers)


class NLayerDiscriminator(Component):
    """4x4 convolutions, strides 2 then 1. Input B x C x H x W in [-1, 1]; output B x 1 x h x w logits.

    BatchNorm as the reference; under DDP, the trainer flag `sync_batchnorm: true` turns it into
    SyncBatchNorm (same parameter objects and names).
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        self.main = _patchgan(nn.Conv2d, nn.BatchNorm2d, input_nc, ndf, n_layers, 4, [2] * n_layers)
        self.apply(init_weights)

    def forward(self, x):
        return self.main(x)


class NLayerDiscriminator3D(Component):
    """3x3x3 convolutions over the whole clip: strides 2, (2, 2, 2), then (1, 2, 2), the last two 1. Input
    B x C x T x H x W in [-1, 1]; output B x 1 x t x h x w logits (17 x 128 x 128 -> 5 x 16 x 16)."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        strides = [(2, 2, 2)] + [(1, 2, 2)] * (n_layers - 1)
        self.main = _patchgan(nn.Conv3d, nn.BatchNorm3d, input_nc, ndf, n_layers, 3, strides)
        self.apply(init_weights)

    def forward(self, x):
        if x.dim() != 5:
            raise ValueError(f"NLayerDiscriminator3D expects clips B x C x T x H x W, got shape {tuple(x.shape)}")
        return self.main(x)


def init_weights(m: nn.Module) -> None:
    """taming `weights_init`: conv weights N(0, 0.02) (biases keep PyTorch's default); BN gamma N(1, 0.02), beta 0."""
    if isinstance(m, (nn.Conv2d, nn.Conv3d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
