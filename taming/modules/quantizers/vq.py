"""Vector quantizer with an l2-normalised codebook (LlamaGen VQ-16/VQ-8, GigaTok)."""
import torch
import torch.nn.functional as F
from torch import nn

from .base import Quantizer, QuantizerOutput, autocast_disabled, flatten_tokens, unflatten_tokens
from .vq_entropy import DEFAULT_CHUNK_ELEMENTS, lookup_with_entropy, nearest_codes


def rotate_to(x: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """Rotation trick (Fifty et al. 2024) as GigaTok applies it: rows of x (N x d) onto the codes z_q (N x d).

    Value: x's direction rotated onto z_q's and scaled to z_q's norm, i.e. z_q up to ~1e-6. Gradient: the upstream
    gradient rotated by the same (constant) rotation instead of copied (straight-through), then through
    e = x / |x|. With u = e / (|e| + 1e-6), q = z_q / (|z_q| + 1e-6), w = (u + q) / |u + q| held constant:
    out = (e - 2 (e.w) w + 2 (e.u) q) * |z_q| / (|e| + 1e-6).
    """
    e = x / x.norm(dim=1, keepdim=True)
    e_norm = e.norm(dim=1, keepdim=True)
    u = (e / (e_norm + 1e-6)).detach()
    q = (z_q / (z_q.norm(dim=1, keepdim=True) + 1e-6)).detach()
    w = F.normalize(u + q, dim=1, eps=0.0)
    rotated = e - 2 * (e * w).sum(1, keepdim=True) * w + 2 * (e * u).sum(1, keepdim=True) * q
    return rotated * (z_q.norm(dim=1, keepdim=True) / (e_norm + 1e-6)).detach()


class VectorQuantizer(Quantizer):
    """Nearest-code vector quantization of B x dim x *grid latents with a K x dim codebook.

    l2_norm: latent tokens and codebook rows are l2-normalised before the lookup (the references' default); the
        codes are the normalised rows. rotation_trick: GigaTok's gradient estimator, applied in train AND eval
        mode as released (the value equals the code to ~1e-6); otherwise straight-through.
    Loss: vq_loss = mean (code - sg(z))^2 + beta * mean (sg(code) - z)^2 (on normalised vectors, before the
        rotation) + entropy_loss_weight * (per-sample entropy - codebook entropy) of softmax(-d / T), the last one
        in training mode only, computed in chunks of `chunk_elements` affinities (never the whole N x K matrix).
    Usage: `codebook_used` keeps the last `usage_window` indices seen in training (all zeros at first, as released);
        the logged `codebook_usage` is the fraction of the K codes among them. usage_window 0 disables it.
    Terms logged: vq_loss, commit_loss (with beta), entropy_loss (weighted), per_sample_entropy, codebook_entropy,
    codebook_usage. Everything runs in float32 under autocast (float64 stays float64).
    """

    def __init__(self, codebook_size: int = 16384, dim: int = 8, beta: float = 0.25, entropy_loss_weight: float = 0.0,
                 entropy_temperature: float = 0.01, l2_norm: bool = True, rotation_trick: bool = False,
                 usage_window: int = 65536, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS):
        super().__init__()
        if codebook_size < 2 or dim < 1:
            raise ValueError(f"need codebook_size >= 2 and dim >= 1, got {codebook_size} and {dim}")
        if entropy_temperature <= 0 or beta < 0 or entropy_loss_weight < 0 or usage_window < 0:
            raise ValueError("entropy_temperature must be > 0 and beta, entropy_loss_weight, usage_window >= 0")
        self.codebook_size, self.dim = codebook_size, dim
        self.beta, self.entropy_loss_weight, self.entropy_temperature = beta, entropy_loss_weight, entropy_temperature
        self.l2_norm, self.rotation_trick, self.chunk_elements = l2_norm, rotation_trick, chunk_elements
        self.embedding = nn.Embedding(codebook_size, dim)
        with torch.no_grad():  # the references' initialisation
            self.embedding.weight.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
            if l2_norm:
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))
        if usage_window:
            self.register_buffer("codebook_used", torch.zeros(usage_window))

    def extra_repr(self) -> str:
        return (f"codebook_size={self.codebook_size}, dim={self.dim}, l2_norm={self.l2_norm}, "
                f"rotation_trick={self.rotation_trick}")

    def codebook(self) -> torch.Tensor:
        """K x dim code vectors (normalised rows when l2_norm)."""
        weight = self.embedding.weight
        return F.normalize(weight, dim=-1) if self.l2_norm else weight

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """B x *grid indices -> B x dim x *grid code vectors."""
        self.check_indices(indices)
        codes = self.codebook()[indices.to(self.embedding.weight.device).long()]
        return codes.movedim(-1, 1).contiguous()

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """B x dim x *grid vectors -> index of the nearest code, B x *grid."""
        self.check_latent(codes)
        tokens = flatten_tokens(codes.to(self.embedding.weight.dtype))
        if self.l2_norm:
            tokens = F.normalize(tokens, dim=-1)
        return nearest_codes(tokens, self.codebook(), self.chunk_elements).view(codes.shape[0], *codes.shape[2:])

    @torch.no_grad()
    def _record_usage(self, indices: torch.Tensor) -> torch.Tensor:
        """Shift the window of recent indices and return the fraction of codes in it (no host synchronisation)."""
        window = self.codebook_used
        n = indices.numel()
        if n >= window.numel():
            window.copy_(indices[-window.numel():])
        else:
            window[:-n] = window[n:].clone()
            window[-n:] = indices
        seen = torch.zeros(self.codebook_size, device=window.device).index_fill_(0, window.long(), 1.0)
        return seen.mean()

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        self.check_latent(z)
        with autocast_disabled(z.device):
            zf = z.to(torch.promote_types(z.dtype, torch.float32))
            tokens = flatten_tokens(zf)
            if self.l2_norm:
                tokens = F.normalize(tokens, dim=-1)
            codebook = self.codebook().to(tokens.dtype)
            terms = {}
            if self.training and self.entropy_loss_weight > 0:
                indices, sample_entropy, codebook_entropy = lookup_with_entropy(
                    tokens, codebook, self.entropy_temperature, chunk_elements=self.chunk_elements)
                entropy_loss = self.entropy_loss_weight * (sample_entropy - codebook_entropy)
                terms.update(per_sample_entropy=sample_entropy.detach(), codebook_entropy=codebook_entropy.detach())
            else:
                indices = nearest_codes(tokens.detach(), codebook.detach(), self.chunk_elements)
                entropy_loss = tokens.new_zeros(())
            codes = codebook[indices]
            vq_loss = (codes - tokens.detach()).square().mean()
            commit_loss = self.beta * (codes.detach() - tokens).square().mean()
            if self.rotation_trick:
                out = rotate_to(tokens, codes)
            else:
                out = tokens + (codes - tokens).detach()
            terms.update(vq_loss=vq_loss.detach(), commit_loss=commit_loss.detach(), entropy_loss=entropy_loss.detach())
            if self.training and hasattr(self, "codebook_used"):
                terms["codebook_usage"] = self._record_usage(indices)
        quantized = unflatten_tokens(out, zf).to(z.dtype)
        return QuantizerOutput(quantized, indices.view(z.shape[0], *z.shape[2:]), vq_loss + commit_loss + entropy_loss,
                               terms)
