"""Nearest-code lookup and the VQ entropy loss over an N x K affinity matrix, computed in row chunks.

Affinity a_ik = -d_ik / T with d_ik = |z_i|^2 + |e_k|^2 - 2 z_i.e_k (squared Euclidean distance, LlamaGen /
GigaTok / MAGVIT), p_i = softmax(a_i). The two entropies (nats) are
    per-sample  S = mean_i H(p_i),           H(p) = -sum_k p_k log p_k
    codebook    A = H(mean_i p_i)  with log(q + eps) inside, eps = 1e-5 (the references' convention).
The plain form keeps several N x K tensors alive for autograd (d, a, p, log p, products): at K = 16384 and
N = 8192 tokens that is ~0.5 GiB each. Here only one chunk of rows exists at a time, in the forward pass and
again (recomputed) in the backward pass, with the gradients written in closed form:
    dS/da_ij = -(p_ij / N) (log p_ij + H_i)
    dA/da_ij =  (p_ij / N) (u_j - sum_k p_ik u_k),   u_k = dA/dq_k = -(log(q_k + eps) + q_k / (q_k + eps)).
(derivation: docs/vq-chunked.md)
"""
from typing import Optional, Tuple

import torch

DEFAULT_CHUNK_ELEMENTS = 1 << 24  # rows per chunk = this / K (64 MiB of float32 per N x K chunk)


def _row_chunks(n: int, k: int, chunk_elements: int):
    rows = max(1, chunk_elements // max(k, 1))
    return [(start, min(start + rows, n)) for start in range(0, n, rows)]


def squared_distances(z: torch.Tensor, codebook: torch.Tensor, codebook_sq: Optional[torch.Tensor] = None) -> torch.Tensor:
    """n x K matrix |z_i|^2 + |e_k|^2 - 2 z_i.e_k (the references' formula and rounding)."""
    if codebook_sq is None:
        codebook_sq = codebook.square().sum(1)
    return z.square().sum(1, keepdim=True) + codebook_sq - 2 * (z @ codebook.T)


@torch.no_grad()
def nearest_codes(z: torch.Tensor, codebook: torch.Tensor, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """argmin_k d_ik for z: N x d, codebook: K x d -> N int64 indices; one n x K chunk at a time."""
    codebook_sq = codebook.square().sum(1)
    out = torch.empty(z.shape[0], dtype=torch.long, device=z.device)
    for start, stop in _row_chunks(z.shape[0], codebook.shape[0], chunk_elements):
        out[start:stop] = squared_distances(z[start:stop], codebook, codebook_sq).argmin(1)
    return out


class _LookupEntropy(torch.autograd.Function):
    """(z, codebook) -> (indices, S, A); gradients of S and A w.r.t. z and codebook, chunk by chunk."""

    @staticmethod
    def forward(ctx, z, codebook, temperature, eps, chunk_elements):
        n, k = z.shape[0], codebook.shape[0]
        codebook_sq = codebook.square().sum(1)
        indices = torch.empty(n, dtype=torch.long, device=z.device)
        row_entropy = torch.empty(n, dtype=z.dtype, device=z.device)
        log_norm = torch.empty(n, dtype=z.dtype, device=z.device)
        prob_sum = torch.zeros(k, dtype=z.dtype, device=z.device)
        for start, stop in _row_chunks(n, k, chunk_elements):
            d = squared_distances(z[start:stop], codebook, codebook_sq)
            d_min, indices[start:stop] = d.min(1, keepdim=True)[0], d.argmin(1)
            # softmax(-d / T) with one exponential: logits shifted by their maximum, -d_min / T
            shifted = d.sub_(d_min).div_(-temperature)  # in place: d is not needed any more
            p = shifted.exp()
            total = p.sum(1, keepdim=True)
            p.div_(total)
            log_p = shifted.sub_(total.log())
            row_entropy[start:stop] = -(p * log_p).sum(1)
            prob_sum += p.sum(0)
            log_norm[start:stop] = (total.log() - d_min / temperature).squeeze(1)  # logsumexp of -d / T
        mean_p = prob_sum / n
        sample_entropy = row_entropy.mean()
        codebook_entropy = -(mean_p * torch.log(mean_p + eps)).sum()
        ctx.save_for_backward(z, codebook, codebook_sq, row_entropy, log_norm, mean_p)
        ctx.temperature, ctx.eps, ctx.chunk_elements = temperature, eps, chunk_elements
        ctx.mark_non_differentiable(indices)
        return indices, sample_entropy, codebook_entropy

    @staticmethod
    def backward(ctx, _, grad_sample, grad_codebook):
        z, codebook, codebook_sq, row_entropy, log_norm, mean_p = ctx.saved_tensors
        n, k = z.shape[0], codebook.shape[0]
        u = -(torch.log(mean_p + ctx.eps) + mean_p / (mean_p + ctx.eps))
        grad_z = torch.empty_like(z)
        grad_e = torch.zeros_like(codebook)
        d_sum_over_rows = torch.zeros(k, dtype=z.dtype, device=z.device)
        for start, stop in _row_chunks(n, k, ctx.chunk_elements):
            zc = z[start:stop]
            log_p = squared_distances(zc, codebook, codebook_sq).div_(-ctx.temperature).sub_(log_norm[start:stop, None])
            p = log_p.exp()
            u_bar = p @ u
            # dL/da for L = grad_sample * S + grad_codebook * A, then dL/dd = -dL/da / T
            g = log_p.add_(row_entropy[start:stop, None]).mul_(-grad_sample)
            g.add_(grad_codebook * u[None, :]).sub_(grad_codebook * u_bar[:, None])  # no chunk-sized temporary
            g.mul_(p).mul_(-1.0 / (n * ctx.temperature))
            # d = |z|^2 + |e|^2 - 2 z.e
            grad_z[start:stop] = 2 * zc * g.sum(1, keepdim=True) - 2 * (g @ codebook)
            d_sum_over_rows += g.sum(0)
            grad_e -= 2 * (g.T @ zc)
        grad_e += 2 * codebook * d_sum_over_rows[:, None]
        return grad_z, grad_e, None, None, None


def lookup_with_entropy(z: torch.Tensor, codebook: torch.Tensor, temperature: float = 0.01, eps: float = 1e-5,
                        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest-code indices (N,) and the entropies S (per-sample) and A (codebook), differentiable in z and codebook.

    z: N x d tokens, codebook: K x d, both float32 or float64. The entropy loss of the references is S - A.
    """
    if z.dim() != 2 or codebook.dim() != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(f"expected tokens N x d and a codebook K x d, got {tuple(z.shape)} and {tuple(codebook.shape)}")
    return _LookupEntropy.apply(z, codebook, float(temperature), float(eps), int(chunk_elements))


def plain_lookup_with_entropy(z: torch.Tensor, codebook: torch.Tensor, temperature: float = 0.01, eps: float = 1e-5):
    """The references' materialised form (every N x K intermediate kept for autograd): the oracle for tests and
    the baseline of scripts/benchmark_vq.py."""
    d = squared_distances(z, codebook)
    logits = -d / temperature
    p = torch.softmax(logits, dim=-1)
    log_p = torch.log_softmax(logits, dim=-1)
    mean_p = p.mean(0)
    return d.argmin(1), -(p * log_p).sum(-1).mean(), -(mean_p * torch.log(mean_p + eps)).sum()
