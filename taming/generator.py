"""Class-conditional AR generators by size name (`build_generator`) and from checkpoints (`load_generator`).

Checkpoint layouts that `load_generator` reads (the layout is recognised from the keys):

1. This project's Lightning checkpoints: `hyper_parameters["generator"]` = {"class_path", "init_args"} (written
   by `component_config`), the weights as `state_dict["generator." + name]`, optional EMA shadows as
   `state_dict["model_ema." + ("generator." + name) with the dots removed]` (e.g.
   `model_ema.generatortok_embeddingsweight`). `config` must be None or a {"class_path", "init_args"} mapping.
2. Released Open-MAGVIT2 AR checkpoints: Lightning {"state_dict": {"transformer.*", "first_stage_model.*"}}
   without hyper_parameters. The `first_stage_model.*` tokenizer keys are ignored (`load_tokenizer` reads them).
   `config` (required), any of:
     - the released YAML (a path), or the same structure as a dict:
       {"model": {"class_path" or "target", "init_args" or "params": {"transformer_config": {...}, ...}}};
     - the Net2NetTransformer arguments {"transformer_config": {"target": ..., "params": {...}}, ...};
     - the transformer config {"target": ..., "params": {...}}, or its params alone, e.g.
       {"block_size": 256, "spatial_n_layer": 24, "factorized_n_layer": 2, "factorized_bits": [6, 12],
        "n_head": 16, "dim": 1024, "class_num": 1000}  (Open-MAGVIT2 GPT argument names and defaults).
3. Released LlamaGen c2i and GigaTok gpt_1d checkpoints: {"model": state_dict, ...} (DDP; "module" or
   "state_dict" are read too) or a bare state dict (FSDP-consolidated XXL / 3B). An "ema" entry holds EMA
   weights. `config` (required): a dict of LlamaGen `ModelArgs` fields, e.g.
       {"dim": 768, "n_layer": 12, "n_head": 12, "vocab_size": 16384, "block_size": 256, "num_classes": 1000}
   or a size name with the fields it does not fix: {"size": "GPT-B", "block_size": 576}. `block_size` (image
   tokens: 256 for 256 px, 576 for 384 px) is always required; vocab_size (16384), num_classes (1000) and the
   other fields default to ModelArgs'. Learned 1-D positions (GigaTok) are used when the weights hold
   `positional_embedding` (or the config has GigaTok's `rope: False`).
In 2 and 3, `size` may name a preset of `GPT_SIZES` / `FACTORIZED_SIZES` ("GPT-B", "OM2-AR-B", ...); the other
fields override it.
"""
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch

from .checkpoints import load_state_dict_strict, read_checkpoint, save_atomic, strip_prefix
from .config_files import read_yaml
from .modules.component import instantiate, resolve_class, trusted_class_paths
from .modules.ema import shadow_name
from .modules.transformer import FACTORIZED_SIZES, GPT, GPT_SIZES, ARGenerator, FactorizedGPT

PathLike = Union[str, Path]
EMA_PREFIX = "model_ema."

# Released config fields -> our constructor arguments. FIXED fields must have the given value (other values
# change the architecture in ways these classes do not implement); IGNORED fields do not affect the model.
LLAMAGEN = {
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
    "sizes": GPT_SIZES,
}
OPEN_MAGVIT2 = {
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
    "sizes": FACTORIZED_SIZES,
}
OM2_GPT_TARGET = "modules.transformer.gpt.GPT"


def build_generator(size: str, **overrides) -> ARGenerator:
    """A freshly initialised generator from a preset name, e.g. build_generator("GPT-B", vocab_size=16384,
    num_tokens=576) or build_generator("OM2-AR-B"); `overrides` are constructor arguments."""
    if size in GPT_SIZES:
        return GPT(**{**GPT_SIZES[size], **overrides})
    if size in FACTORIZED_SIZES:
        return FactorizedGPT(**{**FACTORIZED_SIZES[size], **overrides})
    raise ValueError(f"unknown generator size {size!r}; choose one of {sorted(GPT_SIZES) + sorted(FACTORIZED_SIZES)}")


