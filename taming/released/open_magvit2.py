"""Open-MAGVIT2 (v1 / v2) tokenizers: the `ddconfig` architecture description, released YAMLs and checkpoints.

Released checkpoints are Lightning dicts whose `state_dict` holds `encoder.*` / `decoder.*` (names identical to
ours), the discriminator, LPIPS and `model_ema.*` weight-EMA shadows; no hyper-parameters. The Open-MAGVIT2 AR
checkpoints hold the same tokenizer under `first_stage_model.`. The architecture comes from a YAML (ours, a
released tokenizer YAML, or a released AR YAML via its `first_stage_config`) or a `ddconfig` dict. The AR
generators (`transformer.*`, a FactorizedGPT) take their architecture from the released AR YAML (`GPT_FIELDS`).
"""
from typing import List, Mapping, Optional, TypedDict

from ..modules.autoencoder import Decoder, Encoder
from ..modules.quantizers import LFQ
from ..checkpoints import strip_prefix
from ..modules.transformer import FactorizedGPT
from . import GeneratorFamily, TokenizerFamily, TokenizerParts, init_args, need_config, transformer_params


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
AR_TOKENIZER_PREFIX = "first_stage_model."


def normalize_ddconfig(ddconfig: Mapping) -> dict:
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


def components(ddconfig: Mapping, embed_dim: Optional[int] = None, bit_order: str = "msb", **lfq_args) -> dict:
    """(encoder, quantizer, decoder) modules for a ddconfig; `embed_dim` must equal z_channels (LFQ bits)."""
    ddconfig = normalize_ddconfig(ddconfig)
    embed_dim = ddconfig["z_channels"] if embed_dim is None else embed_dim
    if embed_dim != ddconfig["z_channels"]:
        raise ValueError(f"LFQ dimension embed_dim={embed_dim} must equal z_channels={ddconfig['z_channels']}")
    arch = {k: ddconfig[k] for k in ("ch", "ch_mult", "num_res_blocks", "z_channels")}
    return {"encoder": Encoder(**arch, in_channels=ddconfig["in_channels"]),
            "quantizer": LFQ(dim=embed_dim, bit_order=bit_order, **lfq_args),
            "decoder": Decoder(**arch, out_ch=ddconfig["out_ch"], adaptive_gn=ddconfig["adaptive_gn"])}


def family_bit_order(ddconfig: Mapping) -> str:
    """v2 models (adaptive GN decoder, the *_L releases and the AR tokenizer) number bits LSB-first, v1 MSB-first."""
    return "lsb" if ddconfig.get("adaptive_gn") else "msb"


def architecture_from_config(source: Mapping, state_dict: Mapping) -> Optional[dict]:
    """{"ddconfig", "embed_dim", "bit_order", "prefix"} from an Open-MAGVIT2-style mapping, else None.

    Accepted: a full training YAML (`model.init_args` LightningCLI or `model.params` taming style) of a tokenizer
    or of the v2 AR model (`first_stage_config`, whose tokenizer lives under `first_stage_model.`), the model's
    init_args themselves, or a bare ddconfig.
    """
    prefix = ""
    if "model" in source and isinstance(source["model"], Mapping):
        model = source["model"]
        source = model.get("init_args") or model.get("params") or {}
    if "first_stage_config" in source:
        stage = source["first_stage_config"]
        source = stage.get("params") or stage.get("init_args") or {}
        prefix = AR_TOKENIZER_PREFIX
    if "ddconfig" in source:
        ddconfig, embed_dim, bit_order = dict(source["ddconfig"]), source.get("embed_dim"), source.get("bit_order")
    elif {"ch", "ch_mult", "z_channels"} <= set(source):
        ddconfig, embed_dim, bit_order = dict(source), None, None
    else:
        return None
    if "adaptive_gn" not in ddconfig:  # released YAMLs do not say; v2 checkpoints carry decoder.adaptive.*
        ddconfig["adaptive_gn"] = any(k.startswith((prefix + "decoder.adaptive.", "model_ema.decoderadaptive"))
                                      for k in state_dict)
    return {"ddconfig": ddconfig, "embed_dim": embed_dim, "bit_order": bit_order, "prefix": prefix}


