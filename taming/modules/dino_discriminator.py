"""GigaTok's DINO discriminator (`disc_type: dinodisc`; after VAR's and ImageFolder's).

A frozen DINO (v1) ViT-S/16, timm's `vit_small_patch16_224` with the official release file
`dino_deitsmall16_pretrain.pth` (what torch hub's `facebookresearch/dino` entry `dino_vits16` downloads into
`torch.hub.get_dir()/checkpoints/`; its keys are timm's), feeds trainable heads. Five token maps are read
out (patch tokens + class token, B x 384 x 196): after the position embedding and after blocks 2, 5, 8, 11.
Each head maps one to a logit per token; the logits are concatenated, B x 980.

Checkpoints: GigaTok holds the backbone outside its module tree, so its discriminator checkpoints carry only
the heads; here the backbone is a registered, frozen submodule (it follows `.to()`, stays in eval mode) that
is left out of `state_dict()`, so checkpoints again carry only the heads and the weights come from the file.

Two details follow GigaTok rather than the DINO release: the backbone MLPs use the tanh approximation of
GELU (`exact_gelu=False`; DINO itself uses the exact GELU), and the key bias of every attention block is
zeroed (softmax-invariant, so it does not change the features).
"""
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..pretrained import resolve_weight_file
from .component import register
from .diffaug import DiffAug
from .semantic import IMAGENET_MEAN, IMAGENET_STD, build_timm, check_images, exclude_from_state_dict

DINO_VITS16_FILE = "dino_deitsmall16_pretrain.pth"
DINO_SIZE = 224  # 14x14 patches of 16 pixels


class BatchNormLocal(nn.Module):
    """BatchNorm with "virtual batches": B x C x L is split into ceil(B / virtual_batch) groups of (nearly)
    equal size and each group is normalised with its own per-channel mean/variance over samples and tokens
    (biased variance, no running averages, also in eval mode), then scaled and shifted. Float32 output.
    """

    def __init__(self, channels: int, virtual_batch: int = 8, eps: float = 1e-6):
        super().__init__()
        if virtual_batch < 1:
            raise ValueError(f"virtual_batch must be >= 1, got {virtual_batch}")
        self.virtual_batch, self.eps = virtual_batch, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def extra_repr(self) -> str:
        return f"{len(self.weight)}, virtual_batch={self.virtual_batch}, eps={self.eps}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = -(-x.shape[0] // self.virtual_batch)
        out = []
        for g in x.float().tensor_split(groups):
            var, mean = torch.var_mean(g, dim=(0, 2), correction=0, keepdim=True)
            out.append((g - mean) * torch.rsqrt(var + self.eps))
        return torch.cat(out) * self.weight[:, None] + self.bias[:, None]


class Residual(nn.Module):
    """(fn(x) + x) / sqrt(2)"""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return (self.fn(x) + x) / math.sqrt(2)


def head_conv(c_in: int, c_out: int, kernel_size: int, spectral: bool) -> nn.Module:
    conv = nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2, padding_mode="circular")
    return spectral_norm(conv) if spectral else conv


def head_block(channels: int, kernel_size: int, virtual_batch: int, eps: float, spectral: bool) -> nn.Sequential:
    return nn.Sequential(head_conv(channels, channels, kernel_size, spectral),
                         BatchNormLocal(channels, virtual_batch, eps), nn.LeakyReLU(0.2))


def make_head(channels: int, kernel_size: int = 9, virtual_batch: int = 8, eps: float = 1e-6,
              spectral: bool = True) -> nn.Sequential:
    """B x C x L -> B x 1 x L: 1x1 block, residual circular k-block, 1x1 conv to one logit per token."""
    return nn.Sequential(head_block(channels, 1, virtual_batch, eps, spectral),
                         Residual(head_block(channels, kernel_size, virtual_batch, eps, spectral)),
                         head_conv(channels, 1, 1, spectral))


