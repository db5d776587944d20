"""Exact LFQ entropy terms without materialising the N x 2^d code distribution.

With logits 2<z, c>/T over the codes c in {-1, +1}^d, the per-token distribution is a product of independent
bits with P(c_i = +1) = sigmoid(4 z_i / T) (derivation: docs/lfq-entropy.md). Hence

* the per-sample entropy is a sum of d binary entropies (O(N d));
* the batch-averaged distribution Q = mean_n prod_i q_{n,i} is rebuilt exactly as the product of two
  group distributions: Q[a, b] = (1/N) sum_n P^A_n(a) P^B_n(b), a (2^dA x N)(N x 2^dB) matrix product.

Q is a permutation of the full 2^d distribution (rows: the first dA channels, columns: the rest); entropies do
not depend on the order of the codes, so the bit order of the indices does not enter here.
"""
import torch
import torch.nn.functional as F

MAX_EXACT_BITS = 24  # Q has 2^d entries: 2^24 floats = 64 MiB


def _bit_log_probs(z: torch.Tensor, temperature: float):
    """log P(bit = +1), log P(bit = -1) per token and channel; z: N x d."""
    logits = 4.0 * z / temperature
    return F.logsigmoid(logits), F.logsigmoid(-logits)


def per_sample_entropy(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over the N tokens of H(q(.|z_n)) in nats; z: N x d."""
    log_p1, log_p0 = _bit_log_probs(z, temperature)
    h = -(log_p1.exp() * log_p1 + log_p0.exp() * log_p0)
    return h.sum(dim=1).mean()


def _group_probs(log_p1: torch.Tensor, log_p0: torch.Tensor) -> torch.Tensor:
    """N x g bit log-probabilities -> N x 2^g joint probabilities (row k: bit j of k is channel j)."""
    n, g = log_p1.shape
    codes = torch.arange(2**g, device=log_p1.device)
    bits = ((codes[:, None] >> torch.arange(g, device=log_p1.device)) & 1).to(log_p1.dtype)  # 2^g x g
    return torch.exp(log_p1 @ bits.T + log_p0 @ (1 - bits).T)


def _entropy(q: torch.Tensor, eps: float) -> torch.Tensor:
    return -(q * torch.log(q + eps)).sum()


class _AllReduceSum(torch.autograd.Function):
    """Sum over DDP processes whose backward sums the gradients too: with DDP's gradient averaging, every
    process then receives the gradient of the global objective."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        torch.distributed.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


def _sync_mean(summed: torch.Tensor, count: int, sync: bool) -> torch.Tensor:
    """Divide a per-process sum over tokens by the token count, over all DDP processes when `sync`."""
    if sync and torch.distributed.is_available() and torch.distributed.is_initialized():
        count_t = torch.tensor(float(count), device=summed.device, dtype=summed.dtype)
        torch.distributed.all_reduce(count_t)
        return _AllReduceSum.apply(summed) / count_t
    return summed / count


def codebook_entropy(z: torch.Tensor, temperature: float, eps: float = 1e-5, sync: bool = False) -> torch.Tensor:
    """Exact H(mean_n q(.|z_n)) = -sum_c Q(c) log(Q(c) + eps) in nats; z: N x d with d <= 24.

    `sync=True` averages Q over all DDP processes (differentiably) instead of over local tokens only.
    """
    n, d = z.shape
    if d > MAX_EXACT_BITS:
        raise ValueError(
            f"the exact codebook entropy needs a 2^{d} table; it is supported up to d = {MAX_EXACT_BITS}. "
            "Use codebook_entropy_mode='group_marginals' (an upper bound) for larger codebooks."
        )
    log_p1, log_p0 = _bit_log_probs(z, temperature)
    split = d // 2
    p_a = _group_probs(log_p1[:, :split], log_p0[:, :split])  # N x 2^dA
    p_b = _group_probs(log_p1[:, split:], log_p0[:, split:])  # N x 2^dB
    q = _sync_mean(p_a.T @ p_b, n, sync)
    return _entropy(q, eps)


def group_marginal_entropy(z: torch.Tensor, temperature: float, eps: float = 1e-5, sync: bool = False,
                           group_bits: int = 12) -> torch.Tensor:
    """Approximation for large d: sum over groups of <= `group_bits` channels of the exact entropy of each
    group's batch-averaged marginal. An upper bound of the exact codebook entropy (subadditivity)."""
    n, d = z.shape
    log_p1, log_p0 = _bit_log_probs(z, temperature)
    total = z.new_zeros(())
    for start in range(0, d, group_bits):
        group = slice(start, min(start + group_bits, d))
        q = _sync_mean(_group_probs(log_p1[:, group], log_p0[:, group]).sum(dim=0), n, sync)
        total = total + _entropy(q, eps)
    return total
