r"""Evaluate a tokenizer's reconstructions in one pass: rFID, PSNR (per image, and Open-MAGVIT2's batch
PSNR), SSIM, LPIPS (AlexNet, VGG) and codebook usage. One GPU, several (torchrun), or CPU.

    python evaluation.py --config_file configs/imagenet_lfqgan_128_B.yaml --ckpt_path models/imagenet_128_B.ckpt \
        --data_root /data/imagenet --split val --image_size 128 --batch_size 32 --output results/in128_B.json
    torchrun --nproc_per_node 8 evaluation.py ... --ref_stats fid_stats/     # shards reduced exactly
    python evaluation.py --ckpt_path models/demo/version_0/last.ckpt --demo --image_size 32 --device cpu \
        --metrics psnr ssim usage      # bundled photographs; these metrics need no downloaded weights

Protocol (all recorded in the JSON): --protocol om2 (default, comparable with Open-MAGVIT2's tables): images resized
(shorter side, bilinear antialiased) and center-cropped to --image_size, pytorch-fid Inception; --protocol adm
(comparable with LlamaGen / GigaTok / MaskBit, which use the ADM evaluator): ADM's center_crop_arr and torch-fidelity's
port of ADM's TF Inception; reconstructions clamped to [-1, 1]; EMA weights when the checkpoint has them (--no_ema: raw).
--image_size 0 evaluates every image at its own size (the original-resolution tables of Open-MAGVIT2 / Cosmos):
zero-padded to a multiple of the downsampling factor, reconstructed, cropped back, one image per batch; images whose
reconstruction would exceed --max_memory_gb are skipped and counted in the JSON.
Pretrained weights (rFID: Inception; LPIPS: AlexNet, VGG16) come from the torch hub cache
(`torch.hub.get_dir()/checkpoints`) or the *_weights options; all are checked before the data pass, nothing is
downloaded. The JSON goes to --output, by default next to the checkpoint: <checkpoint folder>/evaluation/
<checkpoint name>_<data>_<image_size>px.json (_original.json for --image_size 0).
"""

import argparse
import functools
import hashlib
import json
import pickle
import time
from pathlib import Path

import torch
from tqdm import tqdm

from taming.cli.common import (CROP, HelpFormatter, Shard, add_data_args, add_tokenizer_args, load_tokenizer_from_args,
                               make_loader, open_dataset, setup_device)
from taming.checkpoints import file_sha256, save_atomic
from taming.metrics.distributed import all_reduce_sum
from taming.metrics.evaluator import METRICS, ReconstructionMetrics, required_weight_files
from taming.data.loading import ADMCenterCropTransform, to_tensor
from taming.inference import default_budget, pad_centered, peak_memory_bytes
from taming.metrics.fid import INCEPTION_FILES, INCEPTION_INPUT, GaussianStats

WEIGHT_FREE_METRICS = ("psnr", "ssim", "usage")



NATIVE = ("none: every image at its own size, zero-padded (mid-grey) to a multiple of the downsampling factor with "
          "floor(pad / 2) before and the rest after, the reconstruction cropped back (Open-MAGVIT2's "
          "evaluation_original_reso.py, Cosmos' protocol)")
