"""`AdaLNGPT`: the IBQ class-conditional generator (SEED-Voken `src/IBQ/modules/transformer/llama.py` GPT).

A LlamaGen-style GPT (2-D RoPE, class token first, SwiGLU, KV cache) whose class embedding c (B x 1 x D) is both
token 0 and the adaLN condition of every block and of the head:
    (gamma1, gamma2, scale1, scale2, shift1, shift2) = Linear(SiLU(c)) per block (6 chunks of D, in this order)
    h = x + gamma1 * Attn(RMSNorm(x) (1 + scale1) + shift1);  out = h + gamma2 * FFN(RMSNorm(h) (1 + scale2) + shift2)
    logits = head(RMSNorm(h) (1 + scale) + shift),  (scale, shift) = Linear(SiLU(c))  (`head_nm`, no other norm)
Parameter names are the release's after stripping `transformer.` (`tok_emb`, `class_emb.embedding_table`,
`blocks.N.{attention, feed_forward, attention_norm, ffn_norm, ada_lin.1}`, `head_nm.{rmsnorm, ada_lin.1}`, `head`).
"""
from typing import Optional, Tuple

import torch
from torch import nn

from .gpt import GPT, ARGenerator, check_sizes
from .llama import Block, LabelEmbedder, RMSNorm, ffn_hidden_dim, init_weights
from .rope import check_rope_2d


def _modulation(cond: torch.Tensor, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.SiLU(), nn.Linear(cond, dim))


class AdaLNBlock(Block):
    """Llama block modulated by the condition (module docstring)."""

    def __init__(self, dim: int, n_head: int, ffn_hidden: int, norm_eps: float, attn_dropout_p: float,
                 resid_dropout_p: float, ffn_dropout_p: float):
        super().__init__(dim, n_head, ffn_hidden, norm_eps, attn_dropout_p, resid_dropout_p, ffn_dropout_p)
        self.ada_lin = _modulation(dim, 6 * dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, rope: Optional[torch.Tensor] = None,
                pos: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.ada_lin(cond).view(-1, 1, 6, x.shape[-1]).unbind(2)
        h = x + self.attention(self.attention_norm(x) * (1 + scale1) + shift1, rope, pos, mask) * gamma1
        return h + self.feed_forward(self.ffn_norm(h) * (1 + scale2) + shift2) * gamma2


class AdaLNHead(nn.Module):
    """RMSNorm(h) (1 + scale) + shift with (scale, shift) from the condition (the release's `AdaLNBeforeHead`)."""

    def __init__(self, dim: int, norm_eps: float = 1e-5):
        super().__init__()
        self.rmsnorm = RMSNorm(dim, norm_eps)
        self.ada_lin = _modulation(dim, 2 * dim)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, h.shape[-1]).unbind(2)
        return self.rmsnorm(h) * (1 + scale) + shift


IBQ_GPT_SIZES = {  # the released IBQ AR models (transformer parameters with vocab 16384, 1000 classes)
    "IBQ-AR-B": dict(dim=1024, n_layer=16, n_head=16, gamma_init=1e-3),  # 343M
    "IBQ-AR-L": dict(dim=1280, n_layer=20, n_head=20, gamma_init=1e-3),  # 650M
    "IBQ-AR-XL": dict(dim=1536, n_layer=24, n_head=24, gamma_init=1e-4),  # 1.1B
    "IBQ-AR-XXL": dict(dim=1920, n_layer=30, n_head=30, gamma_init=1e-5),  # 2.1B
}