def _recognises(source, checkpoint: Mapping) -> bool:
    return isinstance(source, Mapping) and architecture_from_config(source, checkpoint.get("state_dict", checkpoint)) \
        is not None


def _read(source: Mapping, checkpoint: Mapping, bit_order: Optional[str]) -> TokenizerParts:
    state_dict = checkpoint.get("state_dict", checkpoint)
    arch = architecture_from_config(source, state_dict)
    order = bit_order or arch["bit_order"] or family_bit_order(arch["ddconfig"])
    return TokenizerParts(components(arch["ddconfig"], arch["embed_dim"], order), state_dict, arch["prefix"])


TOKENIZER = TokenizerFamily("Open-MAGVIT2", _recognises, _read)


# ------------------------------------------------------------------------------------------ AR generators
# Released config fields -> our constructor arguments. FIXED fields must have the given value (other values
# change the architecture in ways these classes do not implement); IGNORED fields do not affect the model.
GPT_FIELDS = {
    "names": {"block_size": "num_tokens", "dim": "dim", "spatial_n_layer": "n_layer",
              "factorized_n_layer": "n_intra_layer", "n_head": "n_head", "factorized_bits": "factorized_bits",
              "class_num": "num_classes", "token_drop": "token_dropout_p", "attn_dropout_p": "attn_dropout_p",
              "resid_dropout_p": "resid_dropout_p", "ffn_dropout_p": "ffn_dropout_p", "rope_base": "rope_base",
              "norm_eps": "norm_eps", "multiple_of": "multiple_of", "initalizer_range": "initializer_range"},
    "fixed": {"token_factorization": True, "factorized_k": 2, "cls_token_num": 1, "drop_path_rate": 0.0},
    "ignored": ("vocab_size", "cond_dim", "embd_pdrop", "n_unmasked", "max_batch_size", "max_seq_len"),
    "required": ("block_size",),
    # the Open-MAGVIT2 GPT constructor's defaults (the YAMLs set the sizes and token_drop / resid_dropout_p)
    "defaults": {"dim": 256, "n_layer": 12, "n_intra_layer": 2, "n_head": 8, "factorized_bits": [9, 9],
                 "num_classes": 1000, "token_dropout_p": 0.1, "attn_dropout_p": 0.0, "resid_dropout_p": 0.0,
                 "ffn_dropout_p": 0.1},
    "sizes": FactorizedGPT.sizes,
}
OM2_GPT_TARGET = "modules.transformer.gpt.GPT"


def _recognises_generator(ckpt: Mapping, state: Mapping) -> bool:
    return any(k.startswith("transformer.") for k in state)


def _read_generator(ckpt: Mapping, state: Mapping, config, ema: Optional[bool], path) -> tuple:
    """Lightning {"state_dict": {"transformer.*", "first_stage_model.*"}} without hyper_parameters; the tokenizer's
    keys are left to load_tokenizer."""
    if ema:
        raise ValueError(f"ema=True but {path} is an Open-MAGVIT2 AR checkpoint, which has no EMA weights")
    config = need_config(config, path, "Open-MAGVIT2 AR", "the released YAML (e.g. configs/Open-MAGVIT2/gpu/"
                         "imagenet_conditional_llama_B.yaml) or its transformer_config params")
    model = FactorizedGPT(**init_args(transformer_params(config, OM2_GPT_TARGET, "Open-MAGVIT2"), GPT_FIELDS))
    return model, strip_prefix(state, "transformer."), False


GENERATOR = GeneratorFamily("open-magvit2", _recognises_generator, _read_generator, tokenizer="inside")
