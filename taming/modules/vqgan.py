"""VQGAN-style convolutional encoder and decoder in the LlamaGen / GigaTok layout.

Parameter names match the released LlamaGen VQ-16/VQ-8 and GigaTok checkpoints: `conv_in`,
`conv_blocks.{i}.res.{j}`, `conv_blocks.{i}.attn.{j}`, `conv_blocks.{i}.downsample.conv` /
`.upsample.conv` / `.upsample.conv1`, `mid.{k}`, `adaptive.{i}`, `norm_out`, `conv_out`. The encoder's
`conv_blocks.0` is the finest level; the decoder's `conv_blocks.0` (and `adaptive.0`) the coarsest.
Both networks are fully convolutional.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .autoencoder import AdaptiveGroupNorm, ResBlock, Upsampler, group_norm
from .codec import TokenDecoder, TokenEncoder


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions (1x1 conv q, k, v, proj_out; scale C^-1/2) + residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (conv(y).flatten(2).transpose(1, 2) for conv in (self.q, self.k, self.v))  # B x HW x C
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(y)


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then 3x3 conv with stride 2: H x W -> H/2 x W/2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: `res` (ResBlocks), `attn` (one AttnBlock after each, lowest resolution only),
    then an optional `downsample` / `upsample`."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, attn: bool, dropout: float):
        super().__init__()
        self.res = nn.ModuleList(
            ResBlock(in_channels if j == 0 else out_channels, out_channels, bias=True, dropout=dropout)
            for j in range(num_blocks))
        if attn:
            self.attn = nn.ModuleList(AttnBlock(out_channels) for _ in range(num_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.res):
            x = block(x)
            if hasattr(self, "attn"):
                x = self.attn[j](x)
        return x


def _mid(channels: int, attn: bool, dropout: float) -> nn.ModuleList:
    """ResBlock, [AttnBlock,] ResBlock at the lowest resolution."""
    blocks = [ResBlock(channels, channels, bias=True, dropout=dropout) for _ in range(2)]
    if attn:
        blocks.insert(1, AttnBlock(channels))
    return nn.ModuleList(blocks)


def _check_arch(ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                embed_dim: Optional[int]) -> None:
    if isinstance(ch_mult, (str, bytes)) or not ch_mult or any(not isinstance(m, int) or m < 1 for m in ch_mult):
        raise ValueError(f"ch_mult must be a non-empty list of positive integers, e.g. [1, 1, 2, 2, 4]; "
                         f"got {ch_mult!r}")
    if min(ch, num_res_blocks, z_channels) < 1:
        raise ValueError(f"ch, num_res_blocks and z_channels must be >= 1, got {ch}, {num_res_blocks}, {z_channels}")
    if embed_dim is not None and embed_dim < 1:
        raise ValueError(f"embed_dim must be >= 1 (the codebook dimension) or None, got {embed_dim}")


def check_input(x: torch.Tensor, channels: int, what: str, factor: int = 1) -> None:
    """Clear error unless x is a float B x channels x H x W tensor with H and W divisible by `factor`."""
    if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != channels or not x.is_floating_point():
        got = f"{x.dtype} {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{what} expects a float tensor B x {channels} x H x W, got {got}")
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"{what}: image size {h}x{w} is not divisible by the downsampling factor {factor}; "
                         f"resize or crop it to a multiple of {factor}")


class Encoder(TokenEncoder):
    """B x in_channels x H x W image in [-1, 1] -> B x C x H/f x W/f latent, f = 2**(len(ch_mult) - 1).

    C = z_channels, or embed_dim when set (then a 1x1 `quant_conv` z_channels -> embed_dim ends the network).
    use_attn: an AttnBlock after every ResBlock of the lowest-resolution level and one in `mid` (LlamaGen;
    GigaTok's released models turn it off).
    """

    def __init__(self, *, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 z_channels: int = 256, in_channels: int = 3, use_attn: bool = True, dropout: float = 0.0,
                 embed_dim: Optional[int] = None):
        super().__init__()
        _check_arch(ch, ch_mult, num_res_blocks, z_channels, embed_dim)
        self.in_channels = in_channels
        self.downsample_factor = 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        block_in = ch
        for i, mult in enumerate(ch_mult):
            last = i == len(ch_mult) - 1
            level = _Level(block_in, ch * mult, num_res_blocks, use_attn and last, dropout)
            if not last:
                level.downsample = Downsample(ch * mult)
            self.conv_blocks.append(level)
            block_in = ch * mult
        self.mid = _mid(block_in, use_attn, dropout)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)
        if embed_dim is not None:
            self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, "Encoder", self.downsample_factor)
        h = self.conv_in(x.contiguous())  # see Decoder.forward
        for level in self.conv_blocks:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for block in self.mid:
            h = block(h)
        h = self.conv_out(F.silu(self.norm_out(h)))
        return self.quant_conv(h) if hasattr(self, "quant_conv") else h


class Decoder(TokenDecoder):
    """B x C x h x w latent -> B x out_channels x h*f x w*f image (unclamped), f = 2**(len(ch_mult) - 1).

    C = z_channels, or embed_dim when set (then a 1x1 `post_quant_conv` embed_dim -> z_channels starts the
    network). num_res_blocks: ResBlocks per level (LlamaGen and GigaTok use 3). use_attn: AttnBlocks at the
    lowest resolution and in `mid`. adaptive_gn: an AdaptiveGroupNorm at the start of every level, scaled and
    shifted from the per-channel std (unbiased variance) and mean over space of the z_channels input of
    `conv_in`. d2s_up: upsample with conv3x3 C -> 4C + depth-to-space (DCR order) instead of nearest + conv.
    """

    def __init__(self, *, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 3,
                 z_channels: int = 256, out_channels: int = 3, use_attn: bool = True, adaptive_gn: bool = False,
                 d2s_up: bool = False, dropout: float = 0.0, embed_dim: Optional[int] = None):
        super().__init__()
        _check_arch(ch, ch_mult, num_res_blocks, z_channels, embed_dim)
        self.in_channels = z_channels if embed_dim is None else embed_dim
        if embed_dim is not None:
            self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in, use_attn, dropout)
        self.conv_blocks = nn.ModuleList()
        adaptive = []
        for i, mult in reversed(list(enumerate(ch_mult))):
            if adaptive_gn:
                adaptive.append(AdaptiveGroupNorm(z_channels, block_in))
            level = _Level(block_in, ch * mult, num_res_blocks, use_attn and i == len(ch_mult) - 1, dropout)
            if i > 0:
                level.upsample = Upsampler(ch * mult) if d2s_up else Upsample(ch * mult)
            self.conv_blocks.append(level)
            block_in = ch * mult
        if adaptive_gn:
            self.adaptive = nn.ModuleList(adaptive)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def last_layer(self) -> torch.Tensor:
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        check_input(z, self.in_channels, "Decoder")
        # A channels-last input (e.g. a transposed view) would keep every activation channels-last, and CPU
        # GroupNorm is far less accurate on those (errors of 1e-1 on channels with a large mean and small spread).
        z = z.contiguous()
        if hasattr(self, "post_quant_conv"):
            z = self.post_quant_conv(z)
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for i, level in enumerate(self.conv_blocks):
            if hasattr(self, "adaptive"):
                h = self.adaptive[i](h, z)
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
