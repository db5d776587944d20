"""MAGVIT-2 convolutional encoder and decoder (Open-MAGVIT2 `improved_model.py`, re-implemented).

Parameter names match the released Open-MAGVIT2 checkpoints (`encoder.down.{l}.block.{i}.conv1.weight`,
`decoder.up.{l}.upsample.conv1.bias`, `decoder.adaptive.{l}.gamma.weight`, ...). Both networks are fully
convolutional: a model trained at 128x128 runs at 256 or 512 and returns a proportionally larger token grid.
"""
from typing import Callable

import torch
import torch.utils.checkpoint
from einops import rearrange
from torch import nn

from .codec import TokenDecoder, TokenEncoder

NORM_GROUPS = 32
NORM_EPS = 1e-6


def group_norm(channels: int, affine: bool = True) -> nn.GroupNorm:
    if channels % NORM_GROUPS:
        raise ValueError(
            f"{channels} channels cannot be split into {NORM_GROUPS} GroupNorm groups; "
            f"choose `ch` so that every ch * ch_mult[l] is a multiple of {NORM_GROUPS}"
        )
    return nn.GroupNorm(NORM_GROUPS, channels, eps=NORM_EPS, affine=affine)


def depth_to_space(x: torch.Tensor, block_size: int = 2) -> torch.Tensor:
    """B x (s*s*C) x H x W -> B x C x sH x sW in "DCR" order.

    Input channel k = (i*s + j)*C + c lands on output pixel (s*h + i, s*w + j), channel c. This is NOT
    PyTorch's PixelShuffle order (k = c*s*s + i*s + j); the released checkpoints depend on DCR.
    """
    return rearrange(x, "b (i j c) h w -> b c (h i) (w j)", i=block_size, j=block_size)


def conv2d(in_channels: int, out_channels: int, kernel: int, bias: bool) -> nn.Module:
    """k x k convolution keeping the size (zero padding k // 2)."""
    return nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=bias)


class ResBlock(nn.Module):
    """Pre-activation residual block: GN-swish-conv3x3-GN-swish-[dropout]-conv3x3 + identity or 1x1 `nin_shortcut`.

    MAGVIT-2 (Open-MAGVIT2) convolutions have no bias; the VQGAN-lineage networks (LlamaGen, GigaTok) use
    `bias=True` and optional dropout. Parameter names are the same in both. `conv(in, out, kernel, bias)` makes the
    convolutions (default 2-D; the video tokenizer passes causal 3-D ones).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False, dropout: float = 0.0,
                 conv: Callable[..., nn.Module] = conv2d):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = conv(in_channels, out_channels, 3, bias)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(out_channels, out_channels, 3, bias)
        if in_channels != out_channels:
            self.nin_shortcut = conv(in_channels, out_channels, 1, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = self.conv2(self.dropout(nn.functional.silu(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class Upsampler(nn.Module):
    """conv3x3 C -> 4C, then depth-to-space x2 (DCR order)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4 * channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.conv1(x), 2)


class AdaptiveGroupNorm(nn.Module):
    """v2 decoder conditioning: gamma(std of the quantized latent) * GN(x) + beta(mean of the latent).

    Statistics are per sample and latent channel over all token positions (space, and time for video); the
    variance is the unbiased one (as the reference), so a single-token latent is not supported.
    """

    def __init__(self, z_channels: int, channels: int):
        super().__init__()
        self.norm = group_norm(channels, affine=False)
        self.gamma = nn.Linear(z_channels, channels)
        self.beta = nn.Linear(z_channels, channels)

    def forward(self, x: torch.Tensor, quant: torch.Tensor) -> torch.Tensor:
        flat = quant.flatten(2)
        std = (flat.var(dim=-1) + NORM_EPS).sqrt()
        expand = (slice(None), slice(None)) + (None,) * (x.dim() - 2)  # B x C -> B x C x 1 ... 1
        return self.norm(x) * self.gamma(std)[expand] + self.beta(flat.mean(dim=-1))[expand]


class _Level(nn.Module):
    """One resolution level: `block` (ResBlocks) and an optional `downsample`/`upsample` module."""

    def __init__(self, blocks: list):
        super().__init__()
        self.block = nn.ModuleList(blocks)


def _res_stack(in_channels: int, out_channels: int, n: int, conv: Callable = conv2d) -> list:
    return [ResBlock(in_channels if i == 0 else out_channels, out_channels, conv=conv) for i in range(n)]


