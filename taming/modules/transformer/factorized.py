"""Open-MAGVIT2's autoregressive model with asymmetric token factorization (`FactorizedGPT`).

A token index of b1 + b2 bits (LSB first: bit c is latent channel c) splits into two sub-tokens:
pre = index & (2^b1 - 1) (channels 0 .. b1-1) and post = index >> b1 (channel b1 + j is bit j of post), so
index = pre + 2^b1 * post. The released models use 18-bit codes split 6 + 12.

- Backbone ("spatial" blocks): input [class] + [pre_emb(p_n) + post_emb(q_n) for n = 0 .. N-2] with 2-D RoPE;
  output n is h_n (no final norm of its own).
- Intra transformer ("factorized" blocks): for every position n, a causal run over [h_n, pre_emb(p_n)] with
  RoPE rows 0 and 1 (the class row, then the identity of cell (0, 0)); the shared final `norm`, then head[0]
  on element 0 predicts p_n and head[1] on element 1 predicts q_n given p_n.
Parameter names are Open-MAGVIT2's after stripping `transformer.` (`pre_emb`, `post_emb`,
`class_emb.embedding_table`, `spatial_blocks.N.*`, `factorized_blocks.N.*`, `norm`, `head.0/1`).
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .gpt import ARGenerator, check_sizes
from .llama import Block, LabelEmbedder, RMSNorm, ffn_hidden_dim, init_weights
from .rope import check_rope_2d, check_rope_grid


FACTORIZED_SIZES = {  # Open-MAGVIT2 v2 AR configs (imagenet_conditional_llama_{B,L,XL}.yaml)
    "OM2-AR-B": dict(dim=1024, n_layer=24, n_intra_layer=2, n_head=16),  # 343.6M
    "OM2-AR-L": dict(dim=1280, n_layer=36, n_intra_layer=3, n_head=20),  # 804.4M
    "OM2-AR-XL": dict(dim=1536, n_layer=48, n_intra_layer=4, n_head=24),  # 1486.7M
}


class FactorizedGPT(ARGenerator):
    """Open-MAGVIT2 AR generator (see the module docstring).

    num_tokens: image tokens N (square), or any N with `token_grid` (the rotary grid's axis sizes, e.g. [5, 16, 16]
    for video tokens: 3-D RoPE as `GPT`'s "rope3d"). n_layer / n_intra_layer: backbone / intra blocks (Open-MAGVIT2's
    spatial_n_layer / factorized_n_layer). factorized_bits: (b1, b2), bits of the pre and post sub-tokens.
    size: a name of `FACTORIZED_SIZES` that sets dim, n_layer, n_intra_layer, n_head where they are None (default
    OM2-AR-B). Other arguments as `GPT`. `logits` and `forward` return a pair (B x N x 2^b1, B x N x 2^b2).
    """

    sizes = FACTORIZED_SIZES
    num_subtokens = 2

    def __init__(self, num_tokens: int = 256, dim: Optional[int] = None, n_layer: Optional[int] = None,
                 n_intra_layer: Optional[int] = None, n_head: Optional[int] = None, factorized_bits: Sequence[int] = (6, 12), num_classes: int = 1000,
                 class_dropout_prob: float = 0.1, token_dropout_p: float = 0.1, attn_dropout_p: float = 0.0,
                 resid_dropout_p: float = 0.1, ffn_dropout_p: float = 0.1, ffn_hidden: Optional[int] = None,
                 multiple_of: int = 256, norm_eps: float = 1e-5, rope_base: float = 10000.0,
                 class_rope: str = "zero", initializer_range: float = 0.02,
                 size: Optional[str] = "OM2-AR-B", token_grid: Optional[Sequence[int]] = None):
        super().__init__()
        check_sizes(num_tokens=num_tokens, dim=dim, n_layer=n_layer, n_intra_layer=n_intra_layer, n_head=n_head,
                    num_classes=num_classes, multiple_of=multiple_of)
        bits = tuple(factorized_bits)
        if len(bits) != 2 or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in bits) \
                or sum(bits) > 62:
            raise ValueError(f"factorized_bits must be two positive integers (pre, post) summing to at most 62, "
                             f"got {factorized_bits!r}; the released models use [6, 12]")
        self.bits = bits
        self.num_classes, self.num_tokens, self.codebook_size = num_classes, num_tokens, 2 ** sum(bits)
        self.dim = dim
        self.head_dim, self.rope_base, self.class_rope = dim // n_head, rope_base, class_rope
        if token_grid is None:  # a square image grid
            self.grid = check_rope_2d(num_tokens, self.head_dim, class_rope)
            self.token_grid = (self.grid, self.grid)
        else:  # e.g. [5, 16, 16]: the t x h x w tokens of a video clip
            self.grid, self.token_grid = None, check_rope_grid(token_grid, num_tokens, self.head_dim, class_rope)
        hidden = ffn_hidden or ffn_hidden_dim(dim, multiple_of)

        def block():
            return Block(dim, n_head, hidden, norm_eps, attn_dropout_p, resid_dropout_p, ffn_dropout_p)

        self.pre_emb = nn.Embedding(2 ** bits[0], dim)
        self.post_emb = nn.Embedding(2 ** bits[1], dim)
        self.class_emb = LabelEmbedder(num_classes, dim, class_dropout_prob)
        self.tok_dropout = nn.Dropout(token_dropout_p)
        self.spatial_blocks = nn.ModuleList(block() for _ in range(n_layer))
        self.factorized_blocks = nn.ModuleList(block() for _ in range(n_intra_layer))
        self.norm = RMSNorm(dim, norm_eps)
        self.head = nn.ModuleList(nn.Linear(dim, 2**b, bias=False) for b in bits)
        init_weights(self, initializer_range)
        for head in self.head:
            nn.init.zeros_(head.weight)

    @property
    def backbone_blocks(self) -> nn.ModuleList:
        return self.spatial_blocks

    def split(self, indices: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Token indices -> (pre, post) sub-tokens: index & (2^b1 - 1), index >> b1."""
        return indices & (2 ** self.bits[0] - 1), indices >> self.bits[0]

    def _embed(self, indices: torch.Tensor) -> torch.Tensor:
        pre, post = self.split(indices)
        return self.pre_emb(pre) + self.post_emb(post)

    def _hidden(self, prefix: torch.Tensor, labels: torch.Tensor, n_layer: Optional[int] = None) -> torch.Tensor:
        """Backbone on [class, prefix] (prefix B x L indices) through the first n_layer blocks -> B x (1 + L) x D."""
        h = self.tok_dropout(torch.cat([self.class_emb(labels), self._embed(prefix)], dim=1))
        rope = self._rope(torch.arange(h.shape[1], device=h.device))
        for block in self.spatial_blocks[:n_layer]:
            h = block(h, rope)
        return h

    def _intra(self, h: torch.Tensor, pre_emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Intra transformer over [h] or [h, pre_emb] (each ... x D) -> ... x L x D (L = 1 or 2), before the norm."""
        x = torch.stack([h] if pre_emb is None else [h, pre_emb], dim=-2)
        shape = x.shape
        x = x.reshape(-1, *shape[-2:])
        rope = self._rope(torch.arange(shape[-2], device=x.device))
        for block in self.factorized_blocks:
            x = block(x, rope)
        return x.view(shape)

    def forward(self, tokens: torch.Tensor, class_labels) -> Tuple[torch.Tensor, torch.Tensor]:
        """tokens B x N (or B x h x w) indices, class_labels (B,) -> (pre logits B x N x 2^b1, post logits
        B x N x 2^b2), float32; row t predicts token t. Dropouts and class dropout act in train mode only."""
        tokens = self._check_tokens(tokens)
        labels = self._check_labels(class_labels, tokens.shape[0], tokens.device)
        h = self._hidden(tokens[:, :-1], labels)
        z = self.norm(self._intra(h, self.pre_emb(self.split(tokens)[0])))
        return self.head[0](z[..., 0, :]).float(), self.head[1](z[..., 1, :]).float()

    def loss(self, tokens: torch.Tensor, class_labels) -> Tuple[torch.Tensor, dict]:
        """(CE(pre) + CE(post), as Open-MAGVIT2, and detached terms: loss, loss_pre, loss_post, accuracy_pre,
        accuracy_post, accuracy (both sub-tokens right)) in the current mode."""
        return self.loss_from_logits(self(tokens, class_labels), tokens)

    def loss_from_logits(self, logits: tuple, tokens: torch.Tensor) -> Tuple[torch.Tensor, dict]:
        """`loss` from this model's `forward` output (no parameters used: a trainer calls the forward of the wrapped
        module itself, e.g. under FSDP, and this on the result)."""
        logits_pre, logits_post = logits
        pre, post = self.split(tokens.flatten(1).long())
        loss_pre = F.cross_entropy(logits_pre.flatten(0, 1), pre.flatten())
        loss_post = F.cross_entropy(logits_post.flatten(0, 1), post.flatten())
        loss = loss_pre + loss_post
        right_pre, right_post = logits_pre.detach().argmax(-1) == pre, logits_post.detach().argmax(-1) == post
        return loss, {"loss": loss.detach(), "loss_pre": loss_pre.detach(), "loss_post": loss_post.detach(),
                      "accuracy_pre": right_pre.float().mean(), "accuracy_post": right_post.float().mean(),
                      "accuracy": (right_pre & right_post).float().mean()}

    # ------------------------------------------------------------------------------------- generation steps

    def _first_input(self, labels: torch.Tensor) -> torch.Tensor:
        return self.class_emb(labels)

    def _next_input(self, indices: torch.Tensor) -> torch.Tensor:
        return self._embed(indices)[:, None]

    def decode_step(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One cached backbone step. x: B x 1 x D input embedding at position `pos` ((1,) int64; the class
        embedding at 0) -> backbone output B x D; `intra_logits` turns it into sub-token logits."""
        rope, mask = self._rope(pos), self._cache_mask(pos)
        for block in self.spatial_blocks:
            x = block(x, rope, pos, mask)
        return x[:, -1]

    def intra_logits(self, h: torch.Tensor, pre: Optional[torch.Tensor] = None) -> torch.Tensor:
        """h: B x D backbone output -> pre logits B x 2^b1; given the pre sub-tokens (B,), post logits B x 2^b2."""
        if pre is None:
            return self.head[0](self.norm(self._intra(h)[:, 0])).float()
        return self.head[1](self.norm(self._intra(h, self.pre_emb(pre))[:, 1])).float()

    def _recompute(self, prefix: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._hidden(prefix, labels)[:, -1]

    def _sample_token(self, h: torch.Tensor, guided: bool, settings: list, generator):
        pre, logits_pre = self._guided_sample(self.intra_logits(h), guided, *settings[0], generator)
        pre_in = pre.repeat(2) if guided else pre  # the guided pre token feeds both halves
        post, logits_post = self._guided_sample(self.intra_logits(h, pre_in), guided, *settings[1], generator)
        return pre + (post << self.bits[0]), (logits_pre, logits_post)
