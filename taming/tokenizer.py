"""The inference-side tokenizer: encoder + LFQ + decoder, and `load_tokenizer` for checkpoints.

Accepted checkpoints: this project's Lightning checkpoints (architecture read from their hyper-parameters)
and the released Open-MAGVIT2 v1/v2 checkpoints (architecture from a YAML or dict `config`).
"""
import pickle
import zipfile
from pathlib import Path
from typing import List, Optional, TypedDict, Union

import torch
from torch import nn

from .modules.autoencoder import Decoder, Encoder
from .modules.quantizers import LFQ

class DDConfig(TypedDict, total=False):
    """Encoder/decoder architecture (`model.init_args.ddconfig` in the YAMLs; typed so the CLI checks overrides)."""

    ch: int  # base width
    ch_mult: List[int]  # width multipliers per level; len - 1 downsamplings
    num_res_blocks: int  # ResBlocks per level (and in the middle)
    z_channels: int  # latent channels = LFQ bits per token
    in_channels: int
    out_ch: int
    adaptive_gn: bool  # v2 adaptive group norm in the decoder (the released *_L models)


DDCONFIG_KEYS = tuple(DDConfig.__annotations__)
IGNORED_DDCONFIG_KEYS = ("double_z", "resolution")  # stored by Open-MAGVIT2, never used by its modules
EMA_PREFIX = "model_ema."
GENERATOR_PREFIXES = ("encoder.", "decoder.", "quantize.")


def check_image_batch(x: torch.Tensor, channels: int, factor: int) -> None:
    """Raise a clear error unless x is a float B x channels x H x W batch with H, W divisible by `factor`."""
    if not torch.is_tensor(x) or x.dim() != 4:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"expected an image batch B x {channels} x H x W, got {shape}; add a batch dimension with x[None]")
    if x.shape[1] != channels:
        raise ValueError(f"expected {channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)}); "
                         "images must be RGB in channel-first layout")
    if not x.is_floating_point():
        raise ValueError(f"expected a float image batch in [-1, 1], got {x.dtype}; convert with x.float() / 127.5 - 1")
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} is not divisible by the downsampling factor {factor}; "
                         f"resize or crop to a multiple of {factor} (e.g. {h // factor * factor or factor}x{w // factor * factor or factor})")


