"""Class-conditional Llama-style generators: the API they share, and `GPT` (LlamaGen c2i / GigaTok gpt_1d).

Sequence layout (cls_token_num = 1): position 0 holds the class embedding, position t >= 1 holds image token
t - 1, and the output at position t predicts image token t. Tokens are the tokenizer's own indices in raster
order (B x N, or B x h x w which is flattened row-major).
"""
import contextlib
import numbers
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..component import Component
from .llama import Block, KVCache, LabelEmbedder, RMSNorm, ffn_hidden_dim, init_weights
from .rope import check_rope_2d, check_rope_grid, rope_grid
from .sampling import cfg_combine, cfg_scale_at, check_sampling, sample_logits

Number = Union[int, float]
POSITIONS = ("rope2d", "rope3d", "learned")


def check_sizes(**sizes: int) -> None:
    """Raise a clear error unless every size is a positive integer and dim is divisible by n_head."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    dim, n_head = sizes["dim"], sizes["n_head"]
    if dim % n_head:
        raise ValueError(f"dim={dim} is not divisible by n_head={n_head}; choose sizes with an integer head dimension")


class ARGenerator(Component):
    """The API shared by the class-conditional generators.

    Subclasses set `num_classes`, `num_tokens`, `codebook_size` (the tokenizer's index space), `dim` (the residual
    width), `num_subtokens`, `head_dim`, `token_grid` (the rotary grid's axis sizes, None: no rotary positions),
    `grid` (the side of a square 2-D grid, else None), `rope_base`, `class_rope`; they
    implement `forward`, `loss`, `_hidden`, `_first_input`, `_next_input`, `decode_step`, `_recompute` and
    `_sample_token`, and name the blocks that get a KV cache `backbone_blocks`.
    """

    @property
    def null_class(self) -> int:
        """The unconditional label (last row of the class table)."""
        return self.num_classes

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------------------------- input checks

    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """B x N, B x h x w or B x t x h x w (video) integer indices in [0, codebook_size) -> B x N int64 (raster)."""
        if not torch.is_tensor(tokens) or tokens.is_floating_point() or tokens.is_complex() or \
                tokens.dtype == torch.bool:
            kind = tokens.dtype if torch.is_tensor(tokens) else type(tokens).__name__
            raise TypeError(f"tokens must be an integer tensor of token indices (B x N or B x h x w), got {kind}")
        if tokens.dim() not in (2, 3, 4):
            raise ValueError(f"tokens must be B x N, B x h x w or B x t x h x w, got shape {tuple(tokens.shape)}; "
                             "add a batch dimension with tokens[None]")
        tokens = tokens.flatten(1).long()
        if tokens.shape[1] != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} tokens per image (this model's num_tokens), got "
                             f"{tokens.shape[1]} (shape {tuple(tokens.shape)})")
        if not torch.compiler.is_compiling() and tokens.numel():
            low, high = torch.aminmax(tokens)
            if low < 0 or high >= self.codebook_size:
                raise ValueError(f"token indices must be in [0, {self.codebook_size}), got values in [{int(low)}, "
                                 f"{int(high)}]; were they made by the tokenizer this model was trained with?")
        return tokens

    def _check_tokens_prefix(self, prefix: torch.Tensor, batch: int) -> torch.Tensor:
        """B x P (or B x t' x h x w: the first latent frames) given tokens -> B x P int64, 0 < P < num_tokens."""
        if not torch.is_tensor(prefix) or prefix.is_floating_point() or prefix.dim() < 2 or prefix.shape[0] != batch:
            got = f"{prefix.dtype} {tuple(prefix.shape)}" if torch.is_tensor(prefix) else type(prefix).__name__
            raise ValueError(f"prefix must be integer tokens B x P for the batch of {batch} labels, got {got}")
        prefix = prefix.flatten(1).long()
        if not 0 < prefix.shape[1] < self.num_tokens:
            raise ValueError(f"prefix must hold between 1 and {self.num_tokens - 1} tokens, got {prefix.shape[1]}")
        if prefix.numel() and (prefix.min() < 0 or prefix.max() >= self.codebook_size):
            raise ValueError(f"prefix token indices must be in [0, {self.codebook_size})")
        return prefix

    def _check_labels(self, labels, batch: Optional[int] = None, device=None) -> torch.Tensor:
        """Class labels (ints, a list, or a (B,) / B x 1 tensor) in [0, num_classes] -> (B,) int64 on `device`."""
        try:
            labels = torch.as_tensor(labels, device=device)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"class labels must be integers (a list or a tensor), got {labels!r}") from None
        if labels.numel() == 0:
            raise ValueError("got no class labels; give at least one (one per image)")
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.dim() > 2 or \
                (labels.dim() == 2 and labels.shape[1] != 1):
            raise ValueError(f"class labels must be integers, shape (B,) or B x 1, got {labels.dtype} "
                             f"{tuple(labels.shape)}")
        labels = labels.reshape(-1).long()
        if batch is not None and labels.shape[0] != batch:
            raise ValueError(f"got {labels.shape[0]} class labels for a batch of {batch} token sequences")
        if not torch.compiler.is_compiling() and labels.numel():
            low, high = torch.aminmax(labels)
            if low < 0 or high > self.num_classes:
                raise ValueError(f"class labels must be in [0, {self.num_classes}] ({self.num_classes} = the null "
                                 f"class), got values in [{int(low)}, {int(high)}]")
        return labels

    # ------------------------------------------------------------------------------------- evaluation

    @contextlib.contextmanager
    def _inference(self):
        """Eval mode and no autograd inside; the previous mode is restored afterwards."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def logits(self, tokens: torch.Tensor, class_labels):
        """Teacher-forced logits in eval mode, without autograd: row t predicts token t (see `forward`)."""
        with self._inference():
            return self(tokens, class_labels)

    def hidden_states(self, tokens: torch.Tensor, class_labels, layer: int) -> torch.Tensor:
        """B x N x D backbone activations after block `layer` (1 = first block; 0 = the input embeddings), eval
        mode, teacher-forced. Row 0 is the class position. For GigaTok-style linear probing pass the null class
        (`model.null_class`) and mean-pool over rows."""
        n_layer = len(self.backbone_blocks)
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= n_layer:
            raise ValueError(f"layer must be an integer in [0, {n_layer}] (blocks run), got {layer!r}")
        tokens = self._check_tokens(tokens)
        labels = self._check_labels(class_labels, tokens.shape[0], tokens.device)
        with self._inference():
            return self._hidden(tokens[:, :-1], labels, layer)

    # ------------------------------------------------------------------------------------- positions, cache

    def _rope(self, positions: torch.Tensor) -> Optional[torch.Tensor]:
        if self.token_grid is None:
            return None
        return rope_grid(positions, self.token_grid, self.head_dim, self.rope_base, self.class_rope)

    def setup_cache(self, batch: int, length: Optional[int] = None) -> None:
        """Allocate (or keep, when the shape, dtype and device already fit) a static KV cache in every backbone
        block: `batch` sequences (twice the images under CFG) of `length` positions (default num_tokens),
        rounded up to a multiple of 8. `generate` calls it; `free_cache` releases the memory."""
        length = -(-(length or self.num_tokens) // 8) * 8
        weight = self.backbone_blocks[0].attention.wqkv.weight
        for block in self.backbone_blocks:
            attn = block.attention
            cache = attn.kv_cache
            if cache is None or cache.k.shape != (batch, attn.n_head, length, attn.head_dim) or \
                    cache.k.dtype != weight.dtype or cache.k.device != weight.device:
                attn.kv_cache = None  # free the old one first
                attn.kv_cache = KVCache(batch, attn.n_head, length, attn.head_dim, weight.dtype, weight.device)

    def free_cache(self) -> None:
        for block in self.backbone_blocks:
            block.attention.kv_cache = None

    def _cache_mask(self, pos: torch.Tensor) -> torch.Tensor:
        """1 x 1 x 1 x cache length bool: the cache slots a query at position `pos` (1,) may attend to."""
        length = self.backbone_blocks[0].attention.kv_cache.k.shape[2]
        return (torch.arange(length, device=pos.device) <= pos).view(1, 1, 1, length)

    # ------------------------------------------------------------------------------------- generation

    def _per_subtoken(self, value, name: str, count: int) -> list:
        if isinstance(value, (list, tuple)):
            if count == 1:
                raise ValueError(f"{name} must be a single number for this model (pairs are for factorized models), "
                                 f"got {value!r}")
            if len(value) != count:
                raise ValueError(f"{name} must be a number or {count} numbers (one per sub-token), got {value!r}")
            return list(value)
        return [value] * count

    def _guided_sample(self, logits: torch.Tensor, guided: bool, scale: float, temperature: float, top_k: int,
                       top_p: float, generator: Optional[torch.Generator]):
        """(tokens (B,), the guided logits B x V) from logits of the [cond; uncond] batch (or cond only)."""
        if guided:
            logits = cfg_combine(*logits.chunk(2), scale)
        return sample_logits(logits, temperature, top_k, top_p, generator), logits

    def generate(self, class_labels, cfg_scale: Union[Number, Sequence[Number]] = 1.0,
                 temperature: Union[Number, Sequence[Number]] = 1.0, top_k: Union[int, Sequence[int]] = 0,
                 top_p: Union[Number, Sequence[Number]] = 1.0, generator: Optional[torch.Generator] = None,
                 cfg_schedule: str = "constant", cfg_start_ratio: float = 0.18, use_cache: bool = True,
                 return_logits: bool = False, prefix: Optional[torch.Tensor] = None):
        """Sample B x N int64 token indices (the tokenizer's index space), one image per class label.

        class_labels: B labels in [0, num_classes] (the null class samples unconditionally).
        cfg_scale: classifier-free guidance, logits = uncond + s * (cond - uncond) with the batch [cond; null];
            1 = off (no doubled batch), 0 = unconditional. (The references also switch it off for s < 1.)
        temperature, top_k (0 = off), top_p (1 = off): see `sampling.sample_logits`.
            Factorized models take each of cfg_scale, temperature, top_k, top_p as a number or a pair (one per
            sub-token).
        generator: torch.Generator on the model's device for the multinomial draws (default: the global RNG).
        cfg_schedule: "constant", "linear" or "step" (GigaTok; `sampling.cfg_scale_at`), with cfg_start_ratio
            for "step".
        use_cache: decode one token per step with the static KV cache (False: recompute the whole prefix each
            step; slow, for checking).
        return_logits: also return the guided logits (before temperature) at every sampled step, B x (N - P) x V
            (factorized: a pair, one per sub-token).
        prefix: B x P given tokens (raster order) that the samples continue: frame prediction for video generators
            (the first latent frame's h x w tokens of real clips), or completing images; they are fed, not sampled.
        """
        count = self.num_subtokens
        settings = list(zip(*(self._per_subtoken(v, n, count) for v, n in (
            (cfg_scale, "cfg_scale"), (temperature, "temperature"), (top_k, "top_k"), (top_p, "top_p")))))
        for s, t, k, p in settings:
            if isinstance(s, bool) or not isinstance(s, numbers.Real):
                raise ValueError(f"cfg_scale must be a number (1 = no guidance), got {s!r}")
            check_sampling(t, k, p)
        if isinstance(cfg_start_ratio, bool) or not isinstance(cfg_start_ratio, numbers.Real) or \
                not 0 <= cfg_start_ratio <= 1:
            raise ValueError(f"cfg_start_ratio must be in [0, 1], got {cfg_start_ratio}")
        cfg_scale_at(0, self.num_tokens, 1.0, cfg_schedule)  # validates the schedule name
        labels = self._check_labels(class_labels, device=self.device)
        guided = any(s != 1 for s, *_ in settings)
        cond = torch.cat([labels, torch.full_like(labels, self.null_class)]) if guided else labels
        copies = 2 if guided else 1
        n = self.num_tokens
        tokens = torch.zeros(labels.shape[0], n, dtype=torch.long, device=labels.device)
        given = 0
        if prefix is not None:
            prefix = self._check_tokens_prefix(prefix, labels.shape[0])
            given = prefix.shape[1]
            tokens[:, :given] = prefix.to(tokens.device)
        steps = []
        with self._inference():
            if use_cache:
                self.setup_cache(cond.shape[0], n)
                x, pos = self._first_input(cond), torch.zeros(1, dtype=torch.long, device=labels.device)
            for t in range(n):
                if t < given:  # a given token: only its keys and values enter the cache
                    if use_cache:
                        self.decode_step(x, pos)
                else:
                    out = self.decode_step(x, pos) if use_cache else self._recompute(tokens[:, :t].repeat(copies, 1),
                                                                                      cond)
                    step_settings = [(cfg_scale_at(t, n, s, cfg_schedule, cfg_start_ratio), tmp, k, p)
                                     for s, tmp, k, p in settings]
                    tokens[:, t], logits = self._sample_token(out, guided, step_settings, generator)
                    if return_logits:
                        steps.append(logits)
                if use_cache and t + 1 < n:
                    x = self._next_input(tokens[:, t].repeat(copies))
                    pos += 1
        if not return_logits:
            return tokens
        stacked = tuple(torch.stack(s, dim=1) for s in zip(*steps))
        return tokens, stacked if count > 1 else stacked[0]


GPT_SIZES = {  # LlamaGen's names; c2i parameter counts with vocab 16384 and 1000 classes
    "GPT-B": dict(dim=768, n_layer=12, n_head=12),  # 111M
    "GPT-L": dict(dim=1024, n_layer=24, n_head=16),  # 343M
    "GPT-XL": dict(dim=1280, n_layer=36, n_head=20),  # 775M
    "GPT-XXL": dict(dim=1536, n_layer=48, n_head=24),  # 1.4B
    "GPT-XXXL": dict(dim=2560, n_layer=48, n_head=40),  # 3.9B (defined, not released)
    "GPT-3B": dict(dim=3200, n_layer=24, n_head=32),  # 3.1B
}


class GPT(ARGenerator):
    """LlamaGen c2i GPT (2-D RoPE), GigaTok gpt_1d (learned 1-D absolute positions, `positions="learned"`) and the
    video GPT (`positions="rope3d"` with `token_grid: [t, h, w]`, e.g. [5, 16, 16] for Open-MAGVIT2 video tokens).

    vocab_size: tokenizer codebook size (= `codebook_size`). num_tokens: image tokens N (a square number for
    2-D RoPE). ffn_hidden: SwiGLU width (default: ffn_hidden_dim(dim, multiple_of)). class_dropout_prob: train-mode
    probability of replacing a label by the null class. class_rope: "zero" (the references' zero rotation at
    the class position) or "identity"; 2-D RoPE only. size: a name of `GPT_SIZES` that sets dim, n_layer, n_head
    where they are None (default GPT-B).
    Parameter names are LlamaGen's / GigaTok's (`tok_embeddings`, `cls_embedding.embedding_table`, `layers.N.*`,
    `norm`, `output`, and `positional_embedding` (1 + N) x D for learned positions).
    """

    sizes = GPT_SIZES
    num_subtokens = 1

    def __init__(self, vocab_size: int = 16384, num_tokens: int = 256, dim: Optional[int] = None,
                 n_layer: Optional[int] = None, n_head: Optional[int] = None, num_classes: int = 1000, class_dropout_prob: float = 0.1,
                 token_dropout_p: float = 0.1, attn_dropout_p: float = 0.0, resid_dropout_p: float = 0.1,
                 ffn_dropout_p: float = 0.1, ffn_hidden: Optional[int] = None, multiple_of: int = 256,
                 norm_eps: float = 1e-5, positions: str = "rope2d", rope_base: float = 10000.0,
                 class_rope: str = "zero", initializer_range: float = 0.02, size: Optional[str] = "GPT-B",
                 token_grid: Optional[Sequence[int]] = None):
        super().__init__()
        check_sizes(vocab_size=vocab_size, num_tokens=num_tokens, dim=dim, n_layer=n_layer, n_head=n_head,
                    num_classes=num_classes, multiple_of=multiple_of)
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        self.num_classes, self.num_tokens, self.codebook_size = num_classes, num_tokens, vocab_size
        self.dim = dim
        self.head_dim, self.rope_base, self.class_rope = dim // n_head, rope_base, class_rope
        if positions == "rope3d":
            if token_grid is None or len(token_grid) != 3:
                raise ValueError(f"positions 'rope3d' needs token_grid: [frames, height, width] of the tokens, got "
                                 f"{token_grid!r}")
            self.grid, self.token_grid = None, check_rope_grid(token_grid, num_tokens, self.head_dim, class_rope)
        elif token_grid is not None:
            raise ValueError(f"token_grid is for positions 'rope3d', got positions {positions!r}")
        else:
            self.grid = check_rope_2d(num_tokens, self.head_dim, class_rope) if positions == "rope2d" else None
            self.token_grid = (self.grid, self.grid) if self.grid else None
        hidden = ffn_hidden or ffn_hidden_dim(dim, multiple_of)

        self.cls_embedding = LabelEmbedder(num_classes, dim, class_dropout_prob)
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        self.tok_dropout = nn.Dropout(token_dropout_p)
        self.layers = nn.ModuleList(Block(dim, n_head, hidden, norm_eps, attn_dropout_p, resid_dropout_p,
                                          ffn_dropout_p) for _ in range(n_layer))
        self.norm = RMSNorm(dim, norm_eps)
        self.output = nn.Linear(dim, vocab_size, bias=False)
        init_weights(self, initializer_range)
        nn.init.zeros_(self.output.weight)
        self.positional_embedding = None
        if positions == "learned":
            self.positional_embedding = nn.Parameter(torch.randn(1 + num_tokens, dim) * dim**-0.5)

    @property
    def backbone_blocks(self) -> nn.ModuleList:
        return self.layers

    def _hidden(self, prefix: torch.Tensor, labels: torch.Tensor, n_layer: Optional[int] = None) -> torch.Tensor:
        """Input [class, prefix] (prefix B x L tokens) through the first n_layer blocks -> B x (1 + L) x D."""
        h = torch.cat([self.cls_embedding(labels), self.tok_embeddings(prefix)], dim=1)
        if self.positional_embedding is not None:
            h = h + self.positional_embedding[: h.shape[1]]
        h = self.tok_dropout(h)
        rope = self._rope(torch.arange(h.shape[1], device=h.device))
        for block in self.layers[:n_layer]:
            h = block(h, rope)
        return h

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(self.norm(h)).float()

    def forward(self, tokens: torch.Tensor, class_labels) -> torch.Tensor:
        """tokens B x N (or B x h x w), class_labels (B,) -> logits B x N x vocab_size (float32); row t predicts
        token t. Dropouts and class dropout act in train mode only."""
        tokens = self._check_tokens(tokens)
        labels = self._check_labels(class_labels, tokens.shape[0], tokens.device)
        return self._head(self._hidden(tokens[:, :-1], labels))

    def loss(self, tokens: torch.Tensor, class_labels) -> Tuple[torch.Tensor, dict]:
        """(mean next-token cross-entropy, {"loss", "accuracy"} detached) in the current mode."""
        return self.loss_from_logits(self(tokens, class_labels), tokens)

    @staticmethod
    def loss_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> Tuple[torch.Tensor, dict]:
        """`loss` from this model's `forward` output (no parameters used: a trainer calls the forward of the wrapped
        module itself, e.g. under FSDP, and this on the result)."""
        tokens = tokens.flatten(1).long()
        ce = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
        accuracy = (logits.detach().argmax(-1) == tokens).float().mean()
        return ce, {"loss": ce.detach(), "accuracy": accuracy}

    # ------------------------------------------------------------------------------------- generation steps

    def _first_input(self, labels: torch.Tensor) -> torch.Tensor:
        return self.cls_embedding(labels)

    def _next_input(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok_embeddings(tokens)[:, None]

    def decode_step(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One cached step. x: B x 1 x D input embedding at position `pos` ((1,) int64; the class embedding at
        0), without the positional term -> logits B x vocab_size (float32) for token `pos`. Static shapes:
        compile it with torch.compile(model.decode_step) for fast sampling."""
        if self.positional_embedding is not None:
            x = x + self.positional_embedding[pos]
        rope, mask = self._rope(pos), self._cache_mask(pos)
        for block in self.layers:
            x = block(x, rope, pos, mask)
        return self._head(x[:, -1])

    def _recompute(self, prefix: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits for token t from the whole prefix (B x t tokens), without the cache."""
        return self._head(self._hidden(prefix, labels)[:, -1])

    def _sample_token(self, logits: torch.Tensor, guided: bool, settings: list, generator):
        token, guided_logits = self._guided_sample(logits, guided, *settings[0], generator)
        return token, (guided_logits,)
