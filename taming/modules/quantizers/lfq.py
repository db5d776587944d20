"""Lookup-free quantizer (LFQ, MAGVIT-2) with an implicit 2^d codebook of {-1, +1}^d codes."""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .entropy import MAX_EXACT_BITS, codebook_entropy, group_marginal_entropy, per_sample_entropy

BIT_ORDERS = ("msb", "lsb")
CODEBOOK_ENTROPY_MODES = ("exact", "group_marginals")


def bit_shifts(dim: int, bit_order: str) -> torch.Tensor:
    """(dim,) int64: latent channel i carries index bit 2^shift[i] ("msb": channel 0 is the top bit)."""
    if bit_order not in BIT_ORDERS:
        raise ValueError(f"bit_order must be one of {BIT_ORDERS}, got {bit_order!r}")
    return torch.arange(dim) if bit_order == "lsb" else torch.arange(dim - 1, -1, -1)


class LossBreakdown(NamedTuple):
    per_sample_entropy: torch.Tensor  # mean over tokens of H(q(.|z)), nats
    codebook_entropy: torch.Tensor  # H(mean over tokens of q(.|z)) with eps inside the log, nats
    commitment: torch.Tensor  # mean((z - sign(z))^2)


class LFQ(nn.Module):
    """Sign quantizer with straight-through gradient and the MAGVIT-2 entropy penalty.

    Codes are +-1 per channel (z > 0 -> +1, z <= 0 -> -1). A token's index packs its bits (bit = code > 0):
    `bit_order="msb"` (Open-MAGVIT2 v1): channel 0 is the most significant bit;
    `bit_order="lsb"` (v2): channel 0 is the least significant bit.

    The entropy aux loss `sample_minimization_weight * H_s - batch_maximization_weight * H_cb` is computed
    exactly (see `entropy.py`) in training mode and is zero in eval mode, as in the reference. Quantization and
    entropy run in float32 (float64 inputs stay float64) even under autocast.
    """

    def __init__(self, dim: int = None, codebook_size: int = None, sample_minimization_weight: float = 1.0,
                 batch_maximization_weight: float = 1.0, bit_order: str = "msb", entropy_temperature: float = 0.01,
                 entropy_eps: float = 1e-5, entropy_sync: bool = False, codebook_entropy_mode: str = "exact"):
        super().__init__()
        if dim is None and codebook_size is None:
            raise ValueError("LFQ needs `dim` (bits per token) or `codebook_size` (= 2**dim)")
        if codebook_size is not None:
            bits = math.log2(codebook_size) if codebook_size > 0 else -1
            if bits != int(bits) or bits < 1:
                raise ValueError(f"codebook_size must be a power of two >= 2, got {codebook_size}")
            if dim is not None and dim != int(bits):
                raise ValueError(f"codebook_size {codebook_size} = 2^{int(bits)} does not match dim {dim}")
            dim = int(bits)
        if bit_order not in BIT_ORDERS:
            raise ValueError(f"bit_order must be one of {BIT_ORDERS}, got {bit_order!r}")
        if codebook_entropy_mode not in CODEBOOK_ENTROPY_MODES:
            raise ValueError(f"codebook_entropy_mode must be one of {CODEBOOK_ENTROPY_MODES}, got {codebook_entropy_mode!r}")
        if codebook_entropy_mode == "exact" and dim > MAX_EXACT_BITS and batch_maximization_weight:
            raise ValueError(
                f"the exact codebook entropy is supported up to {MAX_EXACT_BITS} bits, got dim {dim}; "
                "set codebook_entropy_mode='group_marginals' (an upper-bound approximation) or batch_maximization_weight=0"
            )
        if dim > 62:
            raise ValueError(f"indices are int64: dim must be <= 62, got {dim}")
        if entropy_temperature <= 0:
            raise ValueError(f"entropy_temperature must be > 0, got {entropy_temperature}")
        self.dim = dim
        self.codebook_size = 2**dim
        self.sample_minimization_weight = sample_minimization_weight
        self.batch_maximization_weight = batch_maximization_weight
        self.bit_order = bit_order
        self.entropy_temperature = entropy_temperature
        self.entropy_eps = entropy_eps
        self.entropy_sync = entropy_sync
        self.codebook_entropy_mode = codebook_entropy_mode
        self.register_buffer("bit_shifts", bit_shifts(dim, bit_order), persistent=False)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, bit_order={self.bit_order!r}, temperature={self.entropy_temperature}"

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """B x d x h x w codes (sign is what counts) -> B x h x w int64 indices."""
        self._check_latent(codes)
        bits = (codes > 0).long()
        return (bits << self.bit_shifts.view(1, -1, 1, 1)).sum(dim=1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """B x h x w integer indices in [0, 2^d) -> B x d x h x w float32 codes in {-1, +1}."""
        if indices.dim() != 3 or indices.is_floating_point():
            raise ValueError(f"indices must be an integer tensor of shape B x h x w, got {indices.dtype} {tuple(indices.shape)}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.codebook_size):
            raise ValueError(f"indices must lie in [0, {self.codebook_size}), got range "
                             f"[{int(indices.min())}, {int(indices.max())}]; check the codebook size and bit order")
        bits = (indices.long().unsqueeze(1) >> self.bit_shifts.view(1, -1, 1, 1)) & 1
        return bits.float() * 2 - 1

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.dim() != 4 or z.shape[1] != self.dim:
            raise ValueError(f"LFQ expects B x {self.dim} x h x w latents, got shape {tuple(z.shape)}")

    def forward(self, z: torch.Tensor, return_loss_breakdown: bool = False):
        """z: B x d x h x w -> (quantized, entropy_aux_loss, indices[, LossBreakdown]).

        `quantized` has z's dtype and value +-1 with identity gradient to z; `indices` is B x h x w int64.
        """
        self._check_latent(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            zf = z.to(torch.promote_types(z.dtype, torch.float32))
            codes = torch.where(zf > 0, 1.0, -1.0).to(zf.dtype)
            quantized = zf + (codes - zf).detach()
            indices = self.codes_to_indices(codes)
            commitment = F.mse_loss(zf, codes)
            zero = zf.new_zeros(())
            if self.training:
                tokens = zf.permute(0, 2, 3, 1).reshape(-1, self.dim)
                h_sample = per_sample_entropy(tokens, self.entropy_temperature)
                h_codebook = self._codebook_entropy(tokens) if self.batch_maximization_weight else zero
                aux = self.sample_minimization_weight * h_sample - self.batch_maximization_weight * h_codebook
            else:
                h_sample = h_codebook = aux = zero
        quantized = quantized.to(z.dtype)
        if return_loss_breakdown:
            return quantized, aux, indices, LossBreakdown(h_sample, h_codebook, commitment)
        return quantized, aux, indices

    def _codebook_entropy(self, tokens: torch.Tensor) -> torch.Tensor:
        fn = codebook_entropy if self.codebook_entropy_mode == "exact" else group_marginal_entropy
        return fn(tokens, self.entropy_temperature, self.entropy_eps, self.entropy_sync)
