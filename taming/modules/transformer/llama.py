"""Llama-style decoder block (LlamaGen / Open-MAGVIT2 layout and parameter names) and its pieces.

Block: x + Attention(RMSNorm(x)), then + SwiGLU(RMSNorm(.)); pre-norm, no biases, fused q/k/v projection,
PyTorch SDPA attention. Parameter names equal the references' (`attention.wqkv`, `attention.wo`,
`feed_forward.w1/w2/w3`, `attention_norm`, `ffn_norm`), so their checkpoints load without renaming.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .rope import apply_rope


def ffn_hidden_dim(dim: int, multiple_of: int = 256) -> int:
    """SwiGLU width of the references: int(8 / 3 * dim) rounded up to a multiple of `multiple_of`."""
    hidden = int(2 * (4 * dim) / 3)
    return -(-hidden // multiple_of) * multiple_of


def init_weights(module: nn.Module, std: float) -> None:
    """The references' init: every Linear and Embedding weight ~ N(0, std) (norms keep their ones)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 and returned in x's dtype before the scale (as the references)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt((xf * xf).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), then dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.ffn_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class KVCache(nn.Module):
    """Static keys and values of one attention layer: batch x n_head x length x head_dim each.

    Non-persistent buffers: they follow `.to()` but never enter a state dict.
    """

    def __init__(self, batch: int, n_head: int, length: int, head_dim: int, dtype: torch.dtype, device):
        super().__init__()
        shape = (batch, n_head, length, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B x H x T x head_dim) at slots `pos` (T,); returns the whole cache (keys, values)."""
        self.k.index_copy_(2, pos, k.to(self.k.dtype))
        self.v.index_copy_(2, pos, v.to(self.v.dtype))
        return self.k, self.v


class Attention(nn.Module):
    """Multi-head causal self-attention with optional rotary positions and an optional static KV cache."""

    def __init__(self, dim: int, n_head: int, attn_dropout_p: float = 0.0, resid_dropout_p: float = 0.0):
        super().__init__()
        self.n_head, self.head_dim = n_head, dim // n_head
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)  # rows: q, then k, then v
        self.wo = nn.Linear(dim, dim, bias=False)
        self.attn_dropout_p = attn_dropout_p
        self.resid_dropout = nn.Dropout(resid_dropout_p)
        self.kv_cache: Optional[KVCache] = None

    def forward(self, x: torch.Tensor, rope: Optional[torch.Tensor] = None, pos: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: B x T x D; rope: T x head_dim/2 x 2 or None (no rotation).

        Without `pos`: causal attention within x. With `pos` (T,) int64: x holds positions `pos`; their keys and
        values are written to the KV cache, and the queries attend to the cache slots where `mask` (bool, the
        cache length, or T x cache length) is true.
        """
        B, T, D = x.shape
        q, k, v = self.wqkv(x).view(B, T, 3, self.n_head, self.head_dim).unbind(2)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if pos is None:
            dropout = self.attn_dropout_p if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            k, v = self.kv_cache.update(pos, k, v)
            y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask)
        return self.resid_dropout(self.wo(y.transpose(1, 2).reshape(B, T, D)))


class Block(nn.Module):
    """Pre-norm Llama block: h = x + attention(norm(x)); out = h + feed_forward(norm(h))."""

    def __init__(self, dim: int, n_head: int, ffn_hidden: int, norm_eps: float = 1e-5, attn_dropout_p: float = 0.0,
                 resid_dropout_p: float = 0.0, ffn_dropout_p: float = 0.0):
        super().__init__()
        self.attention = Attention(dim, n_head, attn_dropout_p, resid_dropout_p)
        self.feed_forward = FeedForward(dim, ffn_hidden, ffn_dropout_p)
        self.attention_norm = RMSNorm(dim, norm_eps)
        self.ffn_norm = RMSNorm(dim, norm_eps)

    def forward(self, x: torch.Tensor, rope: Optional[torch.Tensor] = None, pos: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, pos, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class LabelEmbedder(nn.Module):
    """Class label -> one prefix token. Row `num_classes` of the table is the null class (unconditional).

    In train mode every label is replaced by the null class with probability `dropout_prob` (to learn the
    unconditional model that classifier-free guidance needs).
    """

    def __init__(self, num_classes: int, dim: int, dropout_prob: float = 0.1):
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """labels: (B,) int64 in [0, num_classes] -> B x 1 x D."""
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)[:, None]
