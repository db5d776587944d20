"""The inference-side tokenizer: encoder + quantizer + decoder components, and `load_tokenizer` for checkpoints.

Accepted checkpoints: this project's (architecture stored in their hyper-parameters), released Open-MAGVIT2 v1/v2
tokenizers and AR models (architecture from a YAML or a `ddconfig` dict), LlamaGen VQ-16 / VQ-8 (a dict of its
`ModelArgs` fields) and GigaTok 1D / 2D tokenizers (a released YAML or the same structure as a dict).
"""
from pathlib import Path
from typing import Dict, Mapping, NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from .checkpoints import load_state_dict_strict, read_checkpoint, strip_prefix
from .config_files import read_yaml
from .modules.codec import check_components
from .modules.component import component_config, instantiate, reading, trusted_class_paths
from .modules.ema import shadow_key, with_shadows
from .modules.quantizers import QuantizerOutput
from .released import COMPONENTS, open_magvit2, tokenizer_families

MODULE_NAMES = {"encoder": "encoder", "quantizer": "quantize", "decoder": "decoder"}  # attribute (= state-dict prefix)


class TokenizerOutput(NamedTuple):
    reconstruction: torch.Tensor  # B x 3 x H x W, unclamped
    quantizer: QuantizerOutput  # quantized latent, indices, auxiliary loss and its logged terms
    features: Dict[str, torch.Tensor]  # intermediate features of components that provide them (GigaTok), else {}


def _run(component: nn.Module, x: torch.Tensor, features: Optional[dict]) -> torch.Tensor:
    """component(x); with `features` a dict, also collect the component's intermediate features into it."""
    if features is not None and component.provides_features:
        out, found = component(x, return_features=True)
        features.update(found)
        return out
    return component(x)


class TokenizerMixin:
    """encode/decode shared by `Tokenizer` and the training LightningModules (needs `encoder`, `quantize`, `decoder`,
    implementing `taming.modules.codec.TokenEncoder`, `Quantizer` and `TokenDecoder`).

    Token layouts (the encoder's `token_layout`): a 2-D grid (indices B x h x w), a 1-D sequence (B x N), or a 3-D
    volume for video (B x t x h x w).
    """

    @property
    def downsample_factor(self) -> int:
        return self.encoder.downsample_factor

    @property
    def token_layout(self) -> str:
        return self.encoder.token_layout

    def token_shape(self, *size: int) -> tuple:
        """Shape of one input's indices at this size ((H, W) for images): (h, w) for grids, (N,) for sequences."""
        return self.encoder.token_shape(*size)

    def check_input(self, x: torch.Tensor) -> None:
        self.encoder.check_input(x)

    def encode(self, x: torch.Tensor):
        """x: B x 3 x H x W in [-1, 1] -> (quantized latent B x d x *tokens, indices B x *tokens int64)."""
        self.check_input(x)
        out = self.quantize(self.encoder(x))
        return out.quantized, out.indices

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """Quantized latent -> B x 3 x H x W image, unclamped (nominally [-1, 1])."""
        return self.decoder(quant)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B x h x w, or B x N) -> B x 3 x H x W image, unclamped."""
        codes = self.quantize.indices_to_codes(indices)
        return self.decode(codes.to(next(self.decoder.parameters()).dtype))

    def autoencode(self, x: torch.Tensor, return_features: bool = False) -> TokenizerOutput:
        """One pass encoder -> quantizer -> decoder, keeping the quantizer's losses (training, validation)."""
        self.check_input(x)
        features = {} if return_features else None
        quant = self.quantize(_run(self.encoder, x, features))
        reconstruction = _run(self.decoder, quant.quantized, features)
        return TokenizerOutput(reconstruction, quant, features or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[0])


class Tokenizer(TokenizerMixin, nn.Module):
    """Encoder + quantizer + decoder; each a module or a {"class_path", "init_args"} mapping.

    State-dict keys: `encoder.*`, `quantize.*`, `decoder.*` (the Open-MAGVIT2 / LlamaGen names).
    """

    def __init__(self, encoder, quantizer, decoder):
        super().__init__()
        self.encoder = instantiate(encoder)
        self.quantize = instantiate(quantizer)
        self.decoder = instantiate(decoder)
        check_components(self.encoder, self.quantize, self.decoder)

    @property
    def config(self) -> dict:
        """{"encoder", "quantizer", "decoder"}: component configs that rebuild this tokenizer."""
        return {name: component_config(getattr(self, MODULE_NAMES[name])) for name in COMPONENTS}


def build_tokenizer(ddconfig: Mapping, embed_dim: Optional[int] = None, bit_order: str = "msb") -> Tokenizer:
    """An Open-MAGVIT2 (MAGVIT-2 CNN + LFQ) tokenizer from its `ddconfig`."""
    return Tokenizer(**open_magvit2.components(ddconfig, embed_dim, bit_order))


# --------------------------------------------------------------------------------------------- loading


class _Resolved(NamedTuple):
    tokenizer: Tokenizer
    state_dict: Mapping  # in our names
    prefix: str = ""
    notes: str = ""
    optional: tuple = ()


