"""Open-MAGVIT2 video tokenizer (SEED-Voken `video_lfqgan.VQModel`): released YAML and checkpoints.

The checkpoint (`video_128_262144.ckpt`) is a Lightning dict whose `state_dict` holds `encoder.*` / `decoder.*` in our
names (`taming.modules.video`), the 3-D discriminator, LPIPS and `model_ema.*` shadows; no hyper-parameters. The
architecture comes from the release's YAML (`model.class_path` ... `video_lfqgan.VQModel`, its `ddconfig`) or its
init_args (recognised by `image_pretrain_path`, a key only the video model has). Indices are LSB-first (v2).
"""
from typing import Mapping, Optional

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


def components(ddconfig: Mapping, embed_dim: Optional[int] = None, bit_order: str = "lsb") -> dict:
    """(encoder, quantizer, decoder) modules of the video tokenizer for a release `ddconfig`."""
    dd = normalize_ddconfig({k: v for k, v in ddconfig.items() if k != "adaptive_gn"})
    embed_dim = dd["z_channels"] if embed_dim is None else int(embed_dim)
    if embed_dim != dd["z_channels"]:
        raise ValueError(f"LFQ dimension embed_dim={embed_dim} must equal z_channels={dd['z_channels']}")
    arch = {k: dd[k] for k in ("ch", "ch_mult", "num_res_blocks", "z_channels")}
    return {"encoder": VideoEncoder(**arch, in_channels=dd["in_channels"]),
            "quantizer": LFQ(dim=embed_dim, bit_order=bit_order),
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
