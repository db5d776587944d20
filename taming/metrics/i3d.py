"""The Inflated Inception-V1 (I3D, Kinetics-400) video network whose logits are the features of FVD.

Layout and names of the widely used PyTorch port (`InceptionI3d(400, in_channels=3)`, whose weights are published as
`i3d_pretrained_400.pt`, a bare state dict): units `<name>.conv3d` + `<name>.bn` (BatchNorm eps 1e-5) with
TensorFlow "SAME" padding computed from the input size, Inception blocks `Mixed_*` with branches b0, b1a/b1b,
b2a/b2b, b3b (b3a is the max pool), and `logits` (1x1x1 conv with bias) after a [2, 7, 7] average pool. `forward`
takes B x 3 x T x 224 x 224 clips in [-1, 1] and returns B x 400 logits averaged over the remaining time steps (the
FVD features; no softmax). `preprocess` turns uint8 clips into that input as the video evaluation does.
"""
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

INCEPTION_BLOCKS = (  # name, input channels, (b0, b1a, b1b, b2a, b2b, b3b) output channels
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)), ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)), ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)), ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)), ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)
POOLS = {"MaxPool3d_2a_3x3": ((1, 3, 3), (1, 2, 2)), "MaxPool3d_3a_3x3": ((1, 3, 3), (1, 2, 2)),
         "MaxPool3d_4a_3x3": ((3, 3, 3), (2, 2, 2)), "MaxPool3d_5a_2x2": ((2, 2, 2), (2, 2, 2))}


def _same_padding(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """TensorFlow SAME padding (zeros), the larger half after: pad = max(k - (s if n % s == 0 else n % s), 0)."""
    pads = []
    for size, k, s in zip(x.shape[2:], kernel, stride):
        pad = max(k - (s if size % s == 0 else size % s), 0)
        pads.append((pad // 2, pad - pad // 2))
    (tf, tb), (hf, hb), (wf, wb) = pads
    return F.pad(x, (wf, wb, hf, hb, tf, tb))


class Unit3D(nn.Module):
    """SAME-padded Conv3d (no bias), BatchNorm3d (eps 1e-5, as the FVD port), ReLU; the logits unit has a bias and
    neither."""

    def __init__(self, in_channels: int, out_channels: int, kernel=(1, 1, 1), stride=(1, 1, 1), logits: bool = False):
        super().__init__()
        self.kernel, self.stride, self.logits = tuple(kernel), tuple(stride), logits
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, stride=self.stride, bias=logits)
        if not logits:
            self.bn = nn.BatchNorm3d(out_channels, eps=1e-5, momentum=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_padding(x, self.kernel, self.stride))
        return x if self.logits else F.relu(self.bn(x))


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_same_padding(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    def __init__(self, in_channels: int, out: Sequence[int]):
        super().__init__()
        self.b0 = Unit3D(in_channels, out[0])
        self.b1a = Unit3D(in_channels, out[1])
        self.b1b = Unit3D(out[1], out[2], (3, 3, 3))
        self.b2a = Unit3D(in_channels, out[3])
        self.b2b = Unit3D(out[3], out[4], (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, out[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """I3D up to its 400 logits (module docstring); `endpoints` are the blocks in order (for tracing)."""

    def __init__(self, num_classes: int = 400, in_channels: int = 3):
        super().__init__()
        self.logits = Unit3D(1024, num_classes, logits=True)  # registered first: the release's key order
        layers = [("Conv3d_1a_7x7", Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))),
                  ("MaxPool3d_2a_3x3", MaxPool3dSame(*POOLS["MaxPool3d_2a_3x3"])),
                  ("Conv3d_2b_1x1", Unit3D(64, 64)), ("Conv3d_2c_3x3", Unit3D(64, 192, (3, 3, 3))),
                  ("MaxPool3d_3a_3x3", MaxPool3dSame(*POOLS["MaxPool3d_3a_3x3"]))]
        for name, channels, out in INCEPTION_BLOCKS:
            if name == "Mixed_4b":
                layers.append(("MaxPool3d_4a_3x3", MaxPool3dSame(*POOLS["MaxPool3d_4a_3x3"])))
            if name == "Mixed_5b":
                layers.append(("MaxPool3d_5a_2x2", MaxPool3dSame(*POOLS["MaxPool3d_5a_2x2"])))
            layers.append((name, InceptionBlock(channels, out)))
        for name, module in layers:
            self.add_module(name, module)
        self.endpoints = [name for name, _ in layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.endpoints:
            x = getattr(self, name)(x)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)
        return self.logits(x).squeeze(4).squeeze(3).mean(dim=2)


def preprocess(clips: torch.Tensor, size: int = 224) -> torch.Tensor:
    """uint8 clips B x T x H x W x 3 -> B x 3 x T x size x size float in [-1, 1] (bilinear, align_corners False),
    as the video evaluation prepares I3D's input."""
    b, t, h, w, c = clips.shape
    frames = clips.permute(0, 1, 4, 2, 3).reshape(b * t, c, h, w).float()
    frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
    return (2 * frames.view(b, t, c, size, size).permute(0, 2, 1, 3, 4) / 255.0 - 1).contiguous()


def random_i3d_state(seed: int, num_classes: int = 400) -> dict:
    """I3D weights in the release layout drawn by the rule of the reference fixtures (real format, random values): one
    generator over the state-dict order; conv weights randn * sqrt(2 / fan_in), logits bias 0.01 randn, BN weight
    1 + 0.1 randn, bias and running mean 0.1 randn, running var 0.5 + rand."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in InceptionI3d(num_classes).state_dict().items()}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
        elif key.endswith("conv3d.weight"):
            state[key] = torch.randn(shape, generator=gen) * math.sqrt(2 / math.prod(shape[1:]))
        elif key.endswith("conv3d.bias"):
            state[key] = 0.01 * torch.randn(shape, generator=gen)
        elif key.endswith("bn.weight"):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith(("bn.bias", "bn.running_mean")):
            state[key] = 0.1 * torch.randn(shape, generator=gen)
        else:  # bn.running_var
            state[key] = 0.5 + torch.rand(shape, generator=gen)
    return state


I3D_FILE = "i3d_pretrained_400.pt"


def load_i3d(path=None, option: str = "--i3d_weights", device="cpu") -> InceptionI3d:
    """The Kinetics-400 I3D in eval mode from `path` or the torch hub cache (`<hub>/checkpoints/i3d_pretrained_400.pt`),
    loaded strictly; a missing file is an error naming it, where it was looked for and where it is published."""
    from ..checkpoints import load_state_dict_strict, read_checkpoint
    from ..pretrained import resolve_weight_file

    file = resolve_weight_file(I3D_FILE, path, option)
    net = InceptionI3d()
    load_state_dict_strict(net, read_checkpoint(file, "cpu", False), f"I3D weights {file}")
    return net.eval().to(device)


def clips_to_uint8(clips: torch.Tensor, truncate: bool = True) -> torch.Tensor:
    """B x 3 x T x H x W in [-1, 1] -> B x T x H x W x 3 uint8. `truncate=True` is the released video evaluation's
    conversion ((x + 1) / 2 * 255 cast to uint8: about a third of the pixel values of an exact round trip come back
    one lower), kept to compare with its rFVD; `truncate=False` rounds."""
    scaled = (clips.clamp(-1, 1) + 1) / 2 * 255.0
    scaled = scaled if truncate else scaled.round()
    return scaled.movedim(1, -1).to(torch.uint8)
