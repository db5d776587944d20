"""IBQ tokenizers and IBQ AR generators (TencentARC/SEED-Voken `src/IBQ`): released YAMLs and checkpoints.

Tokenizers (`ibqgan.IBQ`, `ibqgan_pretrain.IBQ`): the classic taming-VQGAN encoder/decoder (our
`taming.modules.vqgan` networks with attention at the lowest resolution) around `taming.modules.quantizers.IBQ`.
Checkpoints are Lightning dicts whose `state_dict` holds taming-layout names (`down.{i}.block.{j}`,
`mid.block_1`, `up.{i}` = level i, top-level `quant_conv` / `post_quant_conv`), `loss.*` and the weight-EMA shadows
`model_ema.<name without dots>` (discriminator included); no hyper-parameters. The architecture comes from the
released YAML (tokenizer or AR: its `first_stage_config`, whose tokenizer lives under `first_stage_model.`) or the
model's `init_args` dict. AR checkpoints (`transformer.*`, `llama.GPT`) take theirs from the AR YAML (`GPT_FIELDS`).
"""
import re
from typing import Dict, Mapping, Optional

import torch

from ..checkpoints import strip_prefix
from ..modules.ema import EMA_PREFIX, shadow_key
from ..modules.transformer import AdaLNGPT
from . import GeneratorFamily, TokenizerFamily, TokenizerParts, init_args, need_config, no_bit_order, transformer_params

AR_TOKENIZER_PREFIX = "first_stage_model."
DDCONFIG_KEYS = ("ch", "ch_mult", "num_res_blocks", "z_channels", "resolution", "attn_resolutions", "in_channels",
                 "out_ch", "dropout", "double_z")
# IBQ init_args that do not change the network (training settings; `l2_normalize`, `remap`, `sane_index_shape`
# and `cosine_similarity` are inert for IBQ in the release)
IGNORED_ARGS = ("lossconfig", "learning_rate", "use_ema", "resume_lr", "lr_drop_epoch", "lr_drop_rate", "lr_drop_iter",
                "stage", "ckpt_path", "ignore_keys", "image_key", "colorize_nlabels", "monitor", "remap",
                "sane_index_shape", "l2_normalize", "cosine_similarity", "use_entropy_loss", "warmup_epochs",
                "scheduler_type", "min_learning_rate", "gradient_clip_val", "use_shared_epoch", "sche_type", "wpe",
                "wp", "wp0", "max_iter", "wp_iter")
QUANTIZER_ARGS = ("beta", "entropy_temperature", "sample_minimization_weight", "batch_maximization_weight")


def _is_ibq_target(target) -> bool:
    return isinstance(target, str) and target.rsplit(".", 1)[-1] == "IBQ"


def ibq_args(source: Mapping):
    """(the IBQ model's init_args, key prefix) from a released tokenizer or AR YAML (LightningCLI or taming style),
    the init_args themselves, or None when `source` is not an IBQ description."""
    if not isinstance(source, Mapping):
        return None
    prefix, target = "", None
    model = source.get("model")
    if isinstance(model, Mapping):
        target = model.get("class_path") or model.get("target")
        source = model.get("init_args") or model.get("params") or {}
    stage = source.get("first_stage_config")
    if isinstance(stage, Mapping):
        target = stage.get("target") or stage.get("class_path")
        source, prefix = stage.get("params") or stage.get("init_args") or {}, AR_TOKENIZER_PREFIX
    ddconfig = source.get("ddconfig")
    if _is_ibq_target(target) or (isinstance(ddconfig, Mapping) and "attn_resolutions" in ddconfig
                                  and "n_embed" in source):
        return source, prefix
    return None


