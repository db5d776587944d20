"""PatchGAN discriminator (pix2pix `NLayerDiscriminator`, as used by taming-transformers and Open-MAGVIT2).

Parameter names match the released checkpoints (`loss.discriminator.main.{idx}.*`). With n_layers=3,
ndf=64 it has 2,765,633 parameters and maps a 256x256 image to a 30x30 logit map (14x14 at 128x128).
"""
from torch import nn

from .component import Component


class NLayerDiscriminator(Component):
    """conv4x4/s2 + LeakyReLU, then n_layers conv4x4 (stride 2, last one stride 1) + norm + LeakyReLU,
    then a conv4x4/s1 to one logit channel. Input B x C x H x W in [-1, 1]; output B x 1 x h x w logits.

    BatchNorm as the reference; under DDP, the trainer flag `sync_batchnorm: true` turns it into
    SyncBatchNorm (same parameter objects and names).
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        layers = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):  # the last of these keeps the resolution (stride 1)
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2 if n < n_layers else 1, padding=1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, x):
        return self.main(x)


def init_weights(m: nn.Module) -> None:
    """taming `weights_init`: conv weights N(0, 0.02) (biases keep PyTorch's default); BN gamma N(1, 0.02), beta 0."""
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