def encoder_levels(ch: int, ch_mult, num_res_blocks: int, downsample: Callable[[int, int], nn.Module],
                   conv: Callable = conv2d) -> tuple:
    """(down levels, middle blocks, output width) of a MAGVIT-2 encoder: level l has num_res_blocks ResBlocks to
    ch * ch_mult[l] channels and, except the last, `downsample(width, ch_mult[l])`; `conv` builds their convolutions."""
    down, block_in = nn.ModuleList(), ch
    for level, mult in enumerate(ch_mult):
        block_out = ch * mult
        stage = _Level(_res_stack(block_in, block_out, num_res_blocks, conv))
        if level < len(ch_mult) - 1:
            stage.downsample = downsample(block_out, mult)
        down.append(stage)
        block_in = block_out
    return down, nn.ModuleList(_res_stack(block_in, block_in, num_res_blocks, conv)), block_in


def _check_arch(ch: int, ch_mult, num_res_blocks: int, z_channels: int) -> None:
    if not ch_mult or any(int(m) < 1 for m in ch_mult):
        raise ValueError(f"ch_mult must be a non-empty list of positive ints, got {ch_mult}")
    if num_res_blocks < 1 or ch < 1 or z_channels < 1:
        raise ValueError(f"ch, num_res_blocks and z_channels must be >= 1 (got {ch}, {num_res_blocks}, {z_channels})")


def run_block(net: nn.Module, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """block(h), under activation checkpointing when `net.grad_checkpointing` is set and gradients are on (the
    block's activations are recomputed in the backward instead of kept)."""
    if getattr(net, "grad_checkpointing", False) and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, h, use_reentrant=False)
    return block(h)


def encode_levels(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The MAGVIT-2 encoder's pass (image and video alike): conv_in, each level's blocks then its downsample, the
    middle blocks, GN, swish, conv_out."""
    h = net.conv_in(x)
    for stage in net.down:
        for block in stage.block:
            h = run_block(net, block, h)
        if hasattr(stage, "downsample"):
            h = stage.downsample(h)
    for block in net.mid_block:
        h = run_block(net, block, h)
    return net.conv_out(nn.functional.silu(net.norm_out(h)))


def decode_levels(net: nn.Module, quant: torch.Tensor) -> torch.Tensor:
    """The MAGVIT-2 decoder's pass: conv_in, middle blocks, then from the coarsest level the adaptive GroupNorm on
    the decoder input (when the decoder has `adaptive`), the level's blocks and its upsample; GN, swish, conv_out."""
    h = net.conv_in(quant)
    for block in net.mid_block:
        h = run_block(net, block, h)
    for level in reversed(range(len(net.up))):
        if hasattr(net, "adaptive"):
            h = net.adaptive[level](h, quant)
        for block in net.up[level].block:
            h = run_block(net, block, h)
        if level > 0:
            h = net.up[level].upsample(h)
    return net.conv_out(nn.functional.silu(net.norm_out(h)))


class Encoder(TokenEncoder):
    """B x in_channels x H x W image -> B x z_channels x H/f x W/f continuous latent, f = 2**(len(ch_mult)-1)."""

    def __init__(self, *, ch: int, ch_mult, num_res_blocks: int, z_channels: int, in_channels: int = 3):
        super().__init__()
        _check_arch(ch, ch_mult, num_res_blocks, z_channels)
        self.in_channels = in_channels
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1, bias=False)
        self.down, self.mid_block, block_in = encoder_levels(
            ch, ch_mult, num_res_blocks, lambda width, mult: nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 1)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.down) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return encode_levels(self, x)


class Decoder(TokenDecoder):
    """B x z_channels x h x w quantized latent -> B x out_ch x h*f x w*f image (unclamped).

    `adaptive_gn=True` adds the v2 AdaptiveGroupNorm at the start of every up level, conditioned on the
    decoder input itself.
    """

    def __init__(self, *, ch: int, ch_mult, num_res_blocks: int, z_channels: int, out_ch: int = 3,
                 adaptive_gn: bool = False):
        super().__init__()
        _check_arch(ch, ch_mult, num_res_blocks, z_channels)
        self.z_channels = z_channels
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid_block = nn.ModuleList(_res_stack(block_in, block_in, num_res_blocks))
        up, adaptive = [], []
        for level in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[level]
            if adaptive_gn:
                adaptive.insert(0, AdaptiveGroupNorm(z_channels, block_in))
            stage = _Level(_res_stack(block_in, block_out, num_res_blocks))
            if level > 0:
                stage.upsample = Upsampler(block_out)
            up.insert(0, stage)
            block_in = block_out
        self.up = nn.ModuleList(up)
        if adaptive_gn:
            self.adaptive = nn.ModuleList(adaptive)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    @property
    def adaptive_gn(self) -> bool:
        return hasattr(self, "adaptive")

    def last_layer(self) -> torch.Tensor:
        return self.conv_out.weight

    def forward(self, quant: torch.Tensor) -> torch.Tensor:
        return decode_levels(self, quant)
