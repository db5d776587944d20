"""Decode token files written by scripts/tokenize.py back into PNG images.

    python scripts/decode_tokens.py --tokens tokens/in256_val --output_dir decoded/ --num_images 100
    python scripts/decode_tokens.py --tokens tokens/in256_val/tokens_00003.pt --output_dir decoded/

The tokenizer is the one named in manifest.json (its checkpoint, architecture and bit order); --ckpt_path
decodes with another checkpoint of the same architecture (e.g. a fine-tuned decoder). Images are written as
<output_dir>/<relpath with .png> (a.jpg.png when a.png exists too), clamped and rounded to uint8.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from taming.tools import PngNames, add_tokenizer_args, file_sha256, save_png, setup_device  # noqa: E402
from taming.metrics.image import to_uint8  # noqa: E402
from taming.tokenizer import load_tokenizer  # noqa: E402
from taming.tokens import read_manifest  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", required=True, help="token folder (with manifest.json) or one tokens_*.pt file in it")
    add_tokenizer_args(parser, ckpt_required=False)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_images", type=int, default=None, help="decode the first N images (default: all)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        manifest, files = read_manifest(args.tokens)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    saved = manifest["tokenizer"]
    ckpt_path = args.ckpt_path or saved["checkpoint"]
    if args.ckpt_path and file_sha256(ckpt_path) != saved["checkpoint_sha256"]:
        print(f"note: {ckpt_path} is not the checkpoint that produced these tokens ({saved['checkpoint']})")
    device, _, _ = setup_device(args.device)
    try:
        tokenizer = load_tokenizer(ckpt_path, config=args.config_file or saved["config"],
                                   ema=False if args.no_ema or saved["weights"] == "raw" else None,
                                   bit_order=manifest["bit_order"], allow_unsafe_pickle=args.allow_unsafe_pickle)
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    tokenizer.to(device)

    out_dir = Path(args.output_dir)
    remaining = args.num_images if args.num_images is not None else manifest["num_images"]
    written, png_name = 0, PngNames()
    for file in files:
        shard = torch.load(file, map_location="cpu", weights_only=True)
        count = min(remaining, len(shard["relpath"]))
        for start in range(0, count, args.batch_size):
            stop = min(start + args.batch_size, count)
            with torch.no_grad():
                images = to_uint8(tokenizer.decode_indices(shard["indices"][start:stop].long().to(device)))
            for image, relpath in zip(images.permute(0, 2, 3, 1).cpu().numpy(), shard["relpath"][start:stop]):
                save_png(np.ascontiguousarray(image), out_dir / png_name(relpath))
        written += count
        remaining -= count
        if remaining <= 0:
            break
    print(f"wrote {written} image(s) to {out_dir}")


if __name__ == "__main__":
    main()
