r"""AR probing validation loss (GigaTok's `val_loss_cal.py`): the mean next-token cross-entropy of a generator on a
token folder, or on images tokenized here; several GPUs with torchrun.

    python scripts/ar_val_loss.py --ckpt_path models/ar_B/last.ckpt --tokens tokens/in256_val --output_json loss.json
    torchrun --nproc_per_node 8 scripts/ar_val_loss.py --ckpt_path models/ar_B/last.ckpt --data_root data/imagenet \
        --split val --image_size 256 --output_json val_loss.json
    released generators and tokenizers: the model flags of scripts/sample.py (--gpt_config, --tokenizer_ckpt, ...)

Teacher forcing in eval mode (no dropout), float32 unless --precision bf16. --condition: "class" (the true label; what
GigaTok reports), "null" (the unconditional class, as in GigaTok's linear probing) or "both". The loss is the mean
over every token of every image (nats; factorized models: CE(pre) + CE(post), with both terms), each image counted
once (no padding across ranks; GigaTok averages per-batch means over padded shards). Images are resized (shorter
side) and center-cropped to --image_size; a ten-crop token folder is read at one view, --view (default 4, the center).
"""
from pathlib import Path

import argparse
import json
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from taming.cli.common import (CROP, HelpFormatter, Shard, add_data_args, make_loader, open_dataset,
                               setup_device)
from taming.cli.sample import add_model_args, load_models
from taming.data.tokens import TokenDataset
from taming.provenance import check_tokens_match

CONDITIONS = {"class": ("class",), "null": ("null",), "both": ("class", "null")}
CENTER_VIEW = 4  # TenCrop order: 4 corners, center, then the flipped five


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(parser)
    add_data_args(parser, default_split="val")
    parser.add_argument("--tokens", default=None, help="token folder (scripts/encode_tokens.py) instead of images")
    parser.add_argument("--view", type=int, default=None,
                        help="view of a ten-crop token folder; unset: the center view (4)")
    parser.add_argument("--condition", default="class", choices=sorted(CONDITIONS))
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="bf16: autocast")
    parser.add_argument("--output_json", default=None, help="write the results here; unset: print only")
    args = parser.parse_args(argv)
    if (args.tokens is None) == (args.data_root is None and not args.shards and not args.demo):
        parser.error("give either --tokens or images (--data_root / --shards / --demo)")
    if args.batch_size < 1:
        parser.error("--batch_size must be positive")
    return args


def open_tokens(args, model) -> tuple:
    dataset = TokenDataset(args.tokens)
    folder = dataset.folder
    check_tokens_match(model, folder.codebook_size, folder.bit_order, f"token folder {folder.folder}",
                       folder.token_shape)
    dataset.view = args.view if args.view is not None else (CENTER_VIEW if folder.views == 10 else 0)
    if not 0 <= dataset.view < folder.views:
        raise ValueError(f"--view must be in [0, {folder.views}) for {folder.folder}, got {dataset.view}")
    return dataset, {"tokens": str(folder.folder.resolve()), "views": folder.views, "view": dataset.view,
                     "image_size": folder.manifest.get("image_size"), "crop": folder.manifest.get("crop")}


@torch.no_grad()
def evaluate(model, tokenizer, loader, conditions, device, precision: str, show: bool) -> tuple:
    """({condition: {term: sum over images of the per-image mean}}, number of images) of this rank."""
    sums = {c: {} for c in conditions}
    count = 0
    for batch in tqdm(loader, desc="val loss", unit="batch", disable=not show, dynamic_ncols=True):
        labels = batch["class_label"].to(device)
        if labels.numel() == 0:
            continue
        if "tokens" in batch:
            tokens = batch["tokens"].to(device)
        else:
            tokens = tokenizer.encode(batch["image"].to(device))[1]
        if "class" in conditions and int(labels.min()) < 0:
            raise ValueError("--condition class needs labelled images (ImageNet-style folders); these have class -1. "
                             "Use --condition null")
        for condition in conditions:
            cond = labels if condition == "class" else torch.full_like(labels, model.null_class)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                _, terms = model.loss(tokens, cond)
            for name, value in terms.items():  # batch means -> sums over images (per-image means: same token count)
                sums[condition][name] = sums[condition].get(name, 0.0) + float(value) * len(labels)
        count += len(labels)
    return sums, count


def main(argv=None) -> dict:
    args = parse_args(argv)
    device, rank, world_size = setup_device(args.device)
    start = time.time()
    try:
        try:
            model, tokenizer = load_models(args, device, need_tokenizer=args.tokens is None)
        except RuntimeError as err:
            raise ValueError(err) from None
        model.eval()
        if args.tokens:
            dataset, data = open_tokens(args, model)
        else:
            dataset, data = open_dataset(args, args.image_size)
            data.update(image_size=args.image_size, crop=CROP)
        loader = make_loader(Shard(dataset, rank, world_size), args.batch_size, args.num_workers, device)
        conditions = CONDITIONS[args.condition]
        sums, count = evaluate(model, tokenizer, loader, conditions, device, args.precision, rank == 0)
    except (FileNotFoundError, ValueError, TypeError) as err:
        raise SystemExit(f"error: {err}") from None
    names = sorted(sums[conditions[0]])
    totals = torch.tensor([count] + [sums[c].get(n, 0.0) for c in conditions for n in names], dtype=torch.float64,
                          device=device)
    if world_size > 1:
        dist.all_reduce(totals)
        dist.destroy_process_group()
    num_images = int(totals[0])
    if num_images == 0:
        raise SystemExit("error: no image was evaluated (an empty dataset, or every image unreadable)")
    values = iter((totals[1:] / num_images).tolist())
    results = {c: {n: next(values) for n in names} for c in conditions}
    info = model.checkpoint_info
    report = {"metric": "mean next-token cross-entropy (nats) over every token of every image, teacher-forced, "
                        "eval mode",
              "generator": {"checkpoint": str(Path(args.ckpt_path).resolve()), "format": info["format"],
                            "ema": info["ema"], "global_step": info["global_step"]},
              "data": data, "num_images": num_images, "precision": args.precision,
              "conditioning": {c: "the true class label" if c == "class" else f"the null class {model.null_class}"
                               for c in conditions},
              "results": results, "seconds": round(time.time() - start, 1)}
    if rank == 0:
        for condition, terms in results.items():
            values = ", ".join(f"{n} {v:.4f}" for n, v in terms.items())
            print(f"{condition} conditioning, {num_images} images: {values}")
        if args.output_json:
            Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output_json).write_text(json.dumps(report, indent=2) + "\n")
    return report