class AdaLNGPT(ARGenerator):
    """IBQ AR generator (module docstring). Arguments as `GPT`, plus gamma_init: the factor on the gamma rows of
    every block's modulation at initialisation (the release's `alng`: 1e-3 for B and L, 1e-4 XL, 1e-5 XXL); the
    scale / shift rows get 0.5, biases 0, the head weight 0. size: a name of `IBQ_GPT_SIZES` that sets dim, n_layer,
    n_head and gamma_init where they are None (default IBQ-AR-B). Sampling: `ARGenerator.generate` (the release's
    constant CFG at every step is `cfg_schedule="constant"`; it also allows cfg_scale <= 1 and top_k 0)."""

    sizes = IBQ_GPT_SIZES
    num_subtokens = 1

    def __init__(self, vocab_size: int = 16384, num_tokens: int = 256, dim: Optional[int] = None,
                 n_layer: Optional[int] = None, n_head: Optional[int] = None, num_classes: int = 1000, class_dropout_prob: float = 0.1,
                 token_dropout_p: float = 0.1, attn_dropout_p: float = 0.0, resid_dropout_p: float = 0.1,
                 ffn_dropout_p: float = 0.1, ffn_hidden: Optional[int] = None, multiple_of: int = 256,
                 norm_eps: float = 1e-5, rope_base: float = 10000.0, class_rope: str = "zero",
                 initializer_range: float = 0.02, gamma_init: Optional[float] = None,
                 size: Optional[str] = "IBQ-AR-B"):
        super().__init__()
        check_sizes(vocab_size=vocab_size, num_tokens=num_tokens, dim=dim, n_layer=n_layer, n_head=n_head,
                    num_classes=num_classes, multiple_of=multiple_of)
        self.num_classes, self.num_tokens, self.codebook_size, self.dim = num_classes, num_tokens, vocab_size, dim
        self.head_dim, self.rope_base, self.class_rope = dim // n_head, rope_base, class_rope
        self.grid = check_rope_2d(num_tokens, self.head_dim, class_rope)
        self.token_grid = (self.grid, self.grid)
        hidden = ffn_hidden or ffn_hidden_dim(dim, multiple_of)

        self.class_emb = LabelEmbedder(num_classes, dim, class_dropout_prob)
        self.tok_emb = nn.Embedding(vocab_size, dim)
        self.token_drop = nn.Dropout(token_dropout_p)
        self.blocks = nn.ModuleList(AdaLNBlock(dim, n_head, hidden, norm_eps, attn_dropout_p, resid_dropout_p,
                                               ffn_dropout_p) for _ in range(n_layer))
        self.head_nm = AdaLNHead(dim, norm_eps)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self._cond: Optional[torch.Tensor] = None  # the condition of the sequences being generated
        init_weights(self, initializer_range)
        with torch.no_grad():
            for block in self.blocks:
                linear = block.ada_lin[1]
                linear.weight[2 * dim:] *= 0.5
                linear.weight[:2 * dim] *= gamma_init
                linear.bias.zero_()
            self.head_nm.ada_lin[1].weight *= 0.5
            self.head_nm.ada_lin[1].bias.zero_()
            self.head.weight.zero_()

    @property
    def backbone_blocks(self) -> nn.ModuleList:
        return self.blocks

    def _hidden(self, prefix: torch.Tensor, labels: torch.Tensor, n_layer: Optional[int] = None) -> torch.Tensor:
        h, _ = self._blocks(prefix, labels, n_layer)
        return h

    def _blocks(self, prefix: torch.Tensor, labels: torch.Tensor, n_layer: Optional[int] = None):
        """(B x (1 + L) x D after the first n_layer blocks, the condition B x 1 x D) for [class, prefix]."""
        cond = self.class_emb(labels)
        h = self.token_drop(torch.cat([cond, self.tok_emb(prefix)], dim=1))
        rope = self._rope(torch.arange(h.shape[1], device=h.device))
        for block in self.blocks[:n_layer]:
            h = block(h, cond, rope)
        return h, cond

    def _head(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_nm(h, cond)).float()

    def forward(self, tokens: torch.Tensor, class_labels) -> torch.Tensor:
        """tokens B x N (or B x h x w), class_labels (B,) -> logits B x N x vocab_size (float32); row t predicts
        token t. Dropouts and class dropout act in train mode only."""
        tokens = self._check_tokens(tokens)
        labels = self._check_labels(class_labels, tokens.shape[0], tokens.device)
        return self._head(*self._blocks(tokens[:, :-1], labels))

    def loss(self, tokens: torch.Tensor, class_labels) -> Tuple[torch.Tensor, dict]:
        return self.loss_from_logits(self(tokens, class_labels), tokens)

    loss_from_logits = staticmethod(GPT.loss_from_logits)

    # ------------------------------------------------------------------------------------- generation steps

    def _first_input(self, labels: torch.Tensor) -> torch.Tensor:
        self._cond = self.class_emb(labels)
        return self._cond

    def _next_input(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok_emb(tokens)[:, None]

    def decode_step(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One cached step (see `GPT.decode_step`); the condition is the one `_first_input` embedded."""
        rope, mask = self._rope(pos), self._cache_mask(pos)
        for block in self.blocks:
            x = block(x, self._cond, rope, pos, mask)
        return self._head(x[:, -1:], self._cond)[:, 0]

    def _recompute(self, prefix: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h, cond = self._blocks(prefix, labels)
        return self._head(h[:, -1:], cond)[:, 0]

    def _sample_token(self, logits: torch.Tensor, guided: bool, settings: list, generator):
        token, guided_logits = self._guided_sample(logits, guided, *settings[0], generator)
        return token, (guided_logits,)

    def free_cache(self) -> None:
        super().free_cache()
        self._cond = None
