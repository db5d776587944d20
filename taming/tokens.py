r"""Token files for autoregressive training: `python scripts/tokenize.py` (main) writes them, decode_tokens reads them.

    python scripts/tokenize.py --ckpt_path models/imagenet_256_B.ckpt --config_file configs/imagenet_lfqgan_256_B.yaml \
        --data_root /data/imagenet --split train --image_size 256 --output_dir tokens/in256_train
    torchrun --nproc_per_node 8 scripts/tokenize.py ...          # shards are spread over the ranks

Output folder:
- manifest.json: tokenizer (checkpoint, sha256, architecture, EMA or raw), bit_order ("msb": latent channel 0
  is the most significant bit of an index; "lsb": the least), codebook_bits, image_size, crop, token_grid,
  dataset, num_images, shard_size and the list of shard files.
- tokens_00000.pt, ...: each a dict (torch.load(..., weights_only=True)) for `shard_size` consecutive dataset
  images: indices (n x h x w int32), class_label (n int64; -1 = unknown), relpath (n file names, relative
  to the dataset root), index (n int64, positions in the dataset), num_skipped (unreadable images left out).
A shard file appears atomically when complete; rerunning the same command skips finished shards.
"""
import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import Subset
from tqdm import tqdm

from taming.tools import (CROP, add_data_args, add_tokenizer_args, file_sha256, load_tokenizer_from_args, make_loader, open_dataset,
                        setup_device)

FORMAT = "taming-tokens-v1"
MANIFEST = "manifest.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tokenizer_args(parser)
    add_data_args(parser, default_split="train")
    parser.add_argument("--image_size", type=int, default=256, help="resolution (a multiple of the downsampling factor)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--shard_size", type=int, default=10000, help="images per token file (the unit of resumption)")
    parser.add_argument("--output_dir", required=True)
    return parser.parse_args(argv)


def shard_name(k: int) -> str:
    return f"tokens_{k:05d}.pt"


def build_manifest(args, tokenizer, data: dict, num_images: int) -> dict:
    factor = tokenizer.downsample_factor
    num_shards = (num_images + args.shard_size - 1) // args.shard_size
    return {
        "format": FORMAT,
        "tokenizer": {"checkpoint": str(Path(args.ckpt_path).resolve()), "checkpoint_sha256": file_sha256(args.ckpt_path),
                      "config_file": args.config_file, "config": tokenizer.config,
                      "weights": "ema" if tokenizer.checkpoint_info["ema"] else "raw"},
        "bit_order": tokenizer.quantize.bit_order, "codebook_bits": tokenizer.quantize.dim,
        "image_size": args.image_size, "crop": CROP, "downsample_factor": factor,
        "token_grid": [args.image_size // factor, args.image_size // factor], "index_dtype": "int32",
        **data, "num_images": num_images, "shard_size": args.shard_size,
        "shards": [shard_name(k) for k in range(num_shards)],
    }


def read_manifest(tokens) -> tuple:
    """(manifest dict, token files) for a token folder, or for one shard file inside it (then just that file)."""
    tokens = Path(tokens)
    folder = tokens.parent if tokens.is_file() else tokens
    if not (folder / MANIFEST).is_file():
        raise FileNotFoundError(f"{folder / MANIFEST} not found; expected a folder written by scripts/tokenize.py "
                                "or a shard file inside one")
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{folder / MANIFEST} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    if tokens.is_file():
        return manifest, [tokens]
    missing = [name for name in manifest["shards"] if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) missing in {folder} (e.g. {missing[0]}); finish the "
                                "tokenization by rerunning scripts/tokenize.py with the same arguments")
    return manifest, [folder / name for name in manifest["shards"]]


def check_resume(path: Path, manifest: dict) -> None:
    """An existing manifest must describe the same run; otherwise its shards would mix two tokenizations."""
    existing = json.loads(path.read_text())
    differing = sorted(k for k in set(existing) | set(manifest) if existing.get(k) != manifest.get(k))
    if differing:
        raise SystemExit(f"error: {path} describes a different tokenization (differs in {differing}); "
                         "use a new --output_dir or delete the old one")


def encode_shard(tokenizer, dataset, k: int, args, device, progress: tqdm) -> dict:
    positions = range(k * args.shard_size, min((k + 1) * args.shard_size, len(dataset)))
    loader = make_loader(Subset(dataset, positions), args.batch_size, args.num_workers, device)
    out = {"indices": [], "class_label": [], "relpath": [], "index": [], "num_skipped": 0}
    with torch.no_grad():
        for batch in loader:
            progress.update(len(batch["relpath"]) + batch["num_skipped"])
            out["num_skipped"] += batch["num_skipped"]
            if not batch["relpath"]:
                continue
            _, indices = tokenizer.encode(batch["image"].to(device, non_blocking=True))
            out["indices"].append(indices.to("cpu", torch.int32))
            out["class_label"].append(batch["class_label"].long())
            out["index"].append(batch["index"].long())
            out["relpath"].extend(batch["relpath"])
    grid = (args.image_size // tokenizer.downsample_factor,) * 2
    out["indices"] = torch.cat(out["indices"]) if out["indices"] else torch.empty(0, *grid, dtype=torch.int32)
    for key in ("class_label", "index"):
        out[key] = torch.cat(out[key]) if out[key] else torch.empty(0, dtype=torch.int64)
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.shard_size < 1 or args.batch_size < 1:
        raise SystemExit("error: --shard_size and --batch_size must be positive")
    device, rank, world_size = setup_device(args.device)
    try:
        tokenizer = load_tokenizer_from_args(args, device)
        dataset, data = open_dataset(args, args.image_size)
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    if args.image_size % tokenizer.downsample_factor:
        raise SystemExit(f"error: --image_size {args.image_size} is not a multiple of the downsampling factor "
                         f"{tokenizer.downsample_factor}")
    out_dir = Path(args.output_dir)
    manifest = build_manifest(args, tokenizer, data, len(dataset))
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not (out_dir / MANIFEST).is_file():
            (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if world_size > 1:
        dist.barrier()
    check_resume(out_dir / MANIFEST, manifest)  # on every rank: a mismatch stops them all, none waits on a barrier

    todo = [k for k in range(rank, len(manifest["shards"]), world_size) if not (out_dir / shard_name(k)).is_file()]
    done = len(range(rank, len(manifest["shards"]), world_size)) - len(todo)
    if rank == 0 and done:
        print(f"resuming: {done} shard(s) of this rank already written")
    images_todo = sum(len(range(k * args.shard_size, min((k + 1) * args.shard_size, len(dataset)))) for k in todo)
    progress = tqdm(total=images_todo, desc="tokenizing", unit="img", disable=rank != 0, dynamic_ncols=True)
    for k in todo:
        shard = encode_shard(tokenizer, dataset, k, args, device, progress)
        tmp = out_dir / f".{shard_name(k)}.rank{rank}.tmp"
        torch.save(shard, tmp)
        os.replace(tmp, out_dir / shard_name(k))
        if shard["num_skipped"]:
            print(f"{shard_name(k)}: skipped {shard['num_skipped']} unreadable image(s)")
    progress.close()
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        print(f"{len(manifest['shards'])} shard(s) of {args.image_size}px tokens "
              f"({manifest['token_grid'][0]}x{manifest['token_grid'][1]}, {manifest['bit_order']} bit order) in {out_dir}")

