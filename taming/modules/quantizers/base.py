"""The interface every quantizer implements (LFQ, VQ, IBQ; ready for FSQ).

Latents are channel-first with any number of token dimensions: B x dim x h x w for a 2-D token grid,
B x dim x N for a 1-D token sequence. Indices drop the channel dimension: B x h x w, or B x N.
"""
from contextlib import nullcontext
from typing import Dict, NamedTuple, Optional

import torch

from ..component import Component


class QuantizerOutput(NamedTuple):
    quantized: torch.Tensor  # same shape and dtype as the latent; the gradient reaches the latent
    indices: torch.Tensor  # int64, the latent's shape without the channel dimension
    loss: torch.Tensor  # scalar auxiliary loss with the quantizer's own weights applied (0 when there is none)
    terms: Dict[str, torch.Tensor]  # detached scalars to log, named as the reference implementations log them


class Quantizer(Component):
    """Base class: `forward(z) -> QuantizerOutput`, `codes_to_indices`, `indices_to_codes`.

    Subclasses set `dim` (latent channels, = code length), `codebook_size` and `bits` (bits per index for
    quantizers whose index is a bit pattern of the code, e.g. LFQ; None otherwise). Codebook usage and
    entropy statistics work from the indices alone; bit balance only applies where `bits` is set.
    """

    dim: int
    codebook_size: int
    bits: Optional[int] = None

    def check_latent(self, z: torch.Tensor) -> None:
        if not torch.is_tensor(z) or z.dim() < 3 or z.shape[1] != self.dim:
            shape = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
            raise ValueError(f"{type(self).__name__} expects latents B x {self.dim} x h x w (token grid) or "
                             f"B x {self.dim} x N (token sequence), got {shape}")

    def check_indices(self, indices: torch.Tensor) -> None:
        """Integer type and range [0, codebook_size).

        On the CPU the range is checked eagerly with a clear error; on an accelerator with an asynchronous
        device assertion (no host synchronisation, so it can run once per generated token).
        """
        if not torch.is_tensor(indices) or indices.is_floating_point() or indices.dim() < 2:
            what = f"{indices.dtype} {tuple(indices.shape)}" if torch.is_tensor(indices) else type(indices).__name__
            raise ValueError(f"indices must be an integer tensor B x h x w or B x N, got {what}")
        if indices.numel() == 0:
            return
        in_range = ((indices >= 0) & (indices < self.codebook_size)).all()
        message = (f"token indices must lie in [0, {self.codebook_size}); check the codebook size "
                   "(and, for LFQ, the bit order)")
        if indices.device.type == "cpu":
            if not in_range:
                raise ValueError(f"{message}; got range [{int(indices.min())}, {int(indices.max())}]")
        else:
            torch._assert_async(in_range, message)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def flatten_tokens(z: torch.Tensor) -> torch.Tensor:
    """B x d x *grid -> (B * prod(grid)) x d, tokens in (b, grid...) raster order."""
    return z.movedim(1, -1).reshape(-1, z.shape[1])


def unflatten_tokens(tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of `flatten_tokens` for a latent shaped like `like` (its channel count may differ)."""
    grid = like.shape[2:]
    return tokens.reshape(like.shape[0], *grid, tokens.shape[-1]).movedim(-1, 1).contiguous()


def autocast_disabled(device: torch.device):
    """A block without autocast (quantizers compute in float32 even under mixed precision); meta tensors, used to
    size a model's activations, have no autocast at all."""
    return nullcontext() if device.type == "meta" else torch.autocast(device_type=device.type, enabled=False)