@register
class DinoDiscriminator(nn.Module):
    """Frozen DINO ViT-S/16 + 1 + len(key_depths) trainable token heads.

    forward(images, generator=None): B x 3 x H x W in [-1, 1] -> B x num_logits float32 logits
    (num_logits = 196 per head, 980 with the default taps). In order:
    1. DiffAug (translation, colour, cutout 0.2, prob 1.0) when `diffaug_prob` > 0, in every call
       (train and eval, as GigaTok applies it to both real and fake images);
    2. ImageNet normalisation, then to 224x224: images larger than 224 in both sides are, per image, randomly
       cropped with probability `crop_prob` (GigaTok 0.5) and otherwise area-downsampled; others are
       resized bicubically;
    3. backbone read-outs -> heads -> concatenated logits.
    `generator` (on the images' device) seeds steps 1-2. Gradients reach the input images; the frozen
    backbone gets none (its parameters never require grad: keep them out of optimizers or let them be skipped).
    """

    def __init__(self, weights_path=None, option: Optional[str] = "weights_path",
                 key_depths: Sequence[int] = (2, 5, 8, 11), kernel_size: int = 9, virtual_batch: int = 8,
                 norm_eps: float = 1e-6, spectral: bool = True, diffaug_prob: float = 1.0, cutout: float = 0.2,
                 crop_prob: float = 0.5, exact_gelu: bool = False):
        super().__init__()
        key_depths = tuple(key_depths)
        if not key_depths or list(key_depths) != sorted(set(key_depths)) or key_depths[0] < 0 or key_depths[-1] > 11:
            raise ValueError(f"key_depths must be increasing block indices in [0, 11], got {key_depths}")
        for name, p in (("crop_prob", crop_prob), ("diffaug_prob", diffaug_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        weight_file = resolve_weight_file(DINO_VITS16_FILE, weights_path, option)
        state = torch.load(weight_file, map_location="cpu", weights_only=True)
        if not (isinstance(state, dict) and {"cls_token", "pos_embed", "blocks.0.attn.qkv.bias"} <= set(state)):
            raise ValueError(f"{weight_file} is not the DINO ViT-S/16 release state dict {DINO_VITS16_FILE} "
                             "(keys `cls_token`, `pos_embed`, `blocks.<i>.attn.qkv.*`, ... expected)")
        width = state["cls_token"].shape[-1]
        for key in [k for k in state if k.endswith(".attn.qkv.bias")]:
            state[key] = state[key].clone()
            state[key][width:2 * width] = 0  # key bias (rows [C, 2C) of the q, k, v stack)
        try:
            self.backbone = build_timm("vit_small_patch16_224", state, num_classes=0,
                                       act_layer=None if exact_gelu else "gelu_tanh")
        except RuntimeError as err:
            raise ValueError(f"{weight_file} does not hold DINO ViT-S/16 weights ({DINO_VITS16_FILE}): {err}") from None
        exclude_from_state_dict(self, "backbone")

        self.key_depths, self.crop_prob = key_depths, crop_prob
        self.num_logits = (len(key_depths) + 1) * self.backbone.patch_embed.num_patches
        self.heads = nn.ModuleList(make_head(width, kernel_size, virtual_batch, norm_eps, spectral)
                                   for _ in range(len(key_depths) + 1))
        self.diffaug = DiffAug(diffaug_prob, cutout=cutout) if diffaug_prob > 0 else None
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("scale", 0.5 / std, persistent=False)  # [-1, 1] -> ImageNet-normalised
        self.register_buffer("shift", (0.5 - mean) / std, persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def to_backbone_input(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """B x 3 x H x W in [-1, 1] -> B x 3 x 224 x 224 float32, ImageNet-normalised (step 2 above)."""
        x = images.float() * self.scale.float() + self.shift.float()
        b, _, h, w = x.shape
        if (h, w) == (DINO_SIZE, DINO_SIZE):
            return x
        if h < DINO_SIZE or w < DINO_SIZE:
            return F.interpolate(x, size=(DINO_SIZE, DINO_SIZE), mode="bicubic", align_corners=False)
        resized = F.interpolate(x, size=(DINO_SIZE, DINO_SIZE), mode="area")
        if h == DINO_SIZE or w == DINO_SIZE or self.crop_prob == 0:
            return resized
        u = torch.rand(3, b, device=x.device, generator=generator)
        top = (u[0] * (h - DINO_SIZE + 1)).floor().long()
        left = (u[1] * (w - DINO_SIZE + 1)).floor().long()
        rows = (top[:, None] + torch.arange(DINO_SIZE, device=x.device))[:, None, :, None]
        cols = (left[:, None] + torch.arange(DINO_SIZE, device=x.device))[:, None, None, :]
        crops = x.gather(2, rows.expand(b, 3, DINO_SIZE, w)).gather(3, cols.expand(b, 3, DINO_SIZE, DINO_SIZE))
        return torch.where((u[2] < self.crop_prob).view(b, 1, 1, 1), crops, resized)

    def features(self, x: torch.Tensor) -> list:
        """Backbone input B x 3 x 224 x 224 -> 1 + len(key_depths) read-outs B x 384 x 196 (patch + class token)."""
        bb = self.backbone
        tokens = bb.patch_embed(x.to(bb.cls_token.dtype))
        with torch.autocast(x.device.type, enabled=False):
            tokens = torch.cat([bb.cls_token.float().expand(len(x), -1, -1), tokens.float()], 1) + bb.pos_embed.float()
        readouts = [tokens]
        for i in range(self.key_depths[-1] + 1):
            tokens = bb.blocks[i](tokens)
            if i in self.key_depths:
                readouts.append(tokens)
        return [(t[:, 1:].float() + t[:, :1].float()).transpose(1, 2) for t in readouts]

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        check_images(images, type(self).__name__)
        if self.diffaug is not None:
            images = self.diffaug(images, generator)
        feats = self.features(self.to_backbone_input(images, generator))
        return torch.cat([head(f).flatten(1).float() for head, f in zip(self.heads, feats)], dim=1)
