"""GigaTok hybrid tokenizers (SilentView/GigaTok @ 182920c): released YAML configs and checkpoints.

A released YAML has `model: {model_cls: VQVitModelPlus (1-D tokens) | VQVitModel2DPlus (2-D), init_args: {...}}`.
`encoder_size` / `decoder_size` (or `model_size` for both) name a transformer size (TRANSFORMER_SIZES) or give
`{width, num_layers, num_heads}`; `init_args.ch` sets the CNN width, which the released code fixes at 128.
Options that no released model uses (LFQ, stochastic / SimVQ quantizers, causal or variable-length tokens,
RoPE, other query initialisations or up/down-samplers, the AR prior) are rejected unless at their off value.

Checkpoint keys -> ours (1-D; the 2-D model's `s2dencoder.` / `s2ddecoder.` map the same way):
    encoder.                      -> encoder.cnn.
    s2to1encoder.transformer.     -> encoder.transformer.layers.
    s2to1encoder.                 -> encoder.transformer.
    quant_conv.                   -> encoder.quant_conv.
    quantize.                     -> quantize.
    post_quant_conv.              -> decoder.post_quant_conv.
    s1to2decoder.transformer.     -> decoder.transformer.layers.
    s1to2decoder.                 -> decoder.transformer.
    decoder.                      -> decoder.cnn.
"""
from pathlib import Path
from typing import Dict, Mapping, Tuple, Union

import torch

from ..config_files import read_yaml
from ..modules.hybrid import TRANSFORMER_SIZES
from . import TokenizerFamily, TokenizerParts, no_bit_order
from .llamagen import invert, quantizer_config, select_weights, translate

LAYOUTS = {"VQVitModelPlus": "1d", "VQVitModel2DPlus": "2d"}
TRANSFORMER_PREFIXES = {"1d": ("s2to1encoder.", "s1to2decoder."), "2d": ("s2dencoder.", "s2ddecoder.")}
LAYER_TYPES = {"TransformerLayer": "transformer", "TransformerDecoderLayer": "detr"}
TEACHER_DIMS = {"dinov2-vit-s": 384, "dinov2-vit-b": 768, "dinov2-vit-l": 1024, "siglip-sovit-400m": 1152,
                "clip_dfn-vit-l/14": 1024}  # semantic-regularisation teacher -> distill_mlp output width
# Ours: the distillation MLP is optional when loading (inference checkpoints may drop it).
OPTIONAL_PREFIXES = ("decoder.transformer.distill_mlp.",)

# init_args the modules use, with the reference dataclass defaults (+ ch, ours).
DEFAULTS = dict(codebook_size=16384, codebook_embed_dim=8, codebook_l2_norm=True, codebook_show_usage=True,
                commit_loss_beta=0.25, entropy_loss_ratio=0.0, encoder_ch_mult=[1, 1, 2, 2, 4],
                decoder_ch_mult=[1, 1, 2, 2, 4], encoder_size=None, decoder_size=None, num_latent_tokens=256,
                z_channels=256, dropout_p=0.0, adaptive_gn=False, d2s_up=False, rot=False, use_attn=True,
                distill_depth=None, out_inner_dim=None, ch=128)
MODEL_DEFAULTS = {"1d": dict(multi_level_query_init=False),
                  "2d": dict(transformer_layer_type="TransformerDecoderLayer")}
LOSS_OPTIONS = ("fea_rec_loss_type", "fea_rec_loss_weight")  # training-loss settings stored with the model's args
# Deprecated options: accepted only at the value given here (their off value).
DEPRECATED = {
    "1d": dict(use_lfq=False, bernoulli_sample=False, eval_deterministic=False, simvq=False, codebook_transform=None,
               freeze_codebook=False, use_rope=False, use_qk_norm=False, use_flash_attn=False,
               learnable_1d_query_init=False, rope_1d=False, last_level_2d_query_init=False,
               multi_level_2d_query_init=False, learnable_2d_query_init=False, res_up_down_sample=False,
               downsample_match_channel=False, upsample_match_channel=False, res_codebook_updown_sample=False,
               downsample_improve=False, rope_2d=False, stochastic=False, encoder_2d_distill=False,
               with_prior_model=False, prior_model_config=None),
    "2d": dict(encoder_2d_distill=False),
}
UNUSED_WHEN_OFF = {"1d": ("stochastic_temperature",), "2d": ()}  # parameters of a rejected option
CAUSAL_OFF = dict(causal_type=None, dynamic_length_train=False, dynamic_level_range=None)  # min_level: any