# --protocol: the crop and the Inception extractor of the tables a number is compared with
PROTOCOLS = {
    "om2": {"extractor": "pytorch-fid", "crop": CROP, "transform": None},
    "adm": {"extractor": "torch-fidelity", "transform": ADMCenterCropTransform,
            "crop": "ADM center_crop_arr: halve (box filter) while the shorter side is >= 2 x image_size, resize the "
                    "shorter side to image_size (bicubic), center crop image_size x image_size"},
}

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_tokenizer_args(parser)
    add_data_args(parser)
    parser.add_argument("--image_size", type=int, default=128,
                        help="test resolution (any multiple of the downsampling factor); 0: every image at its own "
                             "size (the release's original-resolution table: zero-padded to a multiple of the factor, "
                             "split as the release, cropped back; one image per batch)")
    parser.add_argument("--max_memory_gb", type=float, default=None,
                        help="with --image_size 0: images whose reconstruction needs more are skipped and counted "
                             "(default: half the free host memory, 80%% of a GPU's free memory)")
    parser.add_argument("--batch_size", type=int, default=16, help="images per batch and process")
    parser.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS), help="metrics to compute")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="om2",
                        help="om2: Open-MAGVIT2's tables (shorter side resized bilinearly with antialiasing, center crop; "
                             "pytorch-fid Inception on float input); adm: the ADM evaluator's convention of the "
                             "LlamaGen / GigaTok / MaskBit tables (ADM center_crop_arr: box-filter halving, bicubic "
                             "resize, center crop; torch-fidelity's port of ADM's TF Inception on uint8 input)")
    parser.add_argument("--fid_extractor", choices=sorted(INCEPTION_FILES), default=None,
                        help="override the protocol's Inception extractor (recorded in the JSON)")
    parser.add_argument("--inception_weights", default=None, help="Inception weight file (default: torch hub cache)")
    parser.add_argument("--lpips_alex_weights", default=None, help="torchvision alexnet-owt-7be5be79.pth (default: hub cache)")
    parser.add_argument("--lpips_vgg_weights", default=None, help="torchvision vgg16-397923af.pth (default: hub cache)")
    parser.add_argument("--ref_stats", default=None,
                        help="folder of real-image Inception statistics: reused when a file for this dataset, split, "
                             "resolution, count and extractor exists, written otherwise")
    parser.add_argument("--legacy_psnr_batch_size", type=int, default=4,
                        help="batch size of psnr_batch_legacy (Open-MAGVIT2's evaluation used 4)")
    parser.add_argument("--no_tf32", action="store_true",
                        help="exact float32 convolutions on Ampere+ GPUs (PyTorch's default lets cuDNN use TF32: "
                             "several times faster, ~1e-3 relative error in network outputs)")
    parser.add_argument("--output", default=None,
                        help="JSON file (default: <checkpoint folder>/evaluation/<checkpoint>_<data>_<size>px.json)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.legacy_psnr_batch_size < 1:
        parser.error("batch sizes must be positive")
    if args.image_size < 0:
        parser.error("--image_size must be positive, or 0 for each image's own size")
    if args.image_size == 0 and args.demo:
        parser.error("--image_size 0 (original resolution) needs --data_root; the demo images are fixed-size crops")
    args.fid_extractor = args.fid_extractor or PROTOCOLS[args.protocol]["extractor"]
    return args


def ref_stats_file(folder: str, key: dict) -> Path:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(folder) / f"fid_stats_{key['extractor']}_{key['image_size']}px_{key['num_images']}_{digest}.pt"


def load_ref_stats(path: Path, key: dict, device) -> GaussianStats:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign file: torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise SystemExit(f"error: cannot read real-image statistics {path} ({type(err).__name__}: {err}); "
                         "delete it to recompute them") from None
    if not isinstance(saved, dict) or saved.get("key") != key:
        found = saved.get("key") if isinstance(saved, dict) else type(saved).__name__
        raise SystemExit(f"error: {path} holds statistics for {found}, not {key}; delete it or use another --ref_stats")
    return GaussianStats.from_state_dict(saved["stats"], device)


def print_table(results: dict) -> None:
    rows = [(k, v) for k, v in results.items() if not isinstance(v, list)]
    width = max(len(k) for k, _ in rows)
    print("-" * (width + 16))
    for name, value in rows:
        print(f"{name:<{width}}  {value:>12.6g}" if isinstance(value, float) else f"{name:<{width}}  {value:>12}")
    print("-" * (width + 16))


def main(argv=None) -> dict:
    args = parse_args(argv)
    device, rank, world_size = setup_device(args.device)
    native = args.image_size == 0
    if args.no_tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest algorithms
    paths = {"rfid": args.inception_weights, "lpips_alex": args.lpips_alex_weights, "lpips_vgg": args.lpips_vgg_weights}
    try:  # every input problem surfaces here, before the data pass
        weight_files = required_weight_files(args.metrics, args.fid_extractor, paths)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}\nTo evaluate without downloaded weights, choose metrics that need none: "
                         f"--metrics {' '.join(WEIGHT_FREE_METRICS)}") from None
    try:
        tokenizer = load_tokenizer_from_args(args, device)
        transform = to_tensor if native else PROTOCOLS[args.protocol]["transform"]
        if transform is not None and not native:
            transform = transform(args.image_size)
        dataset, data = open_dataset(args, args.image_size or None, transform=transform)
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    factor = tokenizer.downsample_factor
    if not native and args.image_size % factor:
        raise SystemExit(f"error: --image_size {args.image_size} is not a multiple of the tokenizer's downsampling factor "
                         f"{factor}; use e.g. {args.image_size // factor * factor or factor}")

    crop = NATIVE if native else PROTOCOLS[args.protocol]["crop"]
    stats_key = {**data, "image_size": args.image_size, "num_images": len(dataset), "crop": crop,
                 "extractor": args.fid_extractor}
    stats_path = ref_stats_file(args.ref_stats, stats_key) if args.ref_stats and "rfid" in args.metrics else None
    real_stats = load_ref_stats(stats_path, stats_key, device) if stats_path and stats_path.is_file() else None
    try:  # a truncated or foreign weight file fails here, still before the data pass
        evaluator = ReconstructionMetrics(
            args.metrics, len(dataset), tokenizer.quantize, weight_files, device, args.fid_extractor, real_stats,
            args.legacy_psnr_batch_size)
    except (RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        files = ", ".join(f"{metric}: {path}" for metric, path in weight_files.items())
        raise SystemExit(f"error: cannot load the metric networks' weights ({files}): {err}\n"
                         "Replace the damaged file (see the README's list of pretrained weights).") from None

    loader = make_loader(Shard(dataset, rank, world_size), 1 if native else args.batch_size, args.num_workers, device)
    skipped = torch.zeros((), dtype=torch.int64, device=device)
    over_budget = torch.zeros((), dtype=torch.int64, device=device)
    budget = default_budget(device, args.max_memory_gb)
    need = functools.lru_cache(maxsize=None)(lambda h, w: peak_memory_bytes(tokenizer, h, w))  # once per image size
    start = time.perf_counter()
    with torch.no_grad():
        for batch in tqdm(loader, desc="evaluating", disable=rank != 0, dynamic_ncols=True):
            skipped += batch["num_skipped"]
            if not batch["relpath"]:
                continue
            images = batch["image"].to(device, non_blocking=True)
            x, (top, left, h, w) = pad_centered(images, factor) if native else (images, (0, 0) + images.shape[-2:])
            if native and need(*x.shape[-2:]) > budget:
                over_budget += 1
                continue
            quant, indices = tokenizer.encode(x)
            recon = tokenizer.decode(quant)[..., top:top + h, left:left + w]
            evaluator.update(images, recon, indices, batch["index"].to(device, non_blocking=True))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start  # the data pass: loading, tokenizer, metric networks
    results = evaluator.compute()
    all_reduce_sum(skipped)
    all_reduce_sum(over_budget)
    if world_size > 1:
        torch.distributed.destroy_process_group()
    if rank != 0:
        return results

    if stats_path and real_stats is None:
        save_atomic({"key": stats_key, "stats": evaluator.real_stats.state_dict()}, stats_path)
    info = tokenizer.checkpoint_info
    protocol = {
        **data,
        "num_images": results["num_images"], "num_skipped_unreadable": int(skipped),
        "image_size": "original" if native else args.image_size,
        "protocol": args.protocol, "crop": crop, "weights": "ema" if info["ema"] else "raw", "checkpoint": str(Path(args.ckpt_path).resolve()),
        "checkpoint_sha256": file_sha256(args.ckpt_path), "global_step": info["global_step"],
        "config_file": args.config_file, "tokenizer": tokenizer.config, "downsample_factor": factor,
        "tokens_per_image": "varies" if native else (args.image_size // factor) ** 2, "metrics": list(args.metrics),
        "fid_extractor": args.fid_extractor, "fid_input": INCEPTION_INPUT[args.fid_extractor],
        "fid_weights": str(weight_files["rfid"]) if "rfid" in weight_files else None,
        "fid_real_stats": str(stats_path) if stats_path else None,
        "psnr": "per image on uint8-rounded images, data range 1 (255), mean over images",
        "psnr_batch_legacy": f"Open-MAGVIT2's reported PSNR: truncated uint8, PSNR of each batch of "
                             f"{args.legacy_psnr_batch_size} consecutive images, mean over batches",
        "ssim": "per image on uint8-rounded images, 7x7 uniform window, data range 1, K1 0.01, K2 0.03, sample covariance",
        "lpips": "lpips v0.1 linear layers + torchvision ImageNet trunks, inputs in [-1, 1], mean over images",
        "tf32_convolutions": torch.backends.cudnn.allow_tf32 and device.type == "cuda", "device": str(device),
        "world_size": world_size, "batch_size": args.batch_size,
        "data_pass_seconds": seconds, "images_per_second": results["num_images"] / seconds,
        "total_seconds": time.perf_counter() - start, "torch": torch.__version__,
    }
    if native:
        protocol.update(num_skipped_over_memory_budget=int(over_budget), memory_budget_bytes=budget)
        if over_budget:
            print(f"note: {int(over_budget)} images needed more than the {budget / 2**30:.1f} GiB budget and were "
                  "skipped (--max_memory_gb)")
    print_table(results)
    print(f"{results['num_images']} images at {'original size' if native else f'{args.image_size}px'}, {protocol['weights']} weights: data pass {seconds:.1f} s "
          f"({results['num_images'] / seconds:.2f} images/s), total {protocol['total_seconds']:.1f} s")
    if "rfid" in results and results["num_images"] <= 2048:
        print(f"note: rFID from {results['num_images']} images (<= 2048 feature dimensions) is strongly biased; "
              "compare it only with rFIDs over the same images")
    write_results({"metrics": results, "protocol": protocol}, args.output or default_output(args, data))
    return results


def default_output(args, data: dict) -> Path:
    """<checkpoint folder>/evaluation/<checkpoint name>_<data>_<size>px.json: every run's `last.ckpt` gets its own."""
    ckpt = Path(args.ckpt_path)
    source = "demo" if data["dataset"] == "demo" else Path(data["dataset"]).name
    split = f"_{data['split']}" if data.get("split") else ""
    size = f"{args.image_size}px" if args.image_size else "original"
    return ckpt.parent / "evaluation" / f"{ckpt.stem}_{source}{split}_{size}.json"


def write_results(results: dict, output) -> None:
    """Write the JSON; if its folder is not writable (a shared, read-only models folder), the working directory."""
    output = Path(output)
    text = json.dumps(results, indent=2) + "\n"
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
    except OSError as err:
        fallback = Path(output.name)
        print(f"warning: cannot write {output} ({err}); writing {fallback.resolve()} instead")
        fallback.write_text(text)
        output = fallback
    print(f"wrote {output}")

