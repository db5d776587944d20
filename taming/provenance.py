"""Where tokens come from: records of the tokenizer that made a token folder or trained a generator, loading that
tokenizer again (checked by SHA-256), checks that tokens fit a generator, and decoding generated tokens. Inference
side: no Lightning import."""
import math
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

from .checkpoints import file_sha256
from .data.tokens import TokenFolder
from .modules.transformer import ARGenerator, FactorizedGPT
from .tokenizer import load_tokenizer

# --------------------------------------------------------------------------------------- tokenizer provenance


def tokenizer_record(tokenizer, ckpt_path, config=None) -> dict:
    """How to load `tokenizer` again, in the token manifest's layout plus `bit_order`: checkpoint (absolute path),
    checkpoint_sha256, config_file (a YAML file, made absolute, or a preset name), config (a dict as given, else the
    tokenizer's component configs), weights ("ema" / "raw"), bit_order (LFQ; else None)."""
    named = isinstance(config, (str, Path))
    return {"checkpoint": str(Path(ckpt_path).resolve()), "checkpoint_sha256": file_sha256(ckpt_path),
            "config_file": (str(Path(config).resolve()) if Path(config).is_file() else str(config)) if named else None,
            "config": dict(config) if isinstance(config, Mapping) else tokenizer.config,
            "weights": "ema" if tokenizer.checkpoint_info["ema"] else "raw",
            "bit_order": getattr(tokenizer.quantize, "bit_order", None) if tokenizer.quantize.bits else None}


def folder_record(folder: TokenFolder) -> dict:
    """The tokenizer entry of a token folder's manifest, with the folder's bit order and path."""
    return {**folder.manifest["tokenizer"], "bit_order": folder.bit_order, "tokens": str(folder.folder)}


def load_recorded_tokenizer(record: Mapping, ckpt_path=None, config=None, map_location="cpu",
                            allow_unsafe_pickle: bool = False, trust_class_paths: Sequence[str] = (),
                            allow_other_checkpoint: bool = False):
    """The tokenizer a record (`tokenizer_record`, a token manifest's entry) names; `ckpt_path` / `config` replace
    the recorded ones (a moved file, another config). A checkpoint whose SHA-256 differs from the record's (e.g. a
    rerun wrote new weights at the same path) is refused unless `allow_other_checkpoint`: its tokens would decode
    to other images."""
    path = ckpt_path or record.get("checkpoint")
    config = config or record.get("config_file") or record.get("config")
    expected = record.get("checkpoint_sha256")
    if expected and Path(str(path)).is_file() and not allow_other_checkpoint and file_sha256(path) != expected:
        raise ValueError(f"tokenizer checkpoint {path} is not the one that made these tokens (its SHA-256 differs from "
                         f"the recorded {expected[:12]}...): decoding with it gives other images. Pass the original "
                         "checkpoint (scripts: --tokenizer_ckpt / --ckpt_path), or accept the difference "
                         "(--allow_other_checkpoint)")
    try:
        tokenizer = load_tokenizer(path, config=config, ema=False if record.get("weights") == "raw" else None,
                                   bit_order=record.get("bit_order"), map_location=map_location,
                                   allow_unsafe_pickle=allow_unsafe_pickle, trust_class_paths=trust_class_paths)
    except (FileNotFoundError, RuntimeError, ValueError, TypeError) as err:
        raise type(err)(f"cannot load the recorded tokenizer (checkpoint {path}, config {config!r}): {err}\n"
                        "Pass the tokenizer's checkpoint and config explicitly (scripts: --tokenizer_ckpt, "
                        "--tokenizer_config)") from None
    return tokenizer


def check_tokens_match(model: ARGenerator, codebook_size: int, bit_order: Optional[str], where: str,
                       token_shape: Optional[Sequence[int]] = None) -> None:
    """Clear errors when tokens (codebook, bit order, shape) do not fit the generator."""
    if codebook_size != model.codebook_size:
        raise ValueError(f"{where} has a {codebook_size}-code tokenizer but the generator predicts "
                         f"{model.codebook_size} codes; set the generator's vocab_size (GPT) or factorized_bits "
                         f"(FactorizedGPT) to match {codebook_size}, or use tokens of the tokenizer the generator was "
                         "built for")
    if isinstance(model, FactorizedGPT) and bit_order == "msb":
        raise ValueError(f"{where} holds MSB-first LFQ indices (a v1 tokenizer), but FactorizedGPT splits indices "
                         "LSB-first (pre sub-token = latent channels 0..b1-1, as Open-MAGVIT2 v2); re-encode with "
                         "--bit_order lsb (scripts/encode_tokens.py) or use a GPT")
    if token_shape is None:
        return
    count = math.prod(token_shape)
    if count != model.num_tokens:
        raise ValueError(f"{where} has {'x'.join(map(str, token_shape))} = {count} tokens per image but the generator "
                         f"models num_tokens={model.num_tokens}; set num_tokens: {count}, or encode at the image size "
                         "the generator was built for")
    grid = model.token_grid
    if grid is not None and len(token_shape) > 1 and tuple(token_shape) != tuple(grid):
        raise ValueError(f"{where} has a {'x'.join(map(str, token_shape))} token grid but the generator's RoPE "
                         f"assumes a {'x'.join(map(str, grid))} grid; set num_tokens and token_grid (positions "
                         f"rope3d) or encode at the generator's size")


def check_value_ranges(model: ARGenerator, ranges: Mapping[str, Optional[tuple]], where: str) -> None:
    """Indices and class labels recorded for a token folder must fit the generator: checked at start, not when the
    batch holding a bad value is reached."""
    index, label = ranges.get("index"), ranges.get("label")
    if index is not None and (index[0] < 0 or index[1] >= model.codebook_size):
        raise ValueError(f"{where} holds indices in [{index[0]}, {index[1]}], outside the generator's "
                         f"{model.codebook_size} codes; the folder does not come from this tokenizer")
    if label is not None and (label[0] < 0 or label[1] >= model.num_classes):
        raise ValueError(f"{where} holds class labels in [{label[0]}, {label[1]}] but the generator has "
                         f"num_classes={model.num_classes} (-1 marks an unlabelled image: encode an ImageNet-style "
                         "folder or an ImageList with labels); set num_classes to cover the data")


# --------------------------------------------------------------------------------------- generation helpers


def decode_tokens(tokenizer, tokens: torch.Tensor, token_shape=None) -> torch.Tensor:
    """Generated indices B x N (raster order) -> images B x 3 x H x W (video tokenizers: clips B x 3 x T x H x W),
    unclamped (nominally [-1, 1]). Grid tokenizers get the square sqrt(N) x sqrt(N) grid (the generators' layout),
    1-D tokenizers the sequence, video tokenizers `token_shape` (t, h, w): the generator's `token_grid`."""
    if tokenizer.token_layout == "volume":
        if token_shape is None or len(token_shape) != 3 or math.prod(token_shape) != tokens.shape[1]:
            raise ValueError(f"{tokens.shape[1]} tokens of a video tokenizer need their (frames, height, width) "
                             f"grid; got token_shape {token_shape} (a video generator's token_grid)")
        tokens = tokens.view(tokens.shape[0], *token_shape)
    elif tokenizer.token_layout == "grid":
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise ValueError(f"{tokens.shape[1]} tokens do not form a square grid for this 2-D tokenizer")
        tokens = tokens.view(tokens.shape[0], side, side)
    with torch.no_grad():
        return tokenizer.decode_indices(tokens.to(next(tokenizer.parameters()).device))
