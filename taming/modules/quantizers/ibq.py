"""Index Backpropagation Quantization (IBQ, SEED-Voken `IndexPropagationQuantize`), without any N x K tensor.

Tokens z_i (N x D, raster order (b, grid...)) are scored against every code by the raw inner product
l_ik = <z_i, e_k> (no normalisation, no temperature); s_i = softmax(l_i), idx_i = argmax_k l_ik. The output's
value is e_idx; its gradient is that of sum_k (h_ik - sg(s_ik) + s_ik) e_k with h the one-hot of idx: the upstream
gradient g_i reaches the selected row directly and reaches z_i and EVERY code only through the softmax,
    dL/dl_ik = s_ik (u_ik - sum_j s_ij u_ij),  u_ik = <g_i, e_k>   (no identity path to z).
The entropy loss acts on p_i = softmax(l_i / T) (T = entropy_temperature):
    sample entropy S = mean_i H(p_i),  batch entropy A = H(mean_i p_i) with log(p_mean + 1e-5),
    dS/dl_ik = -(1 / (N T)) p_ik (log p_ik + H_i),
    dA/dl_ik =  (1 / (N T)) p_ik (a_k - sum_j p_ij a_j),  a_k = -(log(pm_k + 1e-5) + pm_k / (pm_k + 1e-5)).
The release keeps five N x K float32 tensors for backward (2.2 GB per 256-token image at K = 2^18). Here the
logits are recomputed in row chunks of `chunk_elements` / K tokens, forward and backward (three chunk-sized
temporaries at most), so the extra memory is the codebook gradient plus a few chunks. Derivation:
docs/ibq-chunked.md.
"""

import torch
from torch import nn

from .base import Quantizer, QuantizerOutput, autocast_disabled, flatten_tokens, unflatten_tokens
from .vq_entropy import _row_chunks

DEFAULT_CHUNK_ELEMENTS = 1 << 23  # rows per chunk = this / K (32 MiB per float32 chunk; three alive at most)
ENTROPY_EPS = 1e-5  # inside log(mean p + eps) of the batch entropy (the release's)


class _IBQLookup(torch.autograd.Function):
    """(z N x D, codebook K x D) -> (z_q, selected, idx (N,), sample entropy S, batch entropy A).

    z_q and selected both equal e_idx (N x D); z_q has IBQ's gradient (soft path + selected row), selected only
    the selected row's (the hard product of the loss). One function for both keeps a single K x D gradient.
    """

    @staticmethod
    def forward(ctx, z, codebook, temperature, chunk_elements):
        n, k = z.shape[0], codebook.shape[0]
        indices = torch.empty(n, dtype=torch.long, device=z.device)
        lse = torch.empty(n, dtype=z.dtype, device=z.device)  # logsumexp_k l_ik
        lse_t = torch.empty(n, dtype=z.dtype, device=z.device)  # logsumexp_k l_ik / T
        row_entropy = torch.empty(n, dtype=z.dtype, device=z.device)
        prob_sum = torch.zeros(k, dtype=z.dtype, device=z.device)
        for start, stop in _row_chunks(n, k, chunk_elements):
            logits = z[start:stop] @ codebook.T
            top, indices[start:stop] = logits.max(1)
            lse[start:stop] = torch.logsumexp(logits, 1)
            log_p = logits.sub_(top[:, None]).div_(temperature)  # in place: logits are not needed any more
            shift = torch.logsumexp(log_p, 1)
            lse_t[start:stop] = top / temperature + shift
            log_p.sub_(shift[:, None])
            p = log_p.exp()
            row_entropy[start:stop] = -(p * log_p).sum(1)
            prob_sum += p.sum(0)
        mean_p = prob_sum / n
        sample_entropy = row_entropy.mean()
        batch_entropy = -(mean_p * torch.log(mean_p + ENTROPY_EPS)).sum()
        ctx.save_for_backward(z, codebook, indices, lse, lse_t, row_entropy, mean_p)
        ctx.temperature, ctx.chunk_elements = temperature, chunk_elements
        ctx.mark_non_differentiable(indices)
        selected = codebook[indices]
        return selected, selected.clone(), indices, sample_entropy, batch_entropy

    @staticmethod
    def backward(ctx, grad_out, grad_selected, _, grad_sample, grad_batch):
        z, codebook, indices, lse, lse_t, row_entropy, mean_p = ctx.saved_tensors
        n, k = z.shape[0], codebook.shape[0]
        t = ctx.temperature
        a = -(torch.log(mean_p + ENTROPY_EPS) + mean_p / (mean_p + ENTROPY_EPS))
        grad_z = torch.empty_like(z)
        grad_e = torch.zeros_like(codebook)
        grad_e.index_add_(0, indices, grad_out + grad_selected)  # the selected rows get the upstream gradients
        scale = 1.0 / (n * t)
        for start, stop in _row_chunks(n, k, ctx.chunk_elements):
            zc, gc = z[start:stop], grad_out[start:stop]
            logits = zc @ codebook.T
            s = (logits - lse[start:stop, None]).exp_()
            su = (gc * (s @ codebook)).sum(1, keepdim=True)  # sum_j s_ij u_ij without forming u twice
            grad_l = (gc @ codebook.T).sub_(su).mul_(s)  # soft path
            del s
            log_p = logits.div_(t).sub_(lse_t[start:stop, None])
            p = log_p.exp()
            pa = (p @ a)[:, None]
            # entropy terms in place of log_p: p * (-gS (log p + H) + gA (a - sum_j p a_j)) / (N T)
            log_p.add_(row_entropy[start:stop, None]).mul_(-grad_sample).add_(grad_batch * a).sub_(grad_batch * pa)
            grad_l.add_(log_p.mul_(p).mul_(scale))
            del p, log_p
            grad_z[start:stop] = grad_l @ codebook
            grad_e.addmm_(grad_l.T, zc)  # in place: no K x D temporary
        return grad_z, grad_e, None, None


