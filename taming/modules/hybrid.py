"""GigaTok's hybrid CNN-Transformer tokenizer: image -> CNN -> transformer -> tokens -> transformer -> CNN -> image.

Two token layouts. "1d": a DETR-style transformer turns the g x g CNN feature grid into N 1-D tokens
(B x C x N latents) and another turns them back into the grid. "2d": one token per grid cell
(B x C x g x g latents). Transformer tensors are batch-first, B x L x width; a g x g grid becomes g*g tokens in
row-major order (token = row * g + column). Positional embeddings keep the released shape (L x 1 x width) and
fix the input size: the grid is image_size / 2**(len(ch_mult) - 1), 16 x 16 for the released 256 x 256 models.

Parameter names follow the released checkpoints, except that each transformer's layer list is `layers`
(released: `transformer`); `taming.released.gigatok` translates the keys.
"""
import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .codec import TokenDecoder, TokenEncoder
from .vqgan import Decoder, Encoder

# Released transformer sizes (GigaTok's size names): width, layers, heads; MLP ratio 4.
TRANSFORMER_SIZES = {
    "tiny": dict(width=256, num_layers=4, num_heads=4),
    "small": dict(width=512, num_layers=6, num_heads=8),
    "base": dict(width=768, num_layers=12, num_heads=12),
    "large": dict(width=1024, num_layers=24, num_heads=16),
    "xl": dict(width=1280, num_layers=36, num_heads=20),
    "xxl": dict(width=1536, num_layers=48, num_heads=24),
    "xxxl": dict(width=2560, num_layers=48, num_heads=40),
}
LAYOUTS = ("1d", "2d")
LAYER_TYPES = ("transformer", "detr")


def init_weights(module: nn.Module) -> None:
    """GigaTok's from-scratch init: Linear/Conv/Embedding weights truncated normal (std 0.02), biases 0,
    LayerNorm (1, 0). Attention in-projections and positional embeddings keep their own init."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def pyramid_tokens(x: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """B x C x H x W map -> B x num_tokens x C average-pooled tokens, coarse to fine (1D query init).

    With n = log2(num_tokens): group 0 is the global mean, and group i = 1..n pools level l = i - 1 into
    2**(l // 2) rows x 2**((l + 1) // 2) columns of blocks (columns split first), blocks in row-major order.
    Sizes 1, 1, 2, 4, ..., 2**(n-1) add up to num_tokens.
    """
    levels = [0] + list(range(int(math.log2(num_tokens))))
    h, w = x.shape[-2:]
    groups = [F.avg_pool2d(x, (h // 2 ** (l // 2), w // 2 ** ((l + 1) // 2))).flatten(2) for l in levels]
    return torch.cat(groups, dim=2).transpose(1, 2)


def _check_pyramid(num_tokens: int, grid_size: int) -> None:
    n = int(math.log2(num_tokens)) if isinstance(num_tokens, int) and num_tokens > 0 else -1
    if n < 0 or 2 ** n != num_tokens:
        raise ValueError(f"num_tokens must be a power of two (e.g. 256), got {num_tokens!r}")
    finest = max(n - 1, 0)
    rows, cols = 2 ** (finest // 2), 2 ** ((finest + 1) // 2)
    if grid_size % rows or grid_size % cols:
        raise ValueError(f"num_tokens={num_tokens} pools the feature grid into {rows} x {cols} blocks, which does not "
                         f"divide the {grid_size} x {grid_size} grid; use fewer tokens or a larger image_size")


def _distill_mlp(width: int, out_dim: int) -> nn.Sequential:
    """Semantic-regularisation projection: Linear(W, 4W)-SiLU-Linear(4W, 4W)-SiLU-Linear(4W, out_dim)."""
    return nn.Sequential(nn.Linear(width, 4 * width), nn.SiLU(), nn.Linear(4 * width, 4 * width), nn.SiLU(),
                         nn.Linear(4 * width, out_dim))


def _pos(embedding: nn.Parameter, like: torch.Tensor) -> torch.Tensor:
    """Released L x 1 x W positional embedding -> 1 x L x W in the dtype of `like`."""
    return embedding.transpose(0, 1).to(like.dtype)


def _check_shape(x: torch.Tensor, tail: Tuple[int, ...], what: str, hint: str) -> None:
    if not torch.is_tensor(x) or x.dim() != len(tail) + 1 or tuple(x.shape[1:]) != tail:
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{what} expects B x {' x '.join(map(str, tail))}, got {got}; {hint}")


class _Layer(nn.Module):
    """Shared parts of both layer types: `self_attn`, GELU MLP `linear1`/`linear2`, dropout."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, num_heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(width, int(width * mlp_ratio))
        self.linear2 = nn.Linear(int(width * mlp_ratio), width)
        self.dropout = nn.Dropout(dropout)

    def attend(self, attn: nn.MultiheadAttention, q, k, v) -> torch.Tensor:
        return self.dropout(attn(q, k, v, need_weights=False)[0])

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.linear2(self.dropout(F.gelu(self.linear1(x)))))