class TokenizerMixin:
    """encode/decode shared by `Tokenizer` and the training LightningModule (needs `encoder`, `quantize`, `decoder`)."""

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.encoder.down) - 1)

    def encode(self, x: torch.Tensor):
        """x: B x 3 x H x W in [-1, 1] -> (quant B x d x H/f x W/f of +-1, indices B x H/f x W/f int64)."""
        check_image_batch(x, self.encoder.in_channels, self.downsample_factor)
        quant, _, indices = self.quantize(self.encoder(x))
        return quant, indices

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """B x d x h x w codes -> B x 3 x H x W image, unclamped (nominally [-1, 1])."""
        return self.decoder(quant)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """B x h x w indices (in this tokenizer's bit order) -> B x 3 x H x W image, unclamped."""
        codes = self.quantize.indices_to_codes(indices.to(self.quantize.bit_shifts.device))
        return self.decode(codes.to(self.decoder.conv_in.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[0])


class Tokenizer(TokenizerMixin, nn.Module):
    """Encoder + LFQ + decoder with Open-MAGVIT2 parameter names (`encoder.*`, `decoder.*`)."""

    def __init__(self, ddconfig: dict, embed_dim: Optional[int] = None, bit_order: str = "msb"):
        super().__init__()
        ddconfig = normalize_ddconfig(ddconfig)
        embed_dim = ddconfig["z_channels"] if embed_dim is None else embed_dim
        if embed_dim != ddconfig["z_channels"]:
            raise ValueError(f"LFQ dimension embed_dim={embed_dim} must equal z_channels={ddconfig['z_channels']}")
        self.config = {"ddconfig": ddconfig, "embed_dim": embed_dim, "bit_order": bit_order}
        arch = {k: ddconfig[k] for k in ("ch", "ch_mult", "num_res_blocks", "z_channels")}
        self.encoder = Encoder(**arch, in_channels=ddconfig["in_channels"])
        self.quantize = LFQ(dim=embed_dim, bit_order=bit_order)
        self.decoder = Decoder(**arch, out_ch=ddconfig["out_ch"], adaptive_gn=ddconfig["adaptive_gn"])


def normalize_ddconfig(ddconfig: dict) -> dict:
    """Validate a `ddconfig` dict and fill defaults; released-YAML keys `double_z`/`resolution` are dropped."""
    unknown = set(ddconfig) - set(DDCONFIG_KEYS) - set(IGNORED_DDCONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown ddconfig keys {sorted(unknown)}; expected a subset of {list(DDCONFIG_KEYS)}")
    missing = [k for k in ("ch", "ch_mult", "num_res_blocks", "z_channels") if k not in ddconfig]
    if missing:
        raise ValueError(f"ddconfig is missing {missing}")
    if ddconfig.get("double_z"):
        raise ValueError("double_z: True is not supported by LFQ models (the encoder outputs z_channels directly)")
    out = {"in_channels": 3, "out_ch": 3, "adaptive_gn": False}
    out.update({k: v for k, v in ddconfig.items() if k in DDCONFIG_KEYS})
    try:
        for key in ("ch", "num_res_blocks", "z_channels", "in_channels", "out_ch"):
            out[key] = int(out[key])
        out["ch_mult"] = [int(m) for m in out["ch_mult"]]
    except (TypeError, ValueError) as err:
        raise ValueError(f"ddconfig values must be integers (ch_mult a list of integers): {err}") from None
    if not isinstance(out["adaptive_gn"], bool):
        raise ValueError(f"ddconfig.adaptive_gn must be true or false, got {out['adaptive_gn']!r}")
    return out


def build_tokenizer(ddconfig: dict, embed_dim: Optional[int] = None, bit_order: str = "msb") -> Tokenizer:
    return Tokenizer(ddconfig, embed_dim=embed_dim, bit_order=bit_order)


# --------------------------------------------------------------------------------------------- loading


def read_checkpoint(ckpt_path: Union[str, Path], map_location="cpu", allow_unsafe_pickle: bool = False) -> dict:
    """torch.load with weights_only=True; a refused file fails with an explanation of the opt-in."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}. Put the .ckpt file there or pass the right --ckpt_path "
                                "(released Open-MAGVIT2 weights go under models/ by default)")
    if not zipfile.is_zipfile(path):
        raise RuntimeError(f"could not read checkpoint {path}: not a PyTorch zip archive (truncated or corrupt download, "
                           "or a pre-1.6 legacy file: re-save it with torch.save)")
    try:
        return torch.load(path, map_location=map_location, weights_only=not allow_unsafe_pickle)
    except pickle.UnpicklingError as err:
        if allow_unsafe_pickle:
            raise
        raise RuntimeError(
            f"{path} holds Python objects that the safe loader (torch.load(weights_only=True)) refuses: {err}\n"
            "Checkpoints are untrusted input: a full unpickle can run arbitrary code. If you trust this file, pass "
            "allow_unsafe_pickle=True (command line: --allow_unsafe_pickle)."
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise RuntimeError(f"could not read checkpoint {path}: {err}. Is it a complete PyTorch/Lightning .ckpt file?") from None


def _config_from_yaml(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        try:
            return yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ValueError(f"config file {path} is not valid YAML: {err}") from None


def _architecture(config, ckpt: dict, state_dict: dict) -> dict:
    """-> {"ddconfig", "embed_dim", "bit_order" (or None)} from `config` or the checkpoint's hyper-parameters."""
    if config is None:
        hparams = ckpt.get("hyper_parameters") or {}
        if "ddconfig" not in hparams:
            raise ValueError("this checkpoint stores no architecture (no hyper_parameters.ddconfig, as in the released "
                             "Open-MAGVIT2 checkpoints); pass config= a training YAML (e.g. configs/imagenet_lfqgan_256_B.yaml) "
                             "or a ddconfig dict")
        source = hparams
    elif isinstance(config, (str, Path)):
        source = _config_from_yaml(Path(config))
    elif isinstance(config, dict):
        source = config
    else:
        raise TypeError(f"config must be a YAML path, a dict or None, got {type(config).__name__}")
    if "model" in source:  # a full training YAML: model.init_args (LightningCLI) or model.params (taming style)
        model = source["model"]
        source = model.get("init_args") or model.get("params") or {}
    if "ddconfig" in source:
        ddconfig, embed_dim, bit_order = dict(source["ddconfig"]), source.get("embed_dim"), source.get("bit_order")
    else:
        ddconfig, embed_dim, bit_order = dict(source), None, None
    if "adaptive_gn" not in ddconfig:  # released YAMLs do not say; v2 checkpoints carry decoder.adaptive.*
        ddconfig["adaptive_gn"] = any(k.startswith(("decoder.adaptive.", EMA_PREFIX + "decoderadaptive")) for k in state_dict)
    return {"ddconfig": ddconfig, "embed_dim": embed_dim, "bit_order": bit_order}


def _mismatch_report(missing, unexpected, mis_shaped) -> str:
    lines = []
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)):
        if keys:
            shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
            lines.append(f"  {title}: {shown}")
    return "\n".join(lines)


