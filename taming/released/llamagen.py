"""LlamaGen VQ tokenizers (FoundationVision/LlamaGen `VQ-16` / `VQ-8`): released configs and checkpoints.

A released config is LlamaGen's `ModelArgs` (field names below) plus `ch`, which `ModelArgs` lacks (LlamaGen
always builds width 128). Checkpoints `{"model": state_dict, ...}` hold `encoder.*`, `decoder.*` (our names),
`quantize.*` and the top-level 1x1 convs `quant_conv.*` / `post_quant_conv.*`, which belong to our encoder /
decoder components. The shared helpers here (`quantizer_config`, `translate`, `select_weights`) also serve
`taming.released.gigatok`, whose tokenizers descend from LlamaGen's. The c2i GPTs (also GigaTok's gpt_1d) take
`ModelArgs` fields or a size name (`GPT_FIELDS`).
"""
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..checkpoints import rename_prefixes
from ..modules.transformer import GPT
from . import GeneratorFamily, TokenizerFamily, TokenizerParts, init_args, need_config, no_bit_order

# LlamaGen `ModelArgs` defaults (= VQ-16), plus ch.
MODEL_ARGS = dict(codebook_size=16384, codebook_embed_dim=8, codebook_l2_norm=True, codebook_show_usage=True,
                  commit_loss_beta=0.25, entropy_loss_ratio=0.0, encoder_ch_mult=[1, 1, 2, 2, 4],
                  decoder_ch_mult=[1, 1, 2, 2, 4], z_channels=256, dropout_p=0.0, ch=128)
PRESETS = {
    "VQ-16": dict(encoder_ch_mult=[1, 1, 2, 2, 4], decoder_ch_mult=[1, 1, 2, 2, 4]),
    "VQ-8": dict(encoder_ch_mult=[1, 2, 2, 4], decoder_ch_mult=[1, 2, 2, 4]),
}
# released prefix -> ours
KEY_MAP = {"encoder.": "encoder.", "quant_conv.": "encoder.quant_conv.", "quantize.": "quantize.",
           "post_quant_conv.": "decoder.post_quant_conv.", "decoder.": "decoder."}
USAGE_WINDOW = 65536  # LlamaGen's and GigaTok's `codebook_used` buffer length


def quantizer_config(codebook_size: int, dim: int, beta: float, entropy_loss_weight: float, l2_norm: bool,
                     show_usage: bool, rotation_trick: bool = False) -> dict:
    """The `taming.modules.quantizers.VectorQuantizer` config of a LlamaGen-family quantizer (entropy temperature
    0.01 as both references; `show_usage` False drops the usage buffer)."""
    return {"class_path": "taming.modules.quantizers.VectorQuantizer",
            "init_args": dict(codebook_size=codebook_size, dim=dim, beta=beta, entropy_loss_weight=entropy_loss_weight,
                              entropy_temperature=0.01, l2_norm=l2_norm, rotation_trick=rotation_trick,
                              usage_window=USAGE_WINDOW if show_usage else 0)}