class TransformerLayer(_Layer):
    """Pre-norm self-attention block (GigaTok `TransformerLayer`): x += SA(LN1(x)); x += MLP(LN2(x)).
    No positional terms: the 2-D model adds its positional embedding once, before the first layer."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__(width, num_heads, mlp_ratio, dropout)
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attend(self.self_attn, h, h, h)
        return x + self.mlp(self.norm2(x))


class DETRLayer(_Layer):
    """Pre-norm DETR decoder layer (GigaTok `TransformerDecoderLayer`), positions added at every layer:

    x += SA(q = k = LN1(x) + pos, v = LN1(x));  x += CA(q = LN2(x) + pos, k = memory + memory_pos, v = memory);
    x += MLP(LN3(x)). x: B x L x W, memory: B x M x W (never normalised here; None = the layer input x, as the
    2-D model uses it), pos: 1 x L x W, memory_pos: 1 x M x W.
    """

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__(width, num_heads, mlp_ratio, dropout)
        self.multihead_attn = nn.MultiheadAttention(width, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.norm3 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, memory: Optional[torch.Tensor], pos: torch.Tensor,
                memory_pos: torch.Tensor) -> torch.Tensor:
        memory = x if memory is None else memory
        h = self.norm1(x)
        x = x + self.attend(self.self_attn, h + pos, h + pos, h)
        x = x + self.attend(self.multihead_attn, self.norm2(x) + pos, memory + memory_pos, memory)
        return x + self.mlp(self.norm3(x))


class _Transformer(nn.Module):
    """Base: `layers` (run in order, each under activation checkpointing when `grad_checkpointing` is set and
    gradients are being recorded), `ln_post`, and the optional `distill_mlp` tap after layer `distill_depth`."""

    def __init__(self, layer_cls, width: int, num_layers: int, num_heads: int, mlp_ratio: float, dropout: float,
                 grad_checkpointing: bool, distill_depth: Optional[int] = None, distill_dim: int = 768):
        super().__init__()
        if min(width, num_layers, num_heads) < 1 or width % num_heads:
            raise ValueError(f"need width, num_layers, num_heads >= 1 and width divisible by num_heads; got "
                             f"width={width}, num_layers={num_layers}, num_heads={num_heads}")
        if distill_depth is not None and not 1 <= distill_depth <= num_layers:
            raise ValueError(f"distill_depth={distill_depth} must name a layer in 1..{num_layers} (or be None)")
        self.width, self.grad_checkpointing, self.distill_depth = width, grad_checkpointing, distill_depth
        self.layers = nn.ModuleList(layer_cls(width, num_heads, mlp_ratio, dropout) for _ in range(num_layers))
        self.ln_post = nn.LayerNorm(width)
        if distill_depth is not None:
            self.distill_mlp = _distill_mlp(width, distill_dim)

    def run_layers(self, x: torch.Tensor, *args, tap: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x through every layer (extra args passed to each); also distill_mlp(x after layer distill_depth) when
        `tap` (B x L x distill_dim), else None."""
        tapped = None
        for depth, layer in enumerate(self.layers, 1):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, *args, use_reentrant=False)
            else:
                x = layer(x, *args)
            if tap and depth == self.distill_depth:
                tapped = self.distill_mlp(x)
        return x, tapped

    def to_map(self, x: torch.Tensor, *spatial: int) -> torch.Tensor:
        """ln_post, then B x L x W tokens -> B x W x *spatial map."""
        return self.ln_post(x).transpose(1, 2).reshape(len(x), self.width, *spatial)