def generator_state_dict(state_dict: dict, model: nn.Module, use_ema: bool) -> dict:
    """Pick the encoder/decoder weights (raw, or the de-dotted `model_ema.*` shadows) for `model`, strictly."""
    expected = model.state_dict()
    if use_ema:
        source = {EMA_PREFIX + name.replace(".", ""): name for name in expected}
        present = [k for k in state_dict if k.startswith(EMA_PREFIX) and k[len(EMA_PREFIX):].startswith(("encoder", "decoder"))]
    else:
        source = {name: name for name in expected}
        present = [k for k in state_dict if k.startswith(GENERATOR_PREFIXES)]
    missing = [k for k in source if k not in state_dict]
    unexpected = [k for k in present if k not in source]
    mis_shaped = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[name].shape)}" for k, name in source.items()
                  if k in state_dict and state_dict[k].shape != expected[name].shape]
    if missing or unexpected or mis_shaped:
        raise RuntimeError(
            f"checkpoint does not match the tokenizer architecture ({'EMA' if use_ema else 'raw'} weights):\n"
            + _mismatch_report(missing, unexpected, mis_shaped)
            + "\nCheck the config (ch, ch_mult, num_res_blocks, z_channels, adaptive_gn) against the checkpoint."
        )
    return {name: state_dict[k] for k, name in source.items()}


def load_tokenizer(ckpt_path: Union[str, Path], config=None, ema: Optional[bool] = None, map_location="cpu",
                   bit_order: Optional[str] = None, allow_unsafe_pickle: bool = False) -> Tokenizer:
    """Load a tokenizer in eval mode from a Lightning checkpoint.

    config: None (read the architecture from the checkpoint's hyper-parameters), a training YAML path (this
        project's or a released Open-MAGVIT2 v1/v2 one), or a dict (`ddconfig` keys, or a dict with `ddconfig`).
    ema: None = the `model_ema.*` shadows when present, True = require them, False = raw weights.
    map_location: where the checkpoint's tensors are loaded; a device (e.g. "cuda") also receives the tokenizer.
    bit_order: "msb"/"lsb" override; default from the checkpoint, else the family (v2 adaptive-GN models "lsb",
        v1 models "msb").
    """
    ckpt = read_checkpoint(ckpt_path, map_location, allow_unsafe_pickle)
    if not isinstance(ckpt, dict):
        raise RuntimeError(f"{ckpt_path} is not a checkpoint dict (got {type(ckpt).__name__})")
    state_dict = ckpt.get("state_dict", ckpt)
    arch = _architecture(config, ckpt, state_dict)
    family_order = "lsb" if arch["ddconfig"]["adaptive_gn"] else "msb"
    tokenizer = Tokenizer(arch["ddconfig"], arch["embed_dim"], bit_order or arch["bit_order"] or family_order)
    has_ema = any(k.startswith(EMA_PREFIX + "encoder") for k in state_dict)
    if ema and not has_ema:
        raise ValueError(f"ema=True but {ckpt_path} has no model_ema.* shadows; load the raw weights with ema=False")
    use_ema = has_ema if ema is None else bool(ema)
    tokenizer.load_state_dict(generator_state_dict(state_dict, tokenizer, use_ema))
    tokenizer.checkpoint_info = {"path": str(ckpt_path), "ema": use_ema, "global_step": ckpt.get("global_step")}
    if isinstance(map_location, (str, torch.device)):
        tokenizer.to(map_location)
    return tokenizer.eval().requires_grad_(False)