def read_config(config: Union[str, Path, Mapping]) -> Mapping:
    """A released YAML file (path) or its already-parsed dict."""
    if isinstance(config, (str, Path)):
        config = read_yaml(config)
    if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
        raise ValueError("a GigaTok config needs a `model:` section with `model_cls` and `init_args`")
    return config


def transformer_size(value, what: str) -> dict:
    """A size name or {width, num_layers, num_heads} -> that dict."""
    if isinstance(value, str) and value in TRANSFORMER_SIZES:
        return dict(TRANSFORMER_SIZES[value])
    if isinstance(value, Mapping) and set(value) == {"width", "num_layers", "num_heads"}:
        return {k: int(value[k]) for k in ("width", "num_layers", "num_heads")}
    raise ValueError(f"{what}={value!r}: use one of {list(TRANSFORMER_SIZES)} or a dict with width, num_layers "
                     "and num_heads")


def _check_options(args: Mapping, layout: str, model_cls: str) -> None:
    known = set(DEFAULTS) | set(MODEL_DEFAULTS[layout]) | set(DEPRECATED[layout]) | set(LOSS_OPTIONS) | \
        set(UNUSED_WHEN_OFF[layout]) | {"model_size"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown {model_cls} options {unknown}")
    for key, off in DEPRECATED[layout].items():
        if key in args and args[key] != off:
            raise ValueError(f"{key}={args[key]!r} is a deprecated GigaTok option that no released model uses; "
                             f"only {off!r} is supported")


def _sizes(args: Mapping) -> Tuple[dict, dict]:
    """Encoder and decoder transformer sizes: encoder_size / decoder_size, else model_size (default "small")."""
    given = {part: args.get(f"{part}_size") for part in ("encoder", "decoder")}
    model_size = args.get("model_size", "small" if given == {"encoder": None, "decoder": None} else None)
    if model_size is not None and given != {"encoder": None, "decoder": None}:
        raise ValueError("give either model_size or encoder_size/decoder_size (set model_size: null), not both")
    return tuple(transformer_size(given[part] or model_size, f"{part}_size") for part in ("encoder", "decoder"))


def _distill_dim(args: Mapping, trainer: Mapping) -> int:
    """out_inner_dim, else the width of the teacher named by trainer.distill_model (DINOv2-B, 768, by default)."""
    if args.get("out_inner_dim") is not None:
        return int(args["out_inner_dim"])
    teacher = trainer.get("distill_model", "dinov2-vit-b") if trainer.get("distill_loss") else "dinov2-vit-b"
    if teacher not in TEACHER_DIMS:
        raise ValueError(f"unknown distill_model {teacher!r}; known: {sorted(TEACHER_DIMS)} (or set out_inner_dim)")
    return TEACHER_DIMS[teacher]


def gigatok_config(config: Union[str, Path, Mapping]) -> dict:
    """A released GigaTok YAML (path or dict) -> {"encoder", "quantizer", "decoder"} component configs
    (`taming.modules.hybrid.HybridEncoder` / `HybridDecoder`, `taming.modules.quantizers.VectorQuantizer`)."""
    config = read_config(config)
    model_cls = config["model"].get("model_cls")
    if model_cls not in LAYOUTS:
        raise ValueError(f"model_cls {model_cls!r} is not a released GigaTok VQ tokenizer; expected one of "
                         f"{list(LAYOUTS)}")
    layout = LAYOUTS[model_cls]
    args = dict(config["model"].get("init_args") or {})
    _check_options(args, layout, model_cls)
    for key, value in (config["model"].get("causal_settings") or {}).items():
        if key not in (*CAUSAL_OFF, "min_level"):
            raise ValueError(f"unknown causal_settings option {key!r}; known: {[*CAUSAL_OFF, 'min_level']}")
        if key in CAUSAL_OFF and value != CAUSAL_OFF[key]:
            raise ValueError(f"causal_settings.{key}={value!r} is not supported: released models use causal_type null "
                             "and a fixed token count")
    a = {**DEFAULTS, **MODEL_DEFAULTS[layout], **args}
    if layout == "1d" and not a["multi_level_query_init"]:
        raise ValueError("multi_level_query_init: False (queries = the repeated global mean) is not supported; "
                         "every released 1-D model uses True")
    if layout == "2d" and a["transformer_layer_type"] not in LAYER_TYPES:
        raise ValueError(f"transformer_layer_type {a['transformer_layer_type']!r} is not supported; use one of "
                         f"{list(LAYER_TYPES)}")
    encoder_size, decoder_size = _sizes(args)
    shared = dict(layout=layout, image_size=256, ch=a["ch"], z_channels=a["z_channels"],
                  embed_dim=a["codebook_embed_dim"], use_attn=a["use_attn"], mlp_ratio=4.0, dropout=a["dropout_p"])
    if layout == "1d":
        shared.update(num_tokens=a["num_latent_tokens"], layer_type=None)
    else:
        shared.update(num_tokens=None, layer_type=LAYER_TYPES[a["transformer_layer_type"]])
    return {
        "encoder": {"class_path": "taming.modules.hybrid.HybridEncoder",
                    "init_args": dict(shared, ch_mult=list(a["encoder_ch_mult"]), num_res_blocks=2, **encoder_size)},
        "quantizer": quantizer_config(a["codebook_size"], a["codebook_embed_dim"], a["commit_loss_beta"],
                                      a["entropy_loss_ratio"], a["codebook_l2_norm"], a["codebook_show_usage"],
                                      rotation_trick=a["rot"]),
        "decoder": {"class_path": "taming.modules.hybrid.HybridDecoder",
                    "init_args": dict(shared, ch_mult=list(a["decoder_ch_mult"]), num_res_blocks=3,
                                      adaptive_gn=a["adaptive_gn"], d2s_up=a["d2s_up"], **decoder_size,
                                      distill_depth=a["distill_depth"],
                                      distill_dim=_distill_dim(args, config.get("trainer") or {}))},
    }


def key_map(layout: str) -> Dict[str, str]:
    """Released key prefix -> ours, for layout "1d" or "2d" (longest prefix wins)."""
    if layout not in TRANSFORMER_PREFIXES:
        raise ValueError(f"layout must be '1d' or '2d', got {layout!r}")
    enc, dec = TRANSFORMER_PREFIXES[layout]
    return {"encoder.": "encoder.cnn.", enc + "transformer.": "encoder.transformer.layers.",
            enc: "encoder.transformer.", "quant_conv.": "encoder.quant_conv.", "quantize.": "quantize.",
            "post_quant_conv.": "decoder.post_quant_conv.", dec + "transformer.": "decoder.transformer.layers.",
            dec: "decoder.transformer.", "decoder.": "decoder.cnn."}


def gigatok_to_ours(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Released GigaTok state dict -> our key names (the layout is read from the transformer prefixes)."""
    layouts = [lay for lay, (enc, _) in TRANSFORMER_PREFIXES.items() if any(k.startswith(enc) for k in state_dict)]
    if len(layouts) != 1:
        raise ValueError("not a GigaTok VQ state dict: expected keys under exactly one of 's2to1encoder.' (1-D) and "
                         "'s2dencoder.' (2-D)")
    return translate(state_dict, key_map(layouts[0]), f"GigaTok {layouts[0].upper()} tokenizer")


def ours_to_gigatok(state_dict: Mapping[str, torch.Tensor], layout: str) -> Dict[str, torch.Tensor]:
    """Inverse of `gigatok_to_ours` (for exporting); layout "1d" or "2d"."""
    return translate(state_dict, invert(key_map(layout)), f"{layout.upper()} hybrid tokenizer of this project")


def gigatok_weights(checkpoint: Mapping) -> Tuple[Dict[str, torch.Tensor], str]:
    """The released-layout state dict and a note, chosen as GigaTok's evaluation does: `ema` if present, else
    `model`, else `state_dict` (or a bare state dict); the note names what was skipped and says when the
    optional distillation MLP is absent (an inference checkpoint: load with OPTIONAL_PREFIXES)."""
    weights, note = select_weights(checkpoint, ("ema", "model", "state_dict"))
    if not any(".distill_mlp." in k for k in weights):
        note += ("; no distill_mlp weights (inference checkpoint): the semantic-regularisation MLP is optional, "
                 "load with `decoder.transformer.distill_mlp.` optional or build the decoder with distill_depth=None")
    return weights, note


def _recognises(source, checkpoint: Mapping) -> bool:
    return isinstance(source, Mapping) and isinstance(source.get("model"), Mapping) and "model_cls" in source["model"]


def _read(source: Mapping, checkpoint: Mapping, bit_order) -> TokenizerParts:
    no_bit_order(bit_order, "GigaTok")
    weights, notes = gigatok_weights(checkpoint)
    return TokenizerParts(gigatok_config(source), gigatok_to_ours(weights), notes=notes, optional=OPTIONAL_PREFIXES)


TOKENIZER = TokenizerFamily("GigaTok", _recognises, _read)