def llamagen_config(config: Union[str, Mapping]) -> dict:
    """A preset name ("VQ-16", "VQ-8") or a `ModelArgs`-style dict (+ `ch`) -> {"encoder", "quantizer", "decoder"}
    component configs (`taming.modules.vqgan.Encoder` / `Decoder` with attention, 2 / 3 ResBlocks per level)."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown LlamaGen tokenizer {config!r}; choose one of {sorted(PRESETS)} or pass a dict "
                             "of ModelArgs fields")
        config = PRESETS[config]
    if not isinstance(config, Mapping):
        raise TypeError(f"expected a preset name or a dict of LlamaGen ModelArgs fields, got {type(config).__name__}")
    unknown = sorted(set(config) - set(MODEL_ARGS))
    if unknown:
        raise ValueError(f"unknown LlamaGen VQ options {unknown}; ModelArgs fields (+ ch) are {sorted(MODEL_ARGS)}")
    a = {**MODEL_ARGS, **config}
    cnn = dict(ch=a["ch"], z_channels=a["z_channels"], use_attn=True, dropout=a["dropout_p"],
               embed_dim=a["codebook_embed_dim"])
    return {
        "encoder": {"class_path": "taming.modules.vqgan.Encoder",
                    "init_args": dict(cnn, ch_mult=list(a["encoder_ch_mult"]), num_res_blocks=2)},
        "quantizer": quantizer_config(a["codebook_size"], a["codebook_embed_dim"], a["commit_loss_beta"],
                                      a["entropy_loss_ratio"], a["codebook_l2_norm"], a["codebook_show_usage"]),
        "decoder": {"class_path": "taming.modules.vqgan.Decoder",
                    "init_args": dict(cnn, ch_mult=list(a["decoder_ch_mult"]), num_res_blocks=3)},
    }


def translate(state_dict: Mapping[str, torch.Tensor], key_map: Mapping[str, str], what: str) -> Dict[str, torch.Tensor]:
    """Rename keys by their longest matching prefix in key_map; a key under none of them is an error."""
    stray = [k for k in state_dict if not k.startswith(tuple(key_map))]
    if stray:
        raise ValueError(f"{len(stray)} keys are not part of a {what} (e.g. {stray[:4]}); expected prefixes "
                         f"{sorted(key_map)}")
    return rename_prefixes(state_dict, key_map)


def invert(key_map: Mapping[str, str]) -> Dict[str, str]:
    return {new: old for old, new in key_map.items()}


def llamagen_to_ours(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Released LlamaGen VQ state dict -> ours (`quant_conv.` -> `encoder.quant_conv.`, `post_quant_conv.` ->
    `decoder.post_quant_conv.`, the rest unchanged)."""
    return translate(state_dict, KEY_MAP, "LlamaGen VQ model")