def _attention_level(ddconfig: Mapping) -> None:
    """Our networks put attention at the lowest resolution (and in `mid`): refuse other placements."""
    levels = len(ddconfig["ch_mult"])
    resolutions = [ddconfig["resolution"] // 2 ** i for i in range(levels)]
    wanted = sorted(set(ddconfig.get("attn_resolutions") or []) & set(resolutions))
    if wanted != [resolutions[-1]]:
        raise ValueError(f"attn_resolutions {ddconfig.get('attn_resolutions')} at resolution {ddconfig['resolution']} "
                         f"puts attention at levels of resolution {wanted}; only the lowest one ({resolutions[-1]}) "
                         "is supported (every released IBQ model)")


def components(args: Mapping, quant_loss_weight: float = 1.0, entropy_loss_weight: float = 0.05) -> dict:
    """{"encoder", "quantizer", "decoder"} component configs for IBQ init_args (ddconfig, n_embed, embed_dim, ...)."""
    unknown = sorted(set(args) - {"ddconfig", "n_embed", "embed_dim", *QUANTIZER_ARGS, *IGNORED_ARGS})
    if unknown:
        raise ValueError(f"unknown IBQ config keys {unknown}")
    missing = [k for k in ("ddconfig", "n_embed", "embed_dim") if k not in args]
    if missing:
        raise ValueError(f"IBQ config is missing {missing}")
    dd = dict(args["ddconfig"])
    bad = sorted(set(dd) - set(DDCONFIG_KEYS))
    if bad:
        raise ValueError(f"unknown ddconfig keys {bad}; expected a subset of {list(DDCONFIG_KEYS)}")
    if dd.get("double_z"):
        raise ValueError("double_z: True is not supported by IBQ models")
    _attention_level(dd)
    cnn = dict(ch=int(dd["ch"]), ch_mult=[int(m) for m in dd["ch_mult"]], z_channels=int(dd["z_channels"]),
               use_attn=True, dropout=float(dd.get("dropout", 0.0)), embed_dim=int(args["embed_dim"]))
    blocks = int(dd["num_res_blocks"])
    quantizer = {k: args[k] for k in QUANTIZER_ARGS if k in args}
    return {
        "encoder": {"class_path": "taming.modules.vqgan.Encoder",
                    "init_args": dict(cnn, num_res_blocks=blocks, in_channels=int(dd.get("in_channels", 3)))},
        "quantizer": {"class_path": "taming.modules.quantizers.IBQ",
                      "init_args": dict(codebook_size=int(args["n_embed"]), dim=int(args["embed_dim"]), **quantizer,
                                        quant_loss_weight=quant_loss_weight, entropy_loss_weight=entropy_loss_weight)},
        "decoder": {"class_path": "taming.modules.vqgan.Decoder",
                    "init_args": dict(cnn, num_res_blocks=blocks + 1, out_channels=int(dd.get("out_ch", 3)))},
    }


_RENAMES = [  # taming layout -> ours; {L} is replaced by the level count for the decoder's reversed levels
    (r"^encoder\.down\.(\d+)\.block\.", lambda m, n: f"encoder.conv_blocks.{m[1]}.res."),
    (r"^encoder\.down\.(\d+)\.(attn|downsample)\.", lambda m, n: f"encoder.conv_blocks.{m[1]}.{m[2]}."),
    (r"^decoder\.up\.(\d+)\.block\.", lambda m, n: f"decoder.conv_blocks.{n - 1 - int(m[1])}.res."),
    (r"^decoder\.up\.(\d+)\.(attn|upsample)\.", lambda m, n: f"decoder.conv_blocks.{n - 1 - int(m[1])}.{m[2]}."),
    (r"^(encoder|decoder)\.mid\.block_1\.", lambda m, n: f"{m[1]}.mid.0."),
    (r"^(encoder|decoder)\.mid\.attn_1\.", lambda m, n: f"{m[1]}.mid.1."),
    (r"^(encoder|decoder)\.mid\.block_2\.", lambda m, n: f"{m[1]}.mid.2."),
    (r"^quant_conv\.", lambda m, n: "encoder.quant_conv."),
    (r"^post_quant_conv\.", lambda m, n: "decoder.post_quant_conv."),
]
_RENAMES = [(re.compile(pattern), rename) for pattern, rename in _RENAMES]


def our_name(key: str, levels: int) -> str:
    """A released tokenizer key (taming layout, no prefix) in our names; other keys are returned unchanged."""
    for pattern, rename in _RENAMES:
        match = pattern.match(key)
        if match:
            return rename(match, levels) + key[match.end():]
    return key


def ibq_to_ours(state_dict: Mapping[str, torch.Tensor], levels: int, prefix: str = "") -> Dict[str, torch.Tensor]:
    """Rename the tokenizer keys under `prefix` and their `model_ema.` shadows (named by the parameter name without
    dots) to ours; `loss.*`, the discriminator's shadows and other entries are left as they are (unused)."""
    out, shadows = {}, {}
    for key, value in state_dict.items():
        if key.startswith(prefix) and not key.startswith(EMA_PREFIX):
            new = prefix + our_name(key[len(prefix):], levels)
            shadows[shadow_key(key)] = shadow_key(new)
            out[new] = value
    for key, value in state_dict.items():
        if key.startswith(EMA_PREFIX):
            out[shadows.get(key, key)] = value
    return out


def _recognises(source, checkpoint: Mapping) -> bool:
    return ibq_args(source) is not None


def _read(source, checkpoint: Mapping, bit_order) -> TokenizerParts:
    no_bit_order(bit_order, "IBQ")
    args, prefix = ibq_args(source)
    loss = (args.get("lossconfig") or {}).get("params") or {}
    parts = components(args, loss.get("quant_loss_weight", 1.0), loss.get("entropy_loss_weight", 0.05))
    state_dict = checkpoint.get("state_dict", checkpoint)
    levels = len(args["ddconfig"]["ch_mult"])
    return TokenizerParts(parts, ibq_to_ours(state_dict, levels, prefix), prefix,
                          "IBQ checkpoint (taming layout renamed; loss.* and discriminator shadows skipped)")


TOKENIZER = TokenizerFamily("IBQ", _recognises, _read)


# ------------------------------------------------------------------------------------------ AR generators
GPT_FIELDS = {
    "names": {"vocab_size": "vocab_size", "block_size": "num_tokens", "n_layer": "n_layer", "n_head": "n_head",
              "n_embd": "dim", "class_num": "num_classes", "token_drop": "token_dropout_p",
              "resid_dropout_p": "resid_dropout_p", "ffn_dropout_p": "ffn_dropout_p", "alng": "gamma_init"},
    "fixed": {"drop_path_rate": 0.0, "cls_token_num": 1, "shared_aln": False, "use_pretrained_codebook": False},
    "ignored": ("cond_dim", "attn_dropout_p", "n_kv_head"),
    "required": ("block_size",),
    "defaults": {"vocab_size": 16384, "dim": 1024, "n_layer": 16, "n_head": 16, "num_classes": 1000},
    "sizes": AdaLNGPT.sizes,
}
IBQ_GPT_TARGET = "IBQ.modules.transformer.llama.GPT"


def _recognises_generator(ckpt: Mapping, state: Mapping) -> bool:
    return any(k.startswith("transformer.") and ".ada_lin." in k for k in state)


def _read_generator(ckpt: Mapping, state: Mapping, config, ema: Optional[bool], path) -> tuple:
    if ema:
        raise ValueError(f"ema=True but {path} is an IBQ AR checkpoint, which has no EMA weights")
    config = need_config(config, path, "IBQ AR", "the released YAML (e.g. configs/IBQ/gpu/"
                         "imagenet_conditional_llama_B.yaml) or its transformer_config params")
    model = AdaLNGPT(**init_args(transformer_params(config, IBQ_GPT_TARGET, "IBQ"), GPT_FIELDS))
    return model, strip_prefix(state, "transformer."), False


GENERATOR = GeneratorFamily("ibq", _recognises_generator, _read_generator, tokenizer="inside")