class Encoder1D(_Transformer):
    """GigaTok `s2to1encoder`: B x C x g x g CNN features -> B x C x N 1-D latent tokens.

    memory = encoder_embed(ln_pre(features)); queries = global_proj(pyramid_tokens(memory)); DETR layers with
    query positions `latent_token_positional_embedding` and memory positions `positional_embedding`; then
    ln_post and the 1x1 `conv_out` W -> C.
    """

    def __init__(self, channels: int, grid_size: int, num_tokens: int, width: int, num_layers: int, num_heads: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, grad_checkpointing: bool = False):
        _check_pyramid(num_tokens, grid_size)
        super().__init__(DETRLayer, width, num_layers, num_heads, mlp_ratio, dropout, grad_checkpointing)
        self.channels, self.grid_size, self.num_tokens = channels, grid_size, num_tokens
        self.ln_pre = nn.LayerNorm(channels)
        self.encoder_embed = nn.Linear(channels, width)
        self.positional_embedding = nn.Parameter(width ** -0.5 * torch.randn(grid_size ** 2, 1, width))
        self.latent_token_positional_embedding = nn.Parameter(width ** -0.5 * torch.randn(num_tokens, 1, width))
        self.global_proj = nn.Linear(width, width)
        self.conv_out = nn.Conv2d(width, channels, 1)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        g = self.grid_size
        _check_shape(s, (self.channels, g, g), "Encoder1D", "the grid is fixed by the positional embeddings")
        memory = self.encoder_embed(self.ln_pre(s.flatten(2).transpose(1, 2)))
        grid = memory.transpose(1, 2).reshape(len(s), self.width, g, g)
        queries = self.global_proj(pyramid_tokens(grid, self.num_tokens))
        x, _ = self.run_layers(queries, memory, _pos(self.latent_token_positional_embedding, memory),
                               _pos(self.positional_embedding, memory))
        return self.conv_out(self.to_map(x, 1, self.num_tokens)).squeeze(2)


class Decoder1D(_Transformer):
    """GigaTok `s1to2decoder`: B x C x N 1-D tokens -> (B x C x g x g features, semantic features or None).

    memory = decoder_embed(ln_pre(tokens)); the g*g queries all start as memory token 0; DETR layers with query
    positions `positional_embedding` and memory positions `latent_token_positional_embedding`; then ln_post and
    the 3x3 `conv_out` W -> C. With `semantic=True` and distill_depth set, also distill_mlp of the residual stream
    after layer distill_depth: B x g*g x distill_dim.
    """

    def __init__(self, channels: int, grid_size: int, num_tokens: int, width: int, num_layers: int, num_heads: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, distill_depth: Optional[int] = None,
                 distill_dim: int = 768, grad_checkpointing: bool = False):
        _check_pyramid(num_tokens, grid_size)
        super().__init__(DETRLayer, width, num_layers, num_heads, mlp_ratio, dropout, grad_checkpointing,
                         distill_depth, distill_dim)
        self.channels, self.grid_size, self.num_tokens = channels, grid_size, num_tokens
        self.ln_pre = nn.LayerNorm(channels)
        self.decoder_embed = nn.Linear(channels, width)
        self.positional_embedding = nn.Parameter(width ** -0.5 * torch.randn(grid_size ** 2, 1, width))
        self.latent_token_positional_embedding = nn.Parameter(width ** -0.5 * torch.randn(num_tokens, 1, width))
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, z: torch.Tensor, semantic: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        g = self.grid_size
        _check_shape(z, (self.channels, self.num_tokens), "Decoder1D",
                     "the token count is fixed by the positional embeddings")
        memory = self.decoder_embed(self.ln_pre(z.transpose(1, 2)))
        queries = memory[:, :1].expand(-1, g * g, -1)
        x, tapped = self.run_layers(queries, memory, _pos(self.positional_embedding, memory),
                                    _pos(self.latent_token_positional_embedding, memory), tap=semantic)
        return self.conv_out(self.to_map(x, g, g)), tapped