def ours_to_llamagen(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Inverse of `llamagen_to_ours` (for exporting)."""
    return translate(state_dict, invert(KEY_MAP), "LlamaGen-layout tokenizer of this project")


def select_weights(checkpoint: Mapping, order: Sequence[str]) -> Tuple[Dict[str, torch.Tensor], str]:
    """(state dict, note) from a training checkpoint: the first of `order` present, else the checkpoint itself when
    it is a bare state dict. The note says which entry was used and what was skipped."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"expected a checkpoint dict, got {type(checkpoint).__name__}")
    for key in order:
        if key in checkpoint:
            skipped = ", ".join(sorted(str(k) for k in checkpoint if k != key))
            return dict(checkpoint[key]), f"weights from {key!r}" + (f"; skipped {skipped}" if skipped else "")
    if checkpoint and all(torch.is_tensor(v) for v in checkpoint.values()):
        return dict(checkpoint), "bare state dict"
    raise ValueError(f"no weights in the checkpoint: expected one of {list(order)} or a bare state dict, "
                     f"found keys {sorted(map(str, checkpoint))[:8]}")


def llamagen_weights(checkpoint: Mapping) -> Tuple[Dict[str, torch.Tensor], str]:
    """The released-layout state dict and a note: `model` (what LlamaGen's code extraction and sampling load), or a
    bare state dict; `ema`, optimizer and discriminator entries are skipped."""
    return select_weights(checkpoint, ("model",))


def _recognises(source, checkpoint: Mapping) -> bool:
    return isinstance(source, str) or (isinstance(source, Mapping) and bool({"codebook_embed_dim", "encoder_ch_mult"}
                                                                           & set(source)))


def _read(source, checkpoint: Mapping, bit_order) -> TokenizerParts:
    no_bit_order(bit_order, "LlamaGen")
    weights, notes = llamagen_weights(checkpoint)
    return TokenizerParts(llamagen_config(source), llamagen_to_ours(weights), notes=notes)


TOKENIZER = TokenizerFamily("LlamaGen", _recognises, _read)


# ------------------------------------------------------------------------------------------ c2i GPTs (and GigaTok's)
# Released config fields -> our constructor arguments (see taming.released.init_args).
GPT_FIELDS = {
    "names": {"dim": "dim", "n_layer": "n_layer", "n_head": "n_head", "vocab_size": "vocab_size",
              "block_size": "num_tokens", "num_classes": "num_classes", "class_dropout_prob": "class_dropout_prob",
              "token_dropout_p": "token_dropout_p", "attn_dropout_p": "attn_dropout_p",
              "resid_dropout_p": "resid_dropout_p", "ffn_dropout_p": "ffn_dropout_p", "multiple_of": "multiple_of",
              "rope_base": "rope_base", "norm_eps": "norm_eps", "initializer_range": "initializer_range"},
    "fixed": {"model_type": "c2i", "cls_token_num": 1, "drop_path_rate": 0.0, "rope": False, "use_qk_norm": False,
              "use_adaLN": False, "use_simple_adaLN": False},
    "ignored": ("caption_dim", "max_batch_size", "max_seq_len", "use_flash_attn", "no_adaLN_before"),
    "required": ("block_size",),
    "defaults": {},  # GPT's defaults are ModelArgs'
    "sizes": GPT.sizes,
}


def gpt_args(fields: Mapping, weights: Mapping) -> dict:
    if "size" not in fields:
        missing = [k for k in ("dim", "n_layer", "n_head") if k not in fields]
        if missing:
            raise ValueError(f"config is missing {missing}; give them or a size name, e.g. {{'size': 'GPT-B', ...}}")
    args = init_args(fields, GPT_FIELDS)
    if args.get("class_dropout_prob", 0.1) <= 0:
        raise ValueError("class_dropout_prob <= 0: LlamaGen then builds no null-class row, while this implementation "
                         "always has one (guidance needs it); such checkpoints are not supported")
    args["positions"] = "learned" if "rope" in fields or "positional_embedding" in weights else "rope2d"
    return args


def gpt_weights(ckpt: Mapping, ema: Optional[bool], path):
    """(state dict, used_ema) of a LlamaGen / GigaTok checkpoint."""
    has_ema = isinstance(ckpt.get("ema"), Mapping)
    if ema and not has_ema:
        raise ValueError(f"ema=True but {path} has no 'ema' weights; load the raw weights with ema=False")
    if has_ema and ema is not False:
        return ckpt["ema"], True
    for key in ("model", "module", "state_dict"):
        if isinstance(ckpt.get(key), Mapping):
            return ckpt[key], False
    if "tok_embeddings.weight" in ckpt:
        return ckpt, False
    raise ValueError(f"unrecognised checkpoint layout in {path}: top-level keys {sorted(ckpt)[:12]}; expected this "
                     "project's Lightning checkpoint, an Open-MAGVIT2 AR checkpoint (state_dict with transformer.*), "
                     "or a LlamaGen / GigaTok one ({'model': ...} or a bare state dict with tok_embeddings.weight)")


def _read_generator(ckpt: Mapping, state: Mapping, config, ema: Optional[bool], path) -> tuple:
    """{"model": state_dict, ...} (DDP; "module" or "state_dict" too) or a bare state dict; "ema" holds EMA weights."""
    weights, used_ema = gpt_weights(ckpt, ema, path)
    fields = need_config(config, path, "LlamaGen / GigaTok", "LlamaGen ModelArgs fields, e.g. {'size': 'GPT-B', "
                         "'block_size': 256, 'vocab_size': 16384}")
    if not isinstance(fields, Mapping):
        raise TypeError(f"config for a LlamaGen / GigaTok checkpoint must be a dict of ModelArgs fields, got "
                        f"{type(fields).__name__}; e.g. {{'size': 'GPT-B', 'block_size': 256}}")
    return GPT(**gpt_args(fields, weights)), weights, used_ema


GENERATOR = GeneratorFamily("llamagen", lambda ckpt, state: True, _read_generator)
