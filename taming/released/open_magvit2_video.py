"""Open-MAGVIT2 video tokenizer (SEED-Voken `video_lfqgan.VQModel`): released YAML and checkpoints.

The checkpoint (`video_128_262144.ckpt`) is a Lightning dict whose `state_dict` holds `encoder.*` / `decoder.*` in our
names (`taming.modules.video`), the 3-D discriminator, LPIPS and `model_ema.*` shadows; no hyper-parameters. The
architecture comes from the release's YAML (`model.class_path` ... `video_lfqgan.VQModel`, its `ddconfig`) or its
init_args (recognised by `image_pretrain_path`, a key only the video model has). Indices are LSB-first (v2).
"""
from typing import Mapping, Optional

import torch

from ..modules.ema import shadow_key
from ..modules.quantizers import LFQ
from ..modules.video import VideoDecoder, VideoEncoder
from . import TokenizerFamily, TokenizerParts
from .open_magvit2 import normalize_ddconfig

VIDEO_TARGET = "video_lfqgan.VQModel"


def video_args(source) -> Optional[Mapping]:
    """The video model's init_args from a released YAML (LightningCLI or taming style) or the init_args themselves;
    None when `source` does not describe the video tokenizer."""
    if not isinstance(source, Mapping):
        return None
    model = source.get("model")
    if isinstance(model, Mapping):
        target = str(model.get("class_path") or model.get("target") or "")
        return (model.get("init_args") or model.get("params") or {}) if target.endswith(VIDEO_TARGET) else None
    return source if "ddconfig" in source and "image_pretrain_path" in source else None


def components(ddconfig: Mapping, embed_dim: Optional[int] = None, bit_order: str = "lsb", **lfq_args) -> dict:
    """(encoder, quantizer, decoder) modules of the video tokenizer for a release `ddconfig` (`lfq_args`: the LFQ's
    loss settings)."""
    dd = normalize_ddconfig({k: v for k, v in ddconfig.items() if k != "adaptive_gn"})
    embed_dim = dd["z_channels"] if embed_dim is None else int(embed_dim)
    if embed_dim != dd["z_channels"]:
        raise ValueError(f"LFQ dimension embed_dim={embed_dim} must equal z_channels={dd['z_channels']}")
    arch = {k: dd[k] for k in ("ch", "ch_mult", "num_res_blocks", "z_channels")}
    return {"encoder": VideoEncoder(**arch, in_channels=dd["in_channels"]),
            "quantizer": LFQ(dim=embed_dim, bit_order=bit_order, **lfq_args),
            "decoder": VideoDecoder(**arch, out_ch=dd["out_ch"])}


def _recognises(source, checkpoint: Mapping) -> bool:
    return video_args(source) is not None


def _read(source, checkpoint: Mapping, bit_order: Optional[str]) -> TokenizerParts:
    args = video_args(source)
    if "ddconfig" not in args:
        raise ValueError("the video tokenizer config has no ddconfig")
    parts = components(args["ddconfig"], args.get("embed_dim"), bit_order or "lsb")
    return TokenizerParts(parts, checkpoint.get("state_dict", checkpoint),
                          notes="Open-MAGVIT2 video checkpoint (discriminator and LPIPS skipped)")


TOKENIZER = TokenizerFamily("Open-MAGVIT2 video", _recognises, _read)


# ------------------------------------------------------------------------------------------ image -> video inflation


def _inflate(value: torch.Tensor, shape: torch.Size, key: str) -> torch.Tensor:
    """One image tensor in the video tensor's shape: copied when equal; a 2-D kernel becomes the last temporal slice
    of a zero 3-D kernel (with front-only causal padding it reads the current frame); a temporal upsampler's weight
    and bias (C -> 4C in the image, C -> 8C in the video) are the image's repeated twice along the outputs."""
    if value.shape == shape:
        return value.clone()
    if value.shape[0] * 2 == shape[0]:  # the (2, 2, 2) upsampler: both temporal sub-frames start identical
        value = torch.cat([value, value])
        if value.shape == shape:
            return value
    if value.dim() == 4 and len(shape) == 5 and value.shape == (*shape[:2], *shape[3:]):
        out = value.new_zeros(shape)
        out[:, :, -1] = value
        return out
    raise ValueError(f"cannot inflate {key}: image shape {tuple(value.shape)}, video shape {tuple(shape)}; the image "
                     "tokenizer must have the video config's ch, ch_mult, num_res_blocks and z_channels")


def inflate_image_state(image_state: Mapping[str, torch.Tensor], video) -> dict:
    """Video tokenizer weights from an Open-MAGVIT2 v2 image tokenizer's state dict (MAGVIT-2's "last temporal
    slice" inflation, as the release's `image_pretrain_path`): every `encoder.*` / `decoder.*` tensor of `video` (a
    video Tokenizer or training module) from the image key of the same name without `.conv_1` (`_inflate`), and the
    same for the `model_ema.*` shadows when the image checkpoint has them. Returns a state dict in the video
    checkpoint layout (raw keys + shadows); the discriminator is not inflated (as released)."""
    out, missing = {}, []
    for key, target in video.state_dict().items():
        if not key.startswith(("encoder.", "decoder.")):
            continue
        image_key = key.replace(".conv_1.", ".")
        if image_key not in image_state:
            missing.append(image_key)
            continue
        out[key] = _inflate(image_state[image_key], target.shape, image_key)
        if shadow_key(image_key) in image_state:
            out[shadow_key(key)] = _inflate(image_state[shadow_key(image_key)], target.shape, shadow_key(image_key))
    if missing:
        raise ValueError(f"the image checkpoint lacks {len(missing)} weights the video tokenizer needs (e.g. "
                         f"{missing[:3]}); it must be an Open-MAGVIT2 v2 image tokenizer (adaptive group norm) with the "
                         "video config's widths")
    return out