class _Transformer2D(_Transformer):
    """Base of the 2-D models: `ln_pre`, `positional_embedding` and the layer stack over the g*g grid tokens."""

    def __init__(self, channels: int, grid_size: int, width: int, num_layers: int, num_heads: int, mlp_ratio: float,
                 dropout: float, layer_type: str, grad_checkpointing: bool, distill_depth: Optional[int] = None,
                 distill_dim: int = 768):
        if layer_type not in LAYER_TYPES:
            raise ValueError(f"layer_type must be one of {LAYER_TYPES}, got {layer_type!r}")
        layer_cls = TransformerLayer if layer_type == "transformer" else DETRLayer
        super().__init__(layer_cls, width, num_layers, num_heads, mlp_ratio, dropout, grad_checkpointing,
                         distill_depth, distill_dim)
        self.channels, self.grid_size, self.layer_type = channels, grid_size, layer_type
        self.ln_pre = nn.LayerNorm(channels)
        self.positional_embedding = nn.Parameter(width ** -0.5 * torch.randn(grid_size ** 2, 1, width))

    def run_grid(self, x: torch.Tensor, tap: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """B x g*g x W embedded tokens through the layers; "transformer" adds the positions once before the first
        layer, "detr" adds them at every layer (to the queries and to the keys of the layer's own input)."""
        pos = _pos(self.positional_embedding, x)
        if self.layer_type == "transformer":
            return self.run_layers(x + pos, tap=tap)
        return self.run_layers(x, None, pos, pos, tap=tap)

    def check(self, x: torch.Tensor) -> None:
        g = self.grid_size
        _check_shape(x, (self.channels, g, g), type(self).__name__, "the grid is fixed by the positional embeddings")


class Encoder2D(_Transformer2D):
    """GigaTok `s2dencoder`: B x C x g x g CNN features -> B x C x g x g latent (1x1 `conv_out`)."""

    def __init__(self, channels: int, grid_size: int, width: int, num_layers: int, num_heads: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, layer_type: str = "transformer",
                 grad_checkpointing: bool = False):
        super().__init__(channels, grid_size, width, num_layers, num_heads, mlp_ratio, dropout, layer_type,
                         grad_checkpointing)
        self.encoder_embed = nn.Linear(channels, width)
        self.conv_out = nn.Conv2d(width, channels, 1)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        self.check(s)
        x, _ = self.run_grid(self.encoder_embed(self.ln_pre(s.flatten(2).transpose(1, 2))))
        return self.conv_out(self.to_map(x, self.grid_size, self.grid_size))


class Decoder2D(_Transformer2D):
    """GigaTok `s2ddecoder`: B x C x g x g tokens -> (B x C x g x g features (3x3 `conv_out`), semantic or None);
    semantic as in Decoder1D."""

    def __init__(self, channels: int, grid_size: int, width: int, num_layers: int, num_heads: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, layer_type: str = "transformer",
                 distill_depth: Optional[int] = None, distill_dim: int = 768, grad_checkpointing: bool = False):
        super().__init__(channels, grid_size, width, num_layers, num_heads, mlp_ratio, dropout, layer_type,
                         grad_checkpointing, distill_depth, distill_dim)
        self.decoder_embed = nn.Linear(channels, width)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, z: torch.Tensor, semantic: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        self.check(z)
        x, tapped = self.run_grid(self.decoder_embed(self.ln_pre(z.flatten(2).transpose(1, 2))), tap=semantic)
        return self.conv_out(self.to_map(x, self.grid_size, self.grid_size)), tapped


def _grid_size(image_size: int, ch_mult: Sequence[int]) -> int:
    factor = 2 ** (len(ch_mult) - 1)
    if image_size < factor or image_size % factor:
        raise ValueError(f"image_size={image_size} must be a multiple of the CNN downsampling factor {factor}")
    return image_size // factor


def _resolve_layout(layout: str, num_tokens: Optional[int], layer_type: Optional[str], grid: int) -> str:
    """Check the layout options; returns the layer type of the transformer."""
    if layout == "1d":
        if num_tokens is None:
            raise ValueError("layout '1d' needs num_tokens (a power of two, e.g. 256)")
        if layer_type not in (None, "detr"):
            raise ValueError(f"layout '1d' always uses DETR layers; leave layer_type unset (got {layer_type!r})")
        return "detr"
    if layout == "2d":
        if num_tokens not in (None, grid * grid):
            raise ValueError(f"layout '2d' has one token per grid cell ({grid * grid}); got num_tokens={num_tokens}: "
                             "leave it unset")
        return layer_type or "transformer"
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def _pointwise(conv: nn.Conv2d, z: torch.Tensor) -> torch.Tensor:
    """A 1x1 Conv2d on B x C x h x w grids or B x C x N sequences."""
    return conv(z.unsqueeze(2)).squeeze(2) if z.dim() == 3 else conv(z)


class HybridEncoder(TokenEncoder):
    """B x 3 x S x S image (S = image_size) -> latent for the quantizer (B x embed_dim x N, or x g x g for 2d).

    `cnn` (vqgan.Encoder, z_channels out) -> `transformer` (Encoder1D / Encoder2D) -> 1x1 `quant_conv`
    z_channels -> embed_dim. Transformer size: width / num_layers / num_heads, or `size` (a name of
    TRANSFORMER_SIZES, the released ones). layer_type (2d only): "transformer" (default) or "detr". `forward(x, return_features=True)`
    also returns {"cnn": CNN output B x z_channels x g x g}.
    """

    provides_features = True

    sizes = TRANSFORMER_SIZES  # `size` (default "small") sets width, num_layers, num_heads where they are None

    def __init__(self, *, layout: str = "1d", num_tokens: Optional[int] = 256, image_size: int = 256, ch: int = 128,
                 ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2, z_channels: int = 256,
                 embed_dim: int = 8, use_attn: bool = False, width: Optional[int] = None,
                 num_layers: Optional[int] = None, num_heads: Optional[int] = None, mlp_ratio: float = 4.0,
                 layer_type: Optional[str] = None, dropout: float = 0.0, grad_checkpointing: bool = False,
                 size: Optional[str] = "small"):
        super().__init__()
        grid = _grid_size(image_size, ch_mult)
        layer_type = _resolve_layout(layout, num_tokens, layer_type, grid)
        self.image_size, self.layout = image_size, layout
        size = dict(width=width, num_layers=num_layers, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout,
                    grad_checkpointing=grad_checkpointing)
        if layout == "1d":
            self.transformer = Encoder1D(z_channels, grid, num_tokens, **size)
        else:
            self.transformer = Encoder2D(z_channels, grid, layer_type=layer_type, **size)
        self.cnn = Encoder(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, z_channels=z_channels,
                           use_attn=use_attn, dropout=dropout)
        self.downsample_factor, self.in_channels = self.cnn.downsample_factor, self.cnn.in_channels
        self.token_layout = "sequence" if layout == "1d" else "grid"
        self.num_tokens = num_tokens if layout == "1d" else grid * grid
        self.grid_size, self.image_size = grid, image_size
        init_weights(self.cnn)
        init_weights(self.transformer)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)

    def token_shape(self, *size: int) -> tuple:
        """(num_tokens,) for 1-D tokens, the grid for 2-D ones: fixed by the positional embeddings (one image size)."""
        if tuple(size) != (self.image_size, self.image_size):
            raise ValueError(f"{type(self).__name__} encodes {self.image_size} x {self.image_size} images only, "
                             f"got size {size}")
        return (self.num_tokens,) if self.token_layout == "sequence" else (self.grid_size, self.grid_size)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        s = self.image_size
        if not torch.is_tensor(x) or x.dim() != 4 or tuple(x.shape[1:]) != (self.cnn.in_channels, s, s):
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"HybridEncoder takes B x {self.cnn.in_channels} x {s} x {s} images (its positional "
                             f"embeddings are built for {s} x {s}), got {got}; resize or center-crop to {s} x {s}")
        features = self.cnn(x)
        z = _pointwise(self.quant_conv, self.transformer(features))
        return (z, {"cnn": features}) if return_features else z


