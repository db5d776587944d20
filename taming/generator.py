"""Class-conditional AR generators by size name (`build_generator`) and from checkpoints (`load_generator`).

Checkpoint layouts that `load_generator` reads (each a family of `taming.released`, recognised from the keys):

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
4. Released IBQ AR checkpoints: like 2 (`transformer.*` with per-block `ada_lin`, the IBQ-16384 tokenizer under
   `first_stage_model.*`); `config`: the released YAML or its `llama.GPT` params (IBQ argument names).
In 2, 3 and 4, `size` may name a preset of the generator class (`GPT.sizes`, `FactorizedGPT.sizes`,
`AdaLNGPT.sizes`: "GPT-B", "OM2-AR-B", "IBQ-AR-B", ...); the other fields override it.
"""
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch

from .checkpoints import load_state_dict_strict, read_checkpoint, save_atomic
from .modules.component import trusted_class_paths
from .modules.transformer import ARGenerator, generator_class
from .released import generator_families

PathLike = Union[str, Path]


def build_generator(size: str, **overrides) -> ARGenerator:
    """A freshly initialised generator from a preset name, e.g. build_generator("GPT-B", vocab_size=16384,
    num_tokens=576), build_generator("OM2-AR-B") or build_generator("IBQ-AR-B"); `overrides` are constructor
    arguments. (In a config: {"class_path": ..., "init_args": {"size": "GPT-B", ...}}.)"""
    cls = generator_class(size)
    return cls(**{**cls.sizes[size], **overrides})


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
    family = next(f for f in generator_families() if f.recognises(ckpt, state))
    with trusted_class_paths(trust_class_paths):
        model, weights, used_ema = family.read(ckpt, state, config, ema, path)
    fmt = family.name
    load_state_dict_strict(model, weights, f"{fmt} checkpoint {path}{' (EMA weights)' if used_ema else ''}",
                           hint="Check the config (sizes, vocab_size / factorized_bits, num_classes, block_size) "
                                "against the checkpoint.")
    model.checkpoint_info = {"path": str(path), "format": fmt, "ema": used_ema, "global_step": ckpt.get("global_step")}
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()


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