def ibq_lookup(z: torch.Tensor, codebook: torch.Tensor, temperature: float = 0.01,
               chunk_elements: int = DEFAULT_CHUNK_ELEMENTS):
    """(z_q, selected, indices, sample entropy, batch entropy) for tokens z (N x D) and a codebook K x D: z_q with
    IBQ's gradients (module docstring) to z and to every codebook row, selected = e_idx with the gradient of a
    plain lookup; memory O(chunk + K x D)."""
    if z.dim() != 2 or codebook.dim() != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(f"expected tokens N x d and a codebook K x d, got {tuple(z.shape)} and {tuple(codebook.shape)}")
    return _IBQLookup.apply(z, codebook, float(temperature), int(chunk_elements))


def plain_ibq(z: torch.Tensor, codebook: torch.Tensor, beta: float = 0.25, temperature: float = 0.01):
    """The release's materialised form (every N x K intermediate kept by autograd), written from its description:
    (z_q B x D x *grid, indices (N,), quant loss, sample entropy, batch entropy). The oracle for tests and the
    baseline of scripts/benchmark_ibq.py."""
    tokens = flatten_tokens(z)
    logits = tokens @ codebook.T
    soft = logits.softmax(1)
    hard = torch.nn.functional.one_hot(soft.argmax(1), codebook.shape[0]).to(soft.dtype)
    z_q = (hard - soft.detach() + soft) @ codebook
    z_q2 = hard @ codebook
    quant = (z_q - tokens).square().mean() + (z_q2.detach() - tokens).square().mean() \
        + beta * (z_q2 - tokens.detach()).square().mean()
    p, log_p = (logits / temperature).softmax(1), (logits / temperature).log_softmax(1)
    mean_p = p.mean(0)
    batch = -(mean_p * torch.log(mean_p + ENTROPY_EPS)).sum()
    return unflatten_tokens(z_q, z), soft.argmax(1), quant, -(p * log_p).sum(1).mean(), batch


