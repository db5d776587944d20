r"""Encode a dataset to a token folder for autoregressive training; multi-GPU (torchrun), resumable.

    python scripts/encode_tokens.py --ckpt_path models/imagenet_256_L.ckpt --config_file configs/imagenet_lfqgan_256_L.yaml \
        --data_root data/imagenet --split train --image_size 256 --output_dir tokens/in256_train
    torchrun --nproc_per_node 8 scripts/encode_tokens.py ...          # shards are spread over the ranks
    python scripts/encode_tokens.py --ckpt_path models/ucf101_lfqgan_128_L/last.ckpt --data_root data/UCF-101 \
        --split train --image_size 128 --num_frames 17 --output_dir tokens/ucf101_train   # a video tokenizer
    python scripts/encode_tokens.py ... --ten_crop --crop_range 1.1   # LlamaGen's ten views per image

The format (manifest.json + tokens_NNNNN.npy / .json / .done.json) is described in taming/data/tokens.py.
Images are resized (shorter side, bilinear antialiased) and center-cropped to --image_size, or with --ten_crop
center-cropped ADM-style to image_size * crop_range and cut into the ten TenCrop views (LlamaGen's code extraction).
A video tokenizer encodes the centre --num_frames of every video (UCF-101 class folders, or --demo clips), shorter side
resized with OpenCV's bilinear arithmetic, centre crop; its tokens are num_frames' x h x w.
Rerunning the same command skips every shard whose files match its completion record (size and SHA-256) and redoes
missing or damaged ones; a different tokenizer or setting in the same folder is refused.
"""
from pathlib import Path

import argparse

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Subset
from tqdm import tqdm

from taming.cli.common import (CROP, HelpFormatter, add_data_args, add_tokenizer_args,
                               load_tokenizer_from_args, make_loader, open_clips, open_dataset, setup_device)
from taming.data.loading import TenCropTransform
from taming.data.tokens import (FORMAT, MANIFEST, finished_shard, index_dtype, read_json, shard_stem,
                                write_json_atomic, write_shard)
from taming.provenance import tokenizer_record
from taming.modules.component import class_path

PROGRESS_KEYS = ("shards", "num_images", "num_skipped", "complete")  # the rest of the manifest describes the run


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_tokenizer_args(parser)
    add_data_args(parser, default_split="train")
    parser.add_argument("--image_size", type=int, default=256, help="resolution (a multiple of the downsampling factor)")
    parser.add_argument("--num_frames", type=int, default=17, help="video tokenizers: frames per clip")
    parser.add_argument("--ten_crop", action="store_true", help="LlamaGen's ten-crop views (4 corners + center, flipped too)")
    parser.add_argument("--crop_range", type=float, default=1.1, help="with --ten_crop: center square of image_size x this")
    parser.add_argument("--batch_size", type=int, default=64, help="images per batch and process")
    parser.add_argument("--shard_size", type=int, default=10000, help="images per shard (the unit of resumption)")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    if args.shard_size < 1 or args.batch_size < 1:
        parser.error("--shard_size and --batch_size must be positive")
    return args



def describe_run(args, tokenizer, data: dict, num_images: int) -> dict:
    """The manifest without its progress: what a rerun into the same folder must match."""
    quantizer = tokenizer.quantize
    token_shape = list(tokens_per_item(args, tokenizer))
    crop = (f"ADM center crop to {int(args.image_size * args.crop_range)} px, then the ten {args.image_size} px "
            "TenCrop views" if args.ten_crop else CROP)
    if is_video(tokenizer):
        crop = (f"centre {args.num_frames} frames; shorter side to {args.image_size} (OpenCV INTER_LINEAR "
                "arithmetic), centre crop")
    return {
        "format": FORMAT,
        "tokenizer": {k: v for k, v in tokenizer_record(tokenizer, args.ckpt_path, args.config_file).items()
                      if k != "bit_order"},  # (the quantizer entry holds the bit order)
        "quantizer": {"class_path": class_path(quantizer), "codebook_size": quantizer.codebook_size,
                      **({"bits": quantizer.bits, "bit_order": quantizer.bit_order} if quantizer.bits else {})},
        "token_layout": tokenizer.token_layout, "token_shape": token_shape,
        "index_dtype": index_dtype(quantizer.codebook_size).name,
        "image_size": args.image_size, "crop": crop, "views": 10 if args.ten_crop else 1,
        **({"num_frames": args.num_frames} if is_video(tokenizer) else {}),
        **data, "dataset_size": num_images, "shard_size": args.shard_size,
    }


def is_video(tokenizer) -> bool:
    return tokenizer.token_layout == "volume"


def tokens_per_item(args, tokenizer) -> tuple:
    size = (args.image_size, args.image_size)
    return tokenizer.token_shape(args.num_frames, *size) if is_video(tokenizer) else tokenizer.token_shape(*size)


