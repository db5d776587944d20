"""Reconstructing large images within a memory budget: a peak-memory estimate and overlapping tiles.

A 6000 x 4000 photograph through a 256-px tokenizer needs tens of GB of activations; these helpers let a tool
refuse it with the size that fits, or process it as tiles.
"""
from typing import Optional

import torch
from torch import nn

from .tokenizer import Tokenizer

# Peak resident memory of a no_grad reconstruction / largest single activation, measured on the CPU at 512 and
# 1024 px: 5.2-5.9 for the 256_B MAGVIT-2 networks, 6.3-6.6 for LlamaGen's VQ-16 (a layer's input and output,
# GroupNorm and convolution temporaries, allocator slack). 8 leaves a margin.
PEAK_OVER_LARGEST = 8.0


def available_memory_bytes(device: torch.device) -> int:
    """Free memory of the device: CUDA's free memory, or the host's MemAvailable (Linux), else 8 GiB."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def largest_activation_bytes(tokenizer: nn.Module, height: int, width: int, dtype=torch.float32) -> int:
    """Bytes of the largest tensor a forward pass (encode + decode) creates for one height x width image,
    found by running a copy of the architecture on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        meta = Tokenizer(**tokenizer.config).to(dtype)
    largest = 0

    def record(module, inputs, output):
        nonlocal largest
        for t in (output if isinstance(output, (tuple, list)) else (output,)):
            if torch.is_tensor(t):
                largest = max(largest, t.numel() * t.element_size())

    hooks = [m.register_forward_hook(record) for m in meta.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            meta(torch.empty(1, meta.encoder.in_channels, height, width, device="meta", dtype=dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return largest


def peak_memory_bytes(tokenizer: nn.Module, height: int, width: int, dtype=torch.float32) -> int:
    """Estimated peak memory of reconstructing one image (activations only, the weights excluded)."""
    return int(PEAK_OVER_LARGEST * largest_activation_bytes(tokenizer, height, width, dtype))


def largest_square(tokenizer: nn.Module, budget: int, dtype=torch.float32) -> int:
    """Largest side (a multiple of the downsampling factor) whose square image fits `budget` bytes (0 if none)."""
    factor = tokenizer.downsample_factor
    per_pixel = peak_memory_bytes(tokenizer, 8 * factor, 8 * factor, dtype) / (8 * factor) ** 2  # linear in pixels
    side = int((budget / per_pixel) ** 0.5) // factor * factor
    return max(side, 0)


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """1-D blending weights of a tile: linear ramps over the overlaps shared with neighbours."""
    w = torch.ones(length)
    ramp = torch.arange(1, overlap + 1) / (overlap + 1)
    if not at_start and overlap:
        w[:overlap] = ramp
    if not at_end and overlap:
        w[-overlap:] = ramp.flip(0)
    return w


def _starts(size: int, tile: int, step: int):
    starts = list(range(0, max(size - tile, 0) + 1, step))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


@torch.no_grad()
def reconstruct_tiled(model, x: torch.Tensor, tile: int, overlap: int, progress: bool = False) -> torch.Tensor:
    """Reconstruct a B x C x H x W batch as overlapping tile x tile squares blended with linear ramps.

    `model(x)` reconstructs one tile (a tokenizer). H and W must be multiples of the model's downsampling factor
    and >= tile; tile and overlap multiples of it. The result differs from a whole-image pass near tile borders
    and because each tile has its own GroupNorm statistics: it is a way to see how a large image reconstructs,
    not the model's output at that size. `progress` shows a progress bar over the tiles.
    """
    b, _, h, w = x.shape
    if tile > min(h, w) or overlap >= tile:
        raise ValueError(f"tile {tile} must be <= the image's sides {h}x{w} and > overlap {overlap}")
    out = torch.zeros(b, 3, h, w, device=x.device, dtype=torch.float32)
    weight = torch.zeros(1, 1, h, w, device=x.device)
    rows, cols = _starts(h, tile, tile - overlap), _starts(w, tile, tile - overlap)
    from tqdm import tqdm

    bar = tqdm(total=len(rows) * len(cols), desc=f"tiles of a {h}x{w} image", unit="tile", disable=not progress,
               leave=False)
    for top in rows:
        for left in cols:
            bar.update()
            crop = x[..., top:top + tile, left:left + tile]
            wy = _ramp(tile, overlap, top == rows[0], top == rows[-1]).to(x.device)
            wx = _ramp(tile, overlap, left == cols[0], left == cols[-1]).to(x.device)
            mask = wy[:, None] * wx[None, :]
            out[..., top:top + tile, left:left + tile] += model(crop).float() * mask
            weight[..., top:top + tile, left:left + tile] += mask
    bar.close()
    return out / weight


def default_budget(device: torch.device, max_memory_gb: Optional[float]) -> int:
    """`max_memory_gb` in bytes, else half of the free memory (CPU) or 80 % of it (CUDA)."""
    if max_memory_gb is not None:
        return int(max_memory_gb * (1 << 30))
    return int((0.8 if device.type == "cuda" else 0.5) * available_memory_bytes(device))


def pad_centered(x: torch.Tensor, factor: int) -> tuple:
    """Zero-pad a B x C x H x W batch to multiples of `factor`, floor(pad / 2) before and the rest after (the
    original-resolution protocol of Open-MAGVIT2 / Cosmos; zero is mid-grey in [-1, 1]). Returns (padded, (top,
    left, H, W)) for cropping the result back."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % factor, -w % factor
    top, left = pad_h // 2, pad_w // 2
    padded = torch.nn.functional.pad(x, (left, pad_w - left, top, pad_h - top)) if pad_h or pad_w else x
    return padded, (top, left, h, w)