class IBQ(Quantizer):
    """IBQ over B x dim x *grid latents with a K x dim codebook (N(0, 1) init, as released; no EMA updates).

    Loss (`QuantizerOutput.loss`) = quant_loss_weight * quant_loss + entropy_loss_weight * entropy_loss with
        quant_loss = mean (z_q - z)^2 + mean (sg(e_idx) - z)^2 + beta * mean (e_idx - sg(z))^2  (value (2 + beta) MSE)
        entropy_loss = sample_minimization_weight * S - batch_maximization_weight * A  (module docstring)
    computed in train and eval mode alike (as released). Terms logged under the release's names (unweighted):
    codebook_quant_loss, codebook_entropy_loss, codebook_sample_entropy_loss, codebook_avg_entropy_loss.
    Everything runs in float32 under autocast (float64 stays float64); the release's mixed-precision runs score
    the codes in half precision.
    """

    def __init__(self, codebook_size: int = 16384, dim: int = 256, beta: float = 0.25,
                 entropy_temperature: float = 0.01, sample_minimization_weight: float = 1.0,
                 batch_maximization_weight: float = 1.0, quant_loss_weight: float = 1.0,
                 entropy_loss_weight: float = 0.05, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS):
        super().__init__()
        if codebook_size < 2 or dim < 1:
            raise ValueError(f"need codebook_size >= 2 and dim >= 1, got {codebook_size} and {dim}")
        if entropy_temperature <= 0:
            raise ValueError(f"entropy_temperature must be > 0, got {entropy_temperature}")
        weights = dict(beta=beta, sample_minimization_weight=sample_minimization_weight,
                       batch_maximization_weight=batch_maximization_weight, quant_loss_weight=quant_loss_weight,
                       entropy_loss_weight=entropy_loss_weight)
        negative = {k: v for k, v in weights.items() if v < 0}
        if negative:
            raise ValueError(f"loss weights must be >= 0, got {negative}")
        if chunk_elements < 1:
            raise ValueError(f"chunk_elements must be >= 1, got {chunk_elements}")
        self.codebook_size, self.dim, self.entropy_temperature = codebook_size, dim, entropy_temperature
        self.beta, self.chunk_elements = beta, chunk_elements
        self.sample_minimization_weight, self.batch_maximization_weight = sample_minimization_weight, \
            batch_maximization_weight
        self.quant_loss_weight, self.entropy_loss_weight = quant_loss_weight, entropy_loss_weight
        self.embedding = nn.Embedding(codebook_size, dim)

    def extra_repr(self) -> str:
        return f"codebook_size={self.codebook_size}, dim={self.dim}, entropy_temperature={self.entropy_temperature}"

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """B x *grid indices -> B x dim x *grid codebook rows (the release's `get_codebook_entry`)."""
        self.check_indices(indices)
        codes = self.embedding.weight[indices.to(self.embedding.weight.device).long()]
        return codes.movedim(-1, 1).contiguous()

    @torch.no_grad()
    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """B x dim x *grid vectors -> argmax_k <z, e_k>, B x *grid."""
        self.check_latent(codes)
        weight = self.embedding.weight
        tokens = flatten_tokens(codes.to(weight.dtype))
        out = torch.empty(tokens.shape[0], dtype=torch.long, device=tokens.device)
        for start, stop in _row_chunks(tokens.shape[0], self.codebook_size, self.chunk_elements):
            out[start:stop] = (tokens[start:stop] @ weight.T).argmax(1)
        return out.view(codes.shape[0], *codes.shape[2:])

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        self.check_latent(z)
        with autocast_disabled(z.device):
            zf = z.to(torch.promote_types(z.dtype, torch.float32))
            tokens = flatten_tokens(zf)
            codebook = self.embedding.weight.to(tokens.dtype)
            z_q, selected, indices, sample_entropy, batch_entropy = ibq_lookup(
                tokens, codebook, self.entropy_temperature, self.chunk_elements)
            quant_loss = (z_q - tokens).square().mean() + (selected.detach() - tokens).square().mean() \
                + self.beta * (selected - tokens.detach()).square().mean()
            entropy_loss = self.sample_minimization_weight * sample_entropy \
                - self.batch_maximization_weight * batch_entropy
            loss = self.quant_loss_weight * quant_loss + self.entropy_loss_weight * entropy_loss
            terms = {"codebook_quant_loss": quant_loss.detach(), "codebook_entropy_loss": entropy_loss.detach(),
                     "codebook_sample_entropy_loss": sample_entropy.detach(),
                     "codebook_avg_entropy_loss": batch_entropy.detach()}
        quantized = unflatten_tokens(z_q, zf).to(z.dtype)
        return QuantizerOutput(quantized, indices.view(z.shape[0], *z.shape[2:]), loss, terms)
