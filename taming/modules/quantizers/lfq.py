"""Lookup-free quantizer (LFQ, MAGVIT-2) with an implicit 2^d codebook of {-1, +1}^d codes."""
import math

import torch
import torch.nn.functional as F

from .base import Quantizer, QuantizerOutput, autocast_disabled, flatten_tokens
from .entropy import MAX_EXACT_BITS, codebook_entropy, group_marginal_entropy, per_sample_entropy

BIT_ORDERS = ("msb", "lsb")
CODEBOOK_ENTROPY_MODES = ("exact", "group_marginals")


def bit_shifts(dim: int, bit_order: str) -> torch.Tensor:
    """(dim,) int64: latent channel i carries index bit 2^shift[i] ("msb": channel 0 is the top bit)."""
    if bit_order not in BIT_ORDERS:
        raise ValueError(f"bit_order must be one of {BIT_ORDERS}, got {bit_order!r}")
    return torch.arange(dim) if bit_order == "lsb" else torch.arange(dim - 1, -1, -1)


class LFQ(Quantizer):
    """Sign quantizer with straight-through gradient and the MAGVIT-2 entropy penalty.

    Codes are +-1 per channel (z > 0 -> +1, z <= 0 -> -1). A token's index packs its bits (bit = code > 0):
    `bit_order="msb"` (Open-MAGVIT2 v1): channel 0 is the most significant bit;
    `bit_order="lsb"` (v2): channel 0 is the least significant bit.

    Loss (training mode): entropy_loss_weight * (sample_minimization_weight * H_s - batch_maximization_weight
    * H_cb) + commitment_weight * mean((z - sign(z))^2). The entropies are exact (see `entropy.py`); in eval
    mode they are zero, as in the reference. The defaults are Open-MAGVIT2's recipe (its loss module's
    `codebook_weight` 0.1 and `commit_weight` 0.25). Quantization and entropy run in float32 (float64 inputs
    stay float64) even under autocast.
    Logged terms (unweighted, the reference's names): per_sample_entropy, codebook_entropy, entropy_loss
    (= smw * H_s - bmw * H_cb), commit_loss.
    """

    def __init__(self, dim: int = None, codebook_size: int = None, sample_minimization_weight: float = 1.0,
                 batch_maximization_weight: float = 1.0, bit_order: str = "msb", entropy_temperature: float = 0.01,
                 entropy_eps: float = 1e-5, entropy_sync: bool = False, codebook_entropy_mode: str = "exact",
                 entropy_loss_weight: float = 0.1, commitment_weight: float = 0.25):
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
        self.dim = self.bits = dim
        self.codebook_size = 2**dim
        self.sample_minimization_weight = sample_minimization_weight
        self.batch_maximization_weight = batch_maximization_weight
        self.entropy_loss_weight = entropy_loss_weight
        self.commitment_weight = commitment_weight
        self.bit_order = bit_order
        self.entropy_temperature = entropy_temperature
        self.entropy_eps = entropy_eps
        self.entropy_sync = entropy_sync
        self.codebook_entropy_mode = codebook_entropy_mode
        self.register_buffer("bit_shifts", bit_shifts(dim, bit_order), persistent=False)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, bit_order={self.bit_order!r}, temperature={self.entropy_temperature}"

    def _shifts(self, ndim: int) -> torch.Tensor:
        return self.bit_shifts.view(1, -1, *([1] * (ndim - 2)))

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """B x d x *grid codes (sign is what counts) -> B x *grid int64 indices."""
        self.check_latent(codes)
        bits = (codes > 0).long()
        return (bits << self._shifts(codes.dim())).sum(dim=1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """B x *grid integer indices in [0, 2^d) -> B x d x *grid float32 codes in {-1, +1}."""
        self.check_indices(indices)
        indices = indices.to(self.bit_shifts.device)
        bits = (indices.long().unsqueeze(1) >> self._shifts(indices.dim() + 1)) & 1
        return bits.float() * 2 - 1

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z: B x d x *grid -> QuantizerOutput; `quantized` has z's dtype, value +-1, identity gradient to z."""
        self.check_latent(z)
        with autocast_disabled(z.device):
            zf = z.to(torch.promote_types(z.dtype, torch.float32))
            codes = torch.where(zf > 0, 1.0, -1.0).to(zf.dtype)
            quantized = zf + (codes - zf).detach()
            indices = self.codes_to_indices(codes)
            commitment = F.mse_loss(zf, codes)
            terms = {"commit_loss": commitment.detach()}
            loss = self.commitment_weight * commitment
            if self.training:
                tokens = flatten_tokens(zf)
                h_sample = per_sample_entropy(tokens, self.entropy_temperature)
                h_codebook = self._codebook_entropy(tokens) if self.batch_maximization_weight else zf.new_zeros(())
                aux = self.sample_minimization_weight * h_sample - self.batch_maximization_weight * h_codebook
                loss = loss + self.entropy_loss_weight * aux
                terms.update(per_sample_entropy=h_sample.detach(), codebook_entropy=h_codebook.detach(),
                             entropy_loss=aux.detach())
        return QuantizerOutput(quantized.to(z.dtype), indices, loss, terms)

    def _codebook_entropy(self, tokens: torch.Tensor) -> torch.Tensor:
        fn = codebook_entropy if self.codebook_entropy_mode == "exact" else group_marginal_entropy
        return fn(tokens, self.entropy_temperature, self.entropy_eps, self.entropy_sync)
