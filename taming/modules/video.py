"""Causal 3-D video encoder and decoder (Open-MAGVIT2 video tokenizer, SEED-Voken `improved_video_model.py`).

Clips are B x C x T x H x W in [-1, 1]. Every convolution is causal in time (`CausalConv3d`: kt - 1 zero frames in
front, none after), so a single image is a one-frame clip; GroupNorm and the decoder's adaptive GroupNorm take their
statistics over all frames, so the network as a whole is not causal (as released). Encoder level l downsamples
(1, 2, 2) when ch_mult[l] == 1, else (2, 2, 2): T -> floor((T - 1) / 2) + 1. Decoder level l > 0 upsamples with
block (bt, 2, 2), bt = 1 if ch_mult[l - 1] == 1 else 2, by a causal conv and a 3-D depth-to-space (DCR order) that
drops the second sub-frame of the first latent frame, so T' latent frames become 2 T' - 1 (17 -> 9 -> 5 -> 9 -> 17).
Parameter names match the released checkpoints (`down.{l}.block.{i}.conv1.conv_1.weight`, `mid_block.{i}`,
`up.{l}.upsample.conv1.conv_1`, `adaptive.{l}.gamma`, ...).
"""
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .autoencoder import (AdaptiveGroupNorm, _check_arch, _Level, _res_stack, decode_levels, encode_levels,
                          encoder_levels, group_norm)
from .codec import TokenDecoder, TokenEncoder


class CausalConv3d(nn.Module):
    """Conv3d with zero padding (kw // 2, kh // 2 on both sides, kt - 1 frames before, none after) and no padding of
    its own: output frame t sees input frames <= t (times the stride). The weight is `conv_1` (the release's name)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, bias: bool = True,
                 stride: Tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        self.kernel = kernel
        self.conv_1 = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel
        return self.conv_1(F.pad(x, (k // 2, k // 2, k // 2, k // 2, k - 1, 0)))


def depth_to_space_3d(x: torch.Tensor, time_block: int) -> torch.Tensor:
    """B x (bt*2*2*C) x T x H x W -> B x C x T' x 2H x 2W in DCR order: channel ((i_t * 2 + i_h) * 2 + i_w) * C + c
    goes to (t * bt + i_t, 2h + i_h, 2w + i_w). With bt = 2 the second sub-frame of frame 0 is dropped (T' = 2T - 1;
    a single frame stays single)."""
    x = rearrange(x, "b (i j k c) t h w -> b c (t i) (h j) (w k)", i=time_block, j=2, k=2)
    if time_block == 2:
        x = torch.cat([x[:, :, :1], x[:, :, 2:]], dim=2) if x.shape[2] > 2 else x[:, :, :1]
    return x


class Upsampler3d(nn.Module):
    """Causal conv C -> bt*4*C, then `depth_to_space_3d` (x bt in time, x2 in space)."""

    def __init__(self, channels: int, time_block: int):
        super().__init__()
        self.time_block = time_block
        self.conv1 = CausalConv3d(channels, channels * time_block * 4, 3, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space_3d(self.conv1(x), self.time_block)


def causal_conv(in_channels: int, out_channels: int, kernel: int, bias: bool) -> CausalConv3d:
    return CausalConv3d(in_channels, out_channels, kernel, bias=bias)


def _time_block(mult: int) -> int:
    return 1 if mult == 1 else 2


def check_clip(x: torch.Tensor, channels: int, factor: int) -> None:
    """Clear error unless x is a float B x channels x T x H x W clip with H, W divisible by `factor`."""
    if not torch.is_tensor(x) or x.dim() != 5 or x.shape[1] != channels or not x.is_floating_point():
        got = f"{x.dtype} {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"expected a float clip B x {channels} x T x H x W in [-1, 1], got {got}; a single image is "
                         "a one-frame clip (x[:, :, None])")
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"frame size {h}x{w} is not divisible by the downsampling factor {factor}; resize or crop "
                         f"the frames to a multiple of {factor}")


class VideoEncoder(TokenEncoder):
    """B x in_channels x T x H x W clip -> B x z_channels x T' x H/f x W/f latent (module docstring).
    Set `grad_checkpointing` (also on the decoder) to recompute each ResBlock's activations in the backward."""

    token_layout = "volume"
    grad_checkpointing = False

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 in_channels: int = 3):
        super().__init__()
        _check_arch(ch, ch_mult, num_res_blocks, z_channels)
        self.in_channels = in_channels
        self.time_blocks = [_time_block(m) for m in ch_mult[:-1]]
        self.conv_in = CausalConv3d(in_channels, ch, 3, bias=False)
        self.down, self.mid_block, block_in = encoder_levels(
            ch, ch_mult, num_res_blocks,
            lambda width, mult: CausalConv3d(width, width, 3, bias=True, stride=(_time_block(mult), 2, 2)),
            causal_conv)
        self.norm_out = group_norm(block_in)
        self.conv_out = CausalConv3d(block_in, z_channels, 1, bias=True)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.down) - 1)

    def check_input(self, x: torch.Tensor) -> None:
        check_clip(x, self.in_channels, self.downsample_factor)

    def token_shape(self, *size: int) -> Tuple[int, ...]:
        """(T', h, w) of a T x H x W clip: T' = floor((T - 1) / 2) + 1 per temporal downsampling."""
        if len(size) != 3:
            raise ValueError(f"{type(self).__name__} encodes clips: token_shape takes (frames, height, width), got "
                             f"{size}")
        frames = size[0]
        for block in self.time_blocks:
            frames = (frames - 1) // block + 1
        return (frames, size[1] // self.downsample_factor, size[2] // self.downsample_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return encode_levels(self, x)


class VideoDecoder(TokenDecoder):
    """B x z_channels x T' x h x w quantized latent -> B x out_ch x (2^n (T' - 1) + 1) x h f x w f clip, unclamped
    (n temporal upsamplings); adaptive GroupNorm at the start of every level (module docstring)."""

    grad_checkpointing = False

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int, out_ch: int = 3):
        super().__init__()
        _check_arch(ch, ch_mult, num_res_blocks, z_channels)
        self.z_channels = z_channels
        block_in = ch * ch_mult[-1]
        self.conv_in = CausalConv3d(z_channels, block_in, 3, bias=True)
        self.mid_block = nn.ModuleList(_res_stack(block_in, block_in, num_res_blocks, causal_conv))
        up, adaptive = [], []
        for level in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[level]
            adaptive.insert(0, AdaptiveGroupNorm(z_channels, block_in))
            stage = _Level(_res_stack(block_in, block_out, num_res_blocks, causal_conv))
            if level > 0:
                stage.upsample = Upsampler3d(block_out, _time_block(ch_mult[level - 1]))
            up.insert(0, stage)
            block_in = block_out
        self.up = nn.ModuleList(up)
        self.adaptive = nn.ModuleList(adaptive)
        self.norm_out = group_norm(block_in)
        self.conv_out = CausalConv3d(block_in, out_ch, 3, bias=True)

    def last_layer(self) -> torch.Tensor:
        return self.conv_out.conv_1.weight

    def forward(self, quant: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(quant) or quant.dim() != 5 or quant.shape[1] != self.z_channels:
            got = tuple(quant.shape) if torch.is_tensor(quant) else type(quant).__name__
            raise ValueError(f"{type(self).__name__} expects latents B x {self.z_channels} x T x h x w, got {got}")
        return decode_levels(self, quant)
