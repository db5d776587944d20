"""Codebook usage of any quantizer: the index histogram counted on the device (bit balance for LFQ)."""
from typing import Optional

import torch

from taming.metrics.distributed import all_reduce_sum
from taming.modules.quantizers import bit_shifts


class CodebookUsage:
    """Histogram of token indices in [0, codebook_size), accumulated with `torch.bincount` on their device.

    For bit quantizers (LFQ) give `bits` and `bit_order`, which say which latent channel each index bit belongs to
    ("msb": channel 0 is the most significant bit, "lsb": the least); the summary then adds the bit balance
    (bit value 1 = code +1).
    """

    def __init__(self, codebook_size: int, bits: Optional[int] = None, bit_order: Optional[str] = None, device=None):
        if bits is not None and 2**bits != codebook_size:
            raise ValueError(f"{bits} bits do not index a codebook of {codebook_size} codes")
        self.codebook_size = codebook_size
        self.shifts = bit_shifts(bits, bit_order).to(device) if bits is not None else None
        self.counts = torch.zeros(codebook_size, dtype=torch.int64, device=device)

    @classmethod
    def of(cls, quantizer, device=None) -> "CodebookUsage":
        """The histogram for a quantizer's index space."""
        return cls(quantizer.codebook_size, quantizer.bits, getattr(quantizer, "bit_order", None), device)

    def update(self, indices: torch.Tensor) -> None:
        """Add token indices of any shape (int64, on the same device as the histogram)."""
        histogram = torch.bincount(indices.reshape(-1), minlength=self.codebook_size)
        if histogram.numel() > self.codebook_size:
            raise ValueError(f"token index >= {self.codebook_size}: the tokenizer's codebook is larger than this histogram")
        self.counts += histogram

    def all_reduce(self) -> None:
        """Sum the histograms of all ranks (exact: integer counts)."""
        all_reduce_sum(self.counts)

    def summary(self) -> dict:
        """usage (fraction of codes seen), codes_used, tokens, entropy_bits and perplexity of the index histogram,
        and, for bit quantizers, bit_balance: per latent channel the fraction of tokens whose code is +1."""
        counts = self.counts
        total = int(counts.sum())
        if total == 0:
            raise ValueError("no tokens were counted")
        p = counts[counts > 0].double() / total
        entropy = float(-(p * p.log2()).sum())
        summary = {"usage": int((counts > 0).sum()) / counts.numel(), "codes_used": int((counts > 0).sum()),
                   "tokens": total, "entropy_bits": entropy, "perplexity": 2.0**entropy}
        if self.shifts is not None:
            codes = torch.arange(counts.numel(), device=counts.device)
            ones = (((codes[:, None] >> self.shifts[None, :]) & 1) * counts[:, None]).sum(0)
            summary["bit_balance"] = (ones.double() / total).tolist()
        return summary