def load_generator(path: PathLike, config=None, map_location="cpu", ema: Optional[bool] = None,
                   allow_unsafe_pickle: bool = False, trust_class_paths: Sequence[str] = ()) -> ARGenerator:
    """Load a generator in eval mode (strict: every weight must match); the layouts and configs are listed in
    the module docstring.

    ema: None = EMA weights when the checkpoint has them, True = require them, False = raw weights.
    trust_class_paths: class paths of your own generators that the checkpoint may name (else only this package's).
    map_location: where tensors are loaded; a device (e.g. "cuda") also receives the model.
    The result has `checkpoint_info` = {"path", "format", "ema", "global_step"}.
    """
    ckpt = read_checkpoint(path, map_location, allow_unsafe_pickle)
    if not isinstance(ckpt, Mapping):
        raise RuntimeError(f"{path} is not a checkpoint dict (got {type(ckpt).__name__})")
    state = ckpt.get("state_dict")
    state = state if isinstance(state, Mapping) else {}
    hparams = ckpt.get("hyper_parameters")
    if (isinstance(hparams, Mapping) and "generator" in hparams) or any(k.startswith("generator.") for k in state):
        with trusted_class_paths(trust_class_paths):
            fmt, model, weights, used_ema = "project", *_project(ckpt, state, config, ema, path)
    elif any(k.startswith("transformer.") for k in state):
        if ema:
            raise ValueError(f"ema=True but {path} is an Open-MAGVIT2 AR checkpoint, which has no EMA weights")
        fmt, used_ema = "open-magvit2", False
        model = FactorizedGPT(**_init_args(_om2_params(_need_config(config, path, fmt)), OPEN_MAGVIT2))
        weights = strip_prefix(state, "transformer.")
    else:
        fmt = "llamagen"
        weights, used_ema = _llamagen_weights(ckpt, ema, path)
        fields = _need_config(config, path, fmt)
        if not isinstance(fields, Mapping):
            raise TypeError(f"config for a LlamaGen / GigaTok checkpoint must be a dict of ModelArgs fields, got "
                            f"{type(fields).__name__}; e.g. {{'size': 'GPT-B', 'block_size': 256}}")
        model = GPT(**_llamagen_args(fields, weights))
    load_state_dict_strict(model, weights, f"{fmt} checkpoint {path}{' (EMA weights)' if used_ema else ''}",
                           hint="Check the config (sizes, vocab_size / factorized_bits, num_classes, block_size) "
                                "against the checkpoint.")
    model.checkpoint_info = {"path": str(path), "format": fmt, "ema": used_ema, "global_step": ckpt.get("global_step")}
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()


# ------------------------------------------------------------------------------------------ this project


def _project(ckpt: Mapping, state: Mapping, config, ema: Optional[bool], path):
    """(model, weights, used_ema) for this project's Lightning checkpoints."""
    if config is None:
        spec = (ckpt.get("hyper_parameters") or {}).get("generator")
        if spec is None:
            raise ValueError(f"{path} holds generator.* weights but no hyper_parameters['generator']; pass config= "
                             "the generator's {'class_path': ..., 'init_args': {...}}")
        source = f"hyper_parameters['generator'] of {path}"
    elif isinstance(config, Mapping) and "class_path" in config:
        spec, source = config, None
    else:
        raise TypeError("this project's checkpoints carry their architecture: pass config=None, or a "
                        "{'class_path': ..., 'init_args': {...}} mapping to override it")
    if not isinstance(spec, Mapping) or "class_path" not in spec:
        raise ValueError(f"the generator config of {path} is not a {{'class_path', 'init_args'}} mapping: {spec!r}")
    cls = resolve_class(spec["class_path"], source)
    if not issubclass(cls, ARGenerator):
        raise ValueError(f"{spec['class_path']} is not a generator class (a subclass of ARGenerator)")
    model = instantiate(spec, source)
    has_ema = any(k.startswith(EMA_PREFIX + "generator") for k in state)
    if ema and not has_ema:
        raise ValueError(f"ema=True but {path} has no {EMA_PREFIX}generator* shadows; load the raw weights with "
                         "ema=False")
    use_ema = has_ema if ema is None else bool(ema)
    if not use_ema:
        return model, strip_prefix(state, "generator."), False
    shadows = {EMA_PREFIX + shadow_name("generator." + name): name for name in model.state_dict()}
    return model, {name: state[key] for key, name in shadows.items() if key in state}, True


# ------------------------------------------------------------------------------------------ released configs


def _need_config(config, path, fmt: str):
    if config is None:
        example = ("the released YAML (e.g. configs/Open-MAGVIT2/gpu/imagenet_conditional_llama_B.yaml) or its "
                   "transformer_config params" if fmt == "open-magvit2" else
                   "LlamaGen ModelArgs fields, e.g. {'size': 'GPT-B', 'block_size': 256, 'vocab_size': 16384}")
        family = {"open-magvit2": "Open-MAGVIT2 AR", "llamagen": "LlamaGen / GigaTok"}[fmt]
        raise ValueError(f"{path} is a released {family} checkpoint, which stores no architecture; pass config= "
                         f"{example}")
    return config


