"""Codebook usage of a 2^d implicit (LFQ) codebook: index histogram counted on the device."""

import torch

from taming.metrics.distributed import all_reduce_sum
from taming.modules.quantizers import bit_shifts


class CodebookUsage:
    """Histogram of token indices in [0, 2^bits), accumulated with `torch.bincount` on their device.

    `bit_order` says which latent channel each index bit belongs to: "msb" (v1) = channel 0 is the most
    significant bit, "lsb" (v2) = channel 0 is the least significant bit. Bit value 1 = code +1.
    """

    def __init__(self, bits: int, bit_order: str = "msb", device=None):
        self.bits, self.bit_order = bits, bit_order
        self.shifts = bit_shifts(bits, bit_order).to(device)
        self.counts = torch.zeros(2**bits, dtype=torch.int64, device=device)

    def update(self, indices: torch.Tensor) -> None:
        """Add token indices of any shape (int64, on the same device as the histogram)."""
        histogram = torch.bincount(indices.reshape(-1), minlength=self.counts.numel())
        if histogram.numel() > self.counts.numel():
            raise ValueError(f"token index >= 2^{self.bits}: the tokenizer's codebook is larger than `bits` says")
        self.counts += histogram

    def all_reduce(self) -> None:
        """Sum the histograms of all ranks (exact: integer counts)."""
        all_reduce_sum(self.counts)

    def summary(self) -> dict:
        """usage (fraction of codes seen), codes_used, tokens, entropy_bits and perplexity of the index
        histogram, and bit_balance: per latent channel, the fraction of tokens whose code is +1."""
        counts = self.counts
        total = int(counts.sum())
        if total == 0:
            raise ValueError("no tokens were counted")
        p = counts[counts > 0].double() / total
        entropy = float(-(p * p.log2()).sum())
        codes = torch.arange(counts.numel(), device=counts.device)
        bit_set = (codes[:, None] >> self.shifts[None, :]) & 1
        ones = (bit_set * counts[:, None]).sum(0)
        return {
            "usage": int((counts > 0).sum()) / counts.numel(),
            "codes_used": int((counts > 0).sum()),
            "tokens": total,
            "entropy_bits": entropy,
            "perplexity": 2.0**entropy,
            "bit_balance": (ones.double() / total).tolist(),
        }