def prepare_folder(out_dir: Path, run: dict, rank: int, world_size: int) -> None:
    """Create the folder and its manifest (rank 0), or check that an existing one describes the same run."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SystemExit(f"error: --output_dir {out_dir} is a file; pass a folder")
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not (out_dir / MANIFEST).is_file():
            write_json_atomic(out_dir / MANIFEST, {**run, "shards": [], "num_images": 0, "num_skipped": 0,
                                                   "complete": False})
    if world_size > 1:
        dist.barrier()
    try:
        existing = read_json(out_dir / MANIFEST, "token manifest")
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    differing = sorted(k for k in set(existing) | set(run)
                       if k not in PROGRESS_KEYS and existing.get(k) != run.get(k))
    if differing:
        raise SystemExit(f"error: {out_dir / MANIFEST} describes a different tokenization (differs in {differing}); "
                         "use a new --output_dir or delete the old one")


def encode_shard(tokenizer, dataset, positions: range, args, device, progress: tqdm) -> tuple:
    """(indices N x views x *token_shape, labels, dataset positions, relpaths, skipped) of dataset[positions]."""
    loader = make_loader(Subset(dataset, positions), args.batch_size, args.num_workers, device)
    dtype = index_dtype(tokenizer.quantize.codebook_size)
    views = 10 if args.ten_crop else 1
    out = {"indices": [], "class_label": [], "index": [], "relpath": []}
    skipped = 0
    with torch.no_grad():
        for batch in loader:
            progress.update(len(batch["relpath"]) + batch["num_skipped"])
            skipped += batch["num_skipped"]
            if not batch["relpath"]:
                continue
            images = batch["image"].to(device, non_blocking=True)
            _, indices = tokenizer.encode(images.flatten(0, 1) if args.ten_crop else images)
            indices = indices.view(len(batch["relpath"]), views, *indices.shape[1:])
            out["indices"].append(indices.cpu().numpy().astype(dtype))
            out["class_label"] += batch["class_label"].tolist()
            out["index"] += batch["index"].tolist()
            out["relpath"] += batch["relpath"]
    shape = tokens_per_item(args, tokenizer)
    indices = np.concatenate(out["indices"]) if out["indices"] else np.empty((0, views, *shape), dtype)
    return indices, out["class_label"], out["index"], out["relpath"], skipped


def main(argv=None) -> dict:
    args = parse_args(argv)
    device, rank, world_size = setup_device(args.device)
    try:
        tokenizer = load_tokenizer_from_args(args, device)
        if is_video(tokenizer):
            if args.ten_crop or args.shards:
                raise ValueError("a video tokenizer reads videos (--data_root or --demo); --ten_crop and --shards are "
                                 "for images")
            args.num_clips = args.num_images
            dataset, data, _ = open_clips(args, args.image_size, args.num_frames, args.split)
        else:
            transform = TenCropTransform(args.image_size, args.crop_range) if args.ten_crop else None
            dataset, data = open_dataset(args, args.image_size, transform=transform)
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    if args.image_size % tokenizer.downsample_factor:
        raise SystemExit(f"error: --image_size {args.image_size} is not a multiple of the downsampling factor "
                         f"{tokenizer.downsample_factor}")
    out_dir = Path(args.output_dir)
    prepare_folder(out_dir, describe_run(args, tokenizer, data, len(dataset)), rank, world_size)

    shards = range((len(dataset) + args.shard_size - 1) // args.shard_size)
    mine = list(shards[rank::world_size])
    todo = [k for k in mine if finished_shard(out_dir, k) is None]
    if rank == 0 and len(todo) < len(mine):
        print(f"resuming: {len(mine) - len(todo)} of this rank's {len(mine)} shard(s) already written and intact")
    positions = {k: range(k * args.shard_size, min((k + 1) * args.shard_size, len(dataset))) for k in todo}
    progress = tqdm(total=sum(map(len, positions.values())), desc="encoding", unit="img", disable=rank != 0,
                    dynamic_ncols=True)
    for k in todo:
        write_shard(out_dir, k, *encode_shard(tokenizer, dataset, positions[k], args, device, progress))
    progress.close()
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    if rank != 0:
        return {}
    records = [finished_shard(out_dir, k, verify="size") for k in shards]
    missing = [shard_stem(k) for k, r in zip(shards, records) if r is None]
    if missing:
        raise SystemExit(f"error: shard(s) {missing[:4]} did not finish; rerun the same command to complete them")
    manifest = read_json(out_dir / MANIFEST, "token manifest")
    manifest.update(shards=records, num_images=sum(r["num_images"] for r in records),
                    num_skipped=sum(r["num_skipped"] for r in records), complete=True)
    write_json_atomic(out_dir / MANIFEST, manifest)
    print(f"{manifest['num_images']} image(s) encoded, {manifest['num_skipped']} unreadable skipped, in {len(records)} "
          f"shard(s) of {manifest['image_size']}px tokens ({'x'.join(map(str, manifest['token_shape']))} "
          f"{manifest['token_layout']}, {manifest['views']} view(s), {manifest['index_dtype']}) in {out_dir}")
    return manifest

