r"""Decode a token folder written by scripts/encode_tokens.py back into PNG images.

    python scripts/decode_tokens.py --tokens tokens/in256_val --output_dir decoded/ --num_images 100
    python scripts/decode_tokens.py --tokens tokens/in256_val/tokens_00003.npy --output_dir decoded/

The tokenizer is the one named in manifest.json (its checkpoint, component configs and bit order), checked against
the recorded SHA-256; --ckpt_path points to the file when it moved, and with --allow_other_checkpoint decodes with
another checkpoint of the same architecture (e.g. a fine-tuned decoder). Images are written as
<output_dir>/<relpath with .png> (a.jpg.png when a.png exists too), clamped and rounded to uint8; for ten-crop
folders --view picks the view (0 = top-left corner ... 4 = center, 5-9 the same flipped).
"""
from pathlib import Path

import argparse

import numpy as np
import torch

from taming.cli.common import PngNames, add_tokenizer_args, save_png, save_video, setup_device
from taming.data.tokens import TokenFolder
from taming.metrics.image import to_uint8
from taming.provenance import folder_record, load_recorded_tokenizer


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", required=True, help="token folder (with manifest.json) or one tokens_*.npy file in it")
    add_tokenizer_args(parser, ckpt_required=False)
    parser.add_argument("--allow_other_checkpoint", action="store_true",
                        help="decode with a checkpoint whose SHA-256 differs from the one that made the tokens")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_images", type=int, default=None, help="decode the first N images (default: all)")
    parser.add_argument("--view", type=int, default=0, help="which view of ten-crop folders")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        folder = TokenFolder(args.tokens)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    if not 0 <= args.view < folder.views:
        raise SystemExit(f"error: --view must be in [0, {folder.views}) for this folder")
    record = folder_record(folder)
    if args.no_ema:
        record["weights"] = "raw"
    device, _, _ = setup_device(args.device)
    try:
        tokenizer = load_recorded_tokenizer(record, ckpt_path=args.ckpt_path, config=args.config_file,
                                            allow_unsafe_pickle=args.allow_unsafe_pickle,
                                            trust_class_paths=args.trust_class_path,
                                            allow_other_checkpoint=args.allow_other_checkpoint)
    except (FileNotFoundError, RuntimeError, ValueError, TypeError) as err:
        raise SystemExit(f"error: {err}") from None
    tokenizer.to(device)

    out_dir = Path(args.output_dir)
    remaining = args.num_images if args.num_images is not None else sum(folder.shard_sizes())
    written, png_name = 0, PngNames()
    for k in range(folder.num_shards):
        indices, relpaths = folder.indices(k), folder.relpaths(k)
        count = min(remaining, len(relpaths))
        for start in range(0, count, args.batch_size):
            stop = min(start + args.batch_size, count)
            batch = torch.from_numpy(np.asarray(indices[start:stop, args.view]).astype(np.int64)).to(device)
            with torch.no_grad():
                images = to_uint8(tokenizer.decode_indices(batch))
            if images.dim() == 5:  # video tokens: an animated GIF per clip
                for clip, relpath in zip(images.permute(0, 2, 3, 4, 1).cpu().numpy(), relpaths[start:stop]):
                    save_video(clip, (out_dir / png_name(relpath)).with_suffix(".gif"))
                continue
            for image, relpath in zip(images.permute(0, 2, 3, 1).cpu().numpy(), relpaths[start:stop]):
                save_png(np.ascontiguousarray(image), out_dir / png_name(relpath))
        written += count
        remaining -= count
        if remaining <= 0:
            break
    print(f"wrote {written} image(s) to {out_dir}")
    return written

