"""2-D rotary position embedding (RoPE) of LlamaGen and Open-MAGVIT2: a class token, then a square token grid.

Sequence position 0 is the class token; position 1 + i * grid + j is grid cell (i, j) (raster order). A table
row holds head_dim / 2 (cos, sin) pairs; pair k rotates the adjacent channels (x[2k], x[2k+1]) of q and k. The
first head_dim / 4 pairs turn with the row index i, the others with the column index j, at angular frequencies
base^(-4m / head_dim), m = 0 .. head_dim / 4 - 1.

The class row: the references use an all-zero row (`class_rope="zero"`), which multiplies the class token's q and
k by 0, so every query gives it the same score and it acts only through its value. The released weights were
trained that way. `class_rope="identity"` leaves the class token unrotated instead (for new training).
"""
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


def rope_2d(positions: torch.Tensor, grid: int, head_dim: int, base: float = 10000.0,
            class_rope: str = "zero") -> torch.Tensor:
    """positions: (T,) int64 sequence positions in [0, 1 + grid^2) -> (T, head_dim / 2, 2) float32 (cos, sin).

    Computed on the fly (a few thousand numbers), so the table is never cast to a low-precision model dtype.
    """
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2, device=positions.device)[: half // 2].float() / half))
    cell = (positions - 1).clamp(min=0)  # the class token lands on cell (0, 0): angle 0, the identity rotation
    row, col = (cell // grid).float(), (cell % grid).float()
    angles = torch.cat([row[:, None] * freqs, col[:, None] * freqs], dim=-1)
    table = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    if class_rope == "zero":
        table = table * (positions != 0)[:, None, None]
    return table


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x: B x T x H x head_dim, table: T x head_dim / 2 x 2 -> x with each adjacent channel pair rotated.

    The rotation runs in float32 and the result has x's dtype.
    """
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]
    rotated = torch.stack([pairs[..., 0] * cos - pairs[..., 1] * sin,
                           pairs[..., 1] * cos + pairs[..., 0] * sin], dim=-1)
    return rotated.flatten(3).type_as(x)