def _config_source(config, ckpt: dict):
    if config is None:
        if isinstance(ckpt.get("tokenizer"), Mapping):  # this project's training checkpoints
            return ckpt["tokenizer"]
        hparams = ckpt.get("hyper_parameters") or {}
        if not (set(COMPONENTS) <= set(hparams) or "ddconfig" in hparams):
            raise ValueError("this checkpoint stores no architecture (no hyper_parameters, as in released checkpoints); "
                             "pass config= a YAML (e.g. configs/imagenet_lfqgan_256_B.yaml or the release's own), "
                             "a ddconfig dict (Open-MAGVIT2), a dict of LlamaGen ModelArgs fields or a preset name "
                             "(\"VQ-16\"), or a GigaTok YAML / dict")
        return hparams
    if isinstance(config, str) and not Path(config).is_file():
        from .released import llamagen

        if config in llamagen.PRESETS:
            return config
    if isinstance(config, (str, Path)):
        return read_yaml(config)
    if isinstance(config, Mapping):
        return config
    raise TypeError(f"config must be a YAML path, a dict, a LlamaGen preset name or None, got {type(config).__name__}")


def _resolve(config, ckpt: dict, bit_order: Optional[str]) -> _Resolved:
    """Build the tokenizer the config describes and find its weights in the checkpoint: the first family of
    `taming.released.tokenizer_families()` that recognises the description reads it."""
    source = _config_source(config, ckpt)
    for family in tokenizer_families():
        if family.recognises(source, ckpt):
            parts = family.read(source, ckpt, bit_order)
            return _Resolved(Tokenizer(**parts.components), parts.state_dict, parts.prefix, parts.notes, parts.optional)
    keys = sorted(source) if isinstance(source, Mapping) else source
    raise ValueError(f"cannot tell the tokenizer architecture from config keys {keys}; expected this project's YAML, "
                     f"or one of the families {[f.name for f in tokenizer_families()]}: an Open-MAGVIT2 YAML or "
                     "ddconfig, LlamaGen ModelArgs fields or a GigaTok YAML")


def _weights(model: nn.Module, state_dict: Mapping, prefix: str, use_ema: bool) -> dict:
    """model's state dict from `state_dict`: keys under `prefix`, parameters from their `model_ema.*` shadows when
    `use_ema` (see `taming.modules.ema.with_shadows`)."""
    own = {k: v for k, v in strip_prefix(state_dict, prefix).items() if k.split(".", 1)[0] in MODULE_NAMES.values()}
    return with_shadows(model, own, state_dict, prefix) if use_ema else own


def load_tokenizer(ckpt_path: Union[str, Path], config=None, ema: Optional[bool] = None, map_location="cpu",
                   bit_order: Optional[str] = None, allow_unsafe_pickle: bool = False,
                   trust_class_paths: Sequence[str] = ()) -> Tokenizer:
    """Load a tokenizer in eval mode.

    config: None (this project's checkpoints: the architecture is stored), a YAML path (this project's, a released
        Open-MAGVIT2 tokenizer or AR YAML, or a GigaTok YAML), a dict (a `ddconfig`; LlamaGen `ModelArgs` fields
        plus `ch`; a GigaTok config `{"model": {"model_cls", "init_args"}}`; or {"encoder", "quantizer", "decoder"}),
        or a LlamaGen preset name ("VQ-16", "VQ-8").
    ema: for Lightning checkpoints with `model_ema.*` weight-EMA shadows: None = use them when present, True = require
        them, False = raw weights. GigaTok checkpoints choose `ema` over `model` themselves.
    map_location: where the checkpoint's tensors are loaded; a device (e.g. "cuda") also receives the tokenizer.
    bit_order: "msb"/"lsb" override for LFQ tokenizers; default from the checkpoint, else the family (v2 adaptive-GN
        models "lsb", v1 models "msb").
    trust_class_paths: class paths of your own components that the checkpoint or config may name; anything else
        they name must be a component of this package (a file never chooses code to run).
    """
    ckpt = read_checkpoint(ckpt_path, map_location, allow_unsafe_pickle)
    if not isinstance(ckpt, dict):
        raise RuntimeError(f"{ckpt_path} is not a checkpoint dict (got {type(ckpt).__name__})")
    source = f"checkpoint {ckpt_path}" if config is None else \
        f"config {config}" if isinstance(config, (str, Path)) else f"the config given for checkpoint {ckpt_path}"
    with trusted_class_paths(trust_class_paths), reading(source):
        tokenizer, state_dict, prefix, notes, optional = _resolve(config, ckpt, bit_order)
    has_ema = any(k.startswith(shadow_key(prefix + "encoder")) for k in state_dict)
    if ema and not has_ema:
        raise ValueError(f"ema=True but {ckpt_path} has no model_ema.* shadows; load the raw weights with ema=False")
    use_ema = has_ema if ema is None else bool(ema)
    load_state_dict_strict(tokenizer, _weights(tokenizer, state_dict, prefix, use_ema),
                           f"checkpoint {ckpt_path} ({'EMA' if use_ema else 'raw'} weights)",
                           hint="Check the config against the checkpoint (widths, multipliers, blocks, latent channels).",
                           optional_prefixes=optional)
    tokenizer.checkpoint_info = {"path": str(ckpt_path), "ema": use_ema, "global_step": ckpt.get("global_step"),
                                 "notes": notes}
    if isinstance(map_location, (str, torch.device)):
        tokenizer.to(map_location)
    return tokenizer.eval().requires_grad_(False)