class HybridDecoder(TokenDecoder):
    """Quantized latent (B x embed_dim x N, or x g x g for 2d) -> B x 3 x S x S image, unclamped.

    1x1 `post_quant_conv` embed_dim -> z_channels -> `transformer` (Decoder1D / Decoder2D) -> `cnn`
    (vqgan.Decoder, adaptive GroupNorm and depth-to-space upsampling as released). distill_depth: build the
    semantic-regularisation MLP (distill_dim outputs) on the residual stream after that layer (1-based).
    `forward(quant, return_features=True)` also returns {"rec_spatial": transformer output = CNN input
    B x z_channels x g x g, "semantic": B x g*g x distill_dim (only with distill_depth)}.
    """

    provides_features = True

    sizes = TRANSFORMER_SIZES  # `size` (default "small") sets width, num_layers, num_heads where they are None

    def __init__(self, *, layout: str = "1d", num_tokens: Optional[int] = 256, image_size: int = 256, ch: int = 128,
                 ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 3, z_channels: int = 256,
                 embed_dim: int = 8, use_attn: bool = False, adaptive_gn: bool = True, d2s_up: bool = True,
                 width: Optional[int] = None, num_layers: Optional[int] = None,
                 num_heads: Optional[int] = None, mlp_ratio: float = 4.0,
                 layer_type: Optional[str] = None, distill_depth: Optional[int] = None, distill_dim: int = 768,
                 dropout: float = 0.0, grad_checkpointing: bool = False, size: Optional[str] = "small"):
        super().__init__()
        grid = _grid_size(image_size, ch_mult)
        layer_type = _resolve_layout(layout, num_tokens, layer_type, grid)
        self.layout = layout
        self.latent_tail = (embed_dim, num_tokens) if layout == "1d" else (embed_dim, grid, grid)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        size = dict(width=width, num_layers=num_layers, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout,
                    distill_depth=distill_depth, distill_dim=distill_dim, grad_checkpointing=grad_checkpointing)
        if layout == "1d":
            self.transformer = Decoder1D(z_channels, grid, num_tokens, **size)
        else:
            self.transformer = Decoder2D(z_channels, grid, layer_type=layer_type, **size)
        self.cnn = Decoder(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, z_channels=z_channels,
                           use_attn=use_attn, adaptive_gn=adaptive_gn, d2s_up=d2s_up, dropout=dropout)
        init_weights(self.transformer)
        init_weights(self.cnn)

    def last_layer(self) -> torch.Tensor:
        return self.cnn.last_layer()

    def forward(self, quant: torch.Tensor, return_features: bool = False):
        _check_shape(quant, self.latent_tail, "HybridDecoder",
                     "decode latents of the shape the matching HybridEncoder produces")
        rec_spatial, semantic = self.transformer(_pointwise(self.post_quant_conv, quant), semantic=return_features)
        image = self.cnn(rec_spatial)
        if not return_features:
            return image
        features: Dict[str, torch.Tensor] = {"rec_spatial": rec_spatial}
        if semantic is not None:
            features["semantic"] = semantic
        return image, features

    def decode_cnn_features(self, features: torch.Tensor) -> torch.Tensor:
        """GigaTok's auxiliary "direct reconstruction": the CNN encoder output B x z_channels x g x g decoded by
        `cnn` alone (no transformers, no quantizer)."""
        return self.cnn(features)