def _om2_params(config) -> Mapping:
    """The Open-MAGVIT2 GPT params from a YAML path or any of the dict forms in the module docstring."""
    if isinstance(config, (str, Path)):
        config = read_yaml(config)
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a YAML path or a dict, got {type(config).__name__}")
    if "model" in config:
        model = config["model"] or {}
        config = model.get("init_args") or model.get("params") or {}
    if "transformer_config" in config:
        config = config["transformer_config"] or {}
    if "target" in config or "class_path" in config:
        target = config.get("target") or config.get("class_path")
        if not str(target).endswith(OM2_GPT_TARGET):
            raise ValueError(f"transformer target {target!r} is not the Open-MAGVIT2 GPT (*.{OM2_GPT_TARGET}); "
                             "other AR models (e.g. IBQ's) are not supported")
        config = config.get("params") or config.get("init_args") or {}
    return config


def _init_args(fields: Mapping, family: dict) -> dict:
    """Constructor arguments from released config fields (translated names, checked values, family defaults)."""
    if not isinstance(fields, Mapping):
        raise TypeError(f"expected a dict of config fields, got {type(fields).__name__}")
    fields = dict(fields)
    known = set(family["names"]) | set(family["fixed"]) | set(family["ignored"]) | {"size", "n_kv_head",
                                                                                    "ffn_dim_multiplier"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; accepted: {sorted(known)}")
    missing = [k for k in family["required"] if k not in fields]
    if missing:
        raise ValueError(f"config is missing {missing} (the number of image tokens, e.g. 256 for a 16 x 16 grid)")
    for key, value in family["fixed"].items():
        if key in fields and fields[key] != value:
            raise ValueError(f"config {key}={fields[key]!r} is not supported (only {value!r})")
    args = dict(family["defaults"])
    size = fields.get("size")
    if size is not None:
        if size not in family["sizes"]:
            raise ValueError(f"unknown size {size!r} for this checkpoint; choose one of {sorted(family['sizes'])}")
        args.update(family["sizes"][size])
    args.update({family["names"][k]: v for k, v in fields.items() if k in family["names"]})
    n_kv_head = fields.get("n_kv_head")
    if n_kv_head is not None and n_kv_head != args.get("n_head"):
        raise ValueError(f"grouped-query attention (n_kv_head={n_kv_head} != n_head) is not supported")
    if fields.get("ffn_dim_multiplier") is not None:  # the references' rule: multiplier * int(8/3 dim), rounded up
        hidden = int(fields["ffn_dim_multiplier"] * int(2 * (4 * args["dim"]) / 3))
        multiple_of = args.get("multiple_of", 256)
        args["ffn_hidden"] = -(-hidden // multiple_of) * multiple_of
    return args


def _llamagen_args(fields: Mapping, weights: Mapping) -> dict:
    if "size" not in fields:
        missing = [k for k in ("dim", "n_layer", "n_head") if k not in fields]
        if missing:
            raise ValueError(f"config is missing {missing}; give them or a size name, e.g. {{'size': 'GPT-B', ...}}")
    args = _init_args(fields, LLAMAGEN)
    if args.get("class_dropout_prob", 0.1) <= 0:
        raise ValueError("class_dropout_prob <= 0: LlamaGen then builds no null-class row, while this implementation "
                         "always has one (guidance needs it); such checkpoints are not supported")
    args["positions"] = "learned" if "rope" in fields or "positional_embedding" in weights else "rope2d"
    return args


def _llamagen_weights(ckpt: Mapping, ema: Optional[bool], path):
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


# ------------------------------------------------------------------------------------------ weights-only copies

WEIGHTS = ("ema", "raw", "both")


def weights_only(checkpoint: Mapping, weights: str = "ema") -> dict:
    """A training checkpoint without optimizer / loop state: the generator's weights (`weights`: "ema" = the
    `model_ema.generator*` shadows, when there are any, else the raw weights; "raw" = `generator.*`; "both"), its
    hyper-parameters, global_step and epoch. `load_generator` reads it as it reads the full checkpoint."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    state = checkpoint["state_dict"]
    has_ema = any(k.startswith("model_ema.generator") for k in state)
    keep = ("generator.",) if weights == "raw" or not has_ema else \
        ("model_ema.generator",) if weights == "ema" else ("generator.", "model_ema.generator")
    hparams = checkpoint.get("hyper_parameters") or {}
    if "generator" not in hparams:
        raise ValueError("not a ClassConditionalAR checkpoint: hyper_parameters has no 'generator' entry")
    return {"state_dict": {k: v for k, v in state.items() if k.startswith(keep)}, "hyper_parameters": dict(hparams),
            "global_step": checkpoint.get("global_step"), "epoch": checkpoint.get("epoch")}


def export_weights(src, dst, weights: str = "ema") -> Path:
    """Write a weights-only copy of training checkpoint `src` to `dst` (see `weights_only`), e.g.
    python -c "from taming.generator import export_weights; export_weights('models/ar/last.ckpt', 'gpt_B.ckpt')"."""
    return save_atomic(weights_only(read_checkpoint(src), weights), dst)
