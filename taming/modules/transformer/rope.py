"""Rotary position embedding (RoPE) over a token grid: 2-D as LlamaGen and Open-MAGVIT2 (a class token, then a square
grid), and 3-D (t, h, w) for video tokens.

Sequence position 0 is the class token; position 1 + c is grid cell c in raster order (for 2-D, c = i * grid + j;
for 3-D, c = (t * h + i) * w + j). A table row holds head_dim / 2 (cos, sin) pairs; pair k rotates the adjacent
channels (x[2k], x[2k+1]) of q and k. The pairs are split into one group per axis (equal groups of P // d pairs, the
first axis taking the remainder; P = head_dim / 2, d axes), in axis order; group g of n pairs turns with its axis
coordinate at angular frequencies base^(-m / n), m = 0 .. n - 1. For 2-D this is LlamaGen's table: the first
head_dim / 4 pairs turn with the row, the others with the column, at base^(-4m / head_dim).

The class row: the references use an all-zero row (`class_rope="zero"`), which multiplies the class token's q and
k by 0, so every query gives it the same score and it acts only through its value. The released weights were
trained that way. `class_rope="identity"` leaves the class token unrotated instead (for new training).
"""
import math
from typing import Sequence

import torch

CLASS_ROPE = ("zero", "identity")


def check_rope_2d(num_tokens: int, head_dim: int, class_rope: str) -> int:
    """The grid side for `num_tokens` image tokens; raises unless the 2-D table can be built."""
    grid = round(num_tokens**0.5)
    if grid * grid != num_tokens:
        raise ValueError(f"2-D RoPE needs a square token grid, got num_tokens={num_tokens}; use a square number "
                         "(e.g. 256 = 16 x 16) or learned 1-D positions (positions='learned')")
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim = dim / n_head divisible by 4 (half for rows, half for columns, "
                         f"in pairs), got {head_dim}; change dim or n_head")
    if class_rope not in CLASS_ROPE:
        raise ValueError(f"class_rope must be one of {CLASS_ROPE}, got {class_rope!r}")
    return grid


def check_rope_grid(shape, num_tokens: int, head_dim: int, class_rope: str) -> tuple:
    """`shape` (the token grid's axis sizes) as a tuple; raises unless it holds num_tokens cells and every axis gets
    at least one rotation pair."""
    shape = tuple(int(n) for n in shape or ())
    if not shape or min(shape) < 1 or math.prod(shape) != num_tokens:
        raise ValueError(f"the RoPE token grid {shape} must be positive sizes whose product is num_tokens={num_tokens} "
                         "(e.g. token_grid: [5, 16, 16] for 1280 video tokens)")
    if head_dim % 2 or head_dim // 2 < len(shape):
        raise ValueError(f"RoPE over {len(shape)} axes needs an even head_dim of at least {2 * len(shape)}, got "
                         f"{head_dim}; change dim or n_head")
    if class_rope not in CLASS_ROPE:
        raise ValueError(f"class_rope must be one of {CLASS_ROPE}, got {class_rope!r}")
    return shape


def rope_grid(positions: torch.Tensor, shape: Sequence[int], head_dim: int, base: float = 10000.0,
              class_rope: str = "zero") -> torch.Tensor:
    """positions: (T,) int64 sequence positions in [0, 1 + prod(shape)) -> (T, head_dim / 2, 2) float32 (cos, sin).

    Computed on the fly (a few thousand numbers), so the table is never cast to a low-precision model dtype.
    """
    pairs, axes = head_dim // 2, len(shape)
    sizes = [pairs - (axes - 1) * (pairs // axes)] + [pairs // axes] * (axes - 1)
    cell = (positions - 1).clamp(min=0)  # the class token lands on cell 0: angle 0, the identity rotation
    angles, stride = [], math.prod(shape)
    for n, size in zip(sizes, shape):
        stride //= size
        coordinate = ((cell // stride) % size).float()
        freqs = 1.0 / (base ** (torch.arange(n, device=positions.device).float() / n))
        angles.append(coordinate[:, None] * freqs)
    angles = torch.cat(angles, dim=-1)
    table = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    if class_rope == "zero":
        table = table * (positions != 0)[:, None, None]
    return table


def rope_2d(positions: torch.Tensor, grid: int, head_dim: int, base: float = 10000.0,
            class_rope: str = "zero") -> torch.Tensor:
    """The table of a square grid x grid token grid (LlamaGen / Open-MAGVIT2); see `rope_grid`."""
    return rope_grid(positions, (grid, grid), head_dim, base, class_rope)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x: B x T x H x head_dim, table: T x head_dim / 2 x 2 -> x with each adjacent channel pair rotated.

    The rotation runs in float32 and the result has x's dtype.
    """
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]
    rotated = torch.stack([pairs[..., 0] * cos - pairs[..., 1] * sin,
                           pairs[..., 1] * cos + pairs[..., 0] * sin], dim=-1)
    return rotated.flatten(3).type_as(x)
