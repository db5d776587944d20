r"""Evaluate a video tokenizer's reconstructions in one pass: rFVD (I3D), per-frame PSNR, SSIM, LPIPS (AlexNet, VGG)
and codebook usage. One GPU, several (torchrun), or CPU.

    python evaluation_video.py --ckpt_path models/video_128_262144.ckpt --config_file <release YAML> \
        --data_root data/UCF-101 --protocol om2 --output results/ucf101_om2.json       # the published rFVD's protocol
    python evaluation_video.py --ckpt_path models/ucf101_lfqgan_128_L/last.ckpt --data_root data/UCF-101 --split test
    python evaluation_video.py --ckpt_path models/demo_video/version_0/last.ckpt --demo --image_size 32 \
        --device cpu --metrics psnr ssim usage     # camera-motion clips of the bundled photographs; no weights needed
    python evaluation_video.py --generated samples/ucf101/samples.npz --data_root data/UCF-101 --split train
                                                   # gFVD of scripts/sample.py --num_samples clips against real ones

Protocols (recorded in the JSON with every setting): --protocol om2 reproduces the released rFVD's (Open-MAGVIT2 video,
`evaluation_video.py`): clips from the UCF-101 *train* folder, padded to 10,000 with random duplicates, the centre
17 frames, shorter side to the size with OpenCV's bilinear arithmetic, a random crop (seeded here, unseeded there),
uint8 by truncation before I3D. --protocol fixed (default): the given split (UCF-101 test), no duplicates, centre
crop, uint8 by rounding. Both: EMA weights when the checkpoint has them (--no_ema: raw), I3D on all frames bilinearly
resized to 224 x 224, FVD = Fréchet distance of the 400 Kinetics logits (float64). I3D weights
(`i3d_pretrained_400.pt`) come from --i3d_weights or the torch hub cache; nothing is downloaded.
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from taming.cli.evaluation import print_table, write_results
from taming.cli.common import (HelpFormatter, IndexedSubset, Shard, add_tokenizer_args, load_tokenizer_from_args,
                               make_loader, open_clips, setup_device)
from taming.checkpoints import file_sha256
from taming.metrics.evaluator import required_weight_files
from taming.metrics.fid import GaussianStats, frechet_distance
from taming.metrics.i3d import I3D_FILE, clips_to_uint8, load_i3d
from taming.metrics.distributed import all_reduce_sum
from taming.metrics.video import I3D_CLASSES, VIDEO_METRICS, VideoReconstructionMetrics, i3d_logits
from taming.pretrained import resolve_weight_file

PROTOCOLS = {
    "om2": {"split": "train", "crop": "random", "truncate": True, "pad_to": 10_000},
    "fixed": {"split": "test", "crop": "center", "truncate": False, "pad_to": None},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_tokenizer_args(parser, ckpt_required=False)
    parser.add_argument("--generated", default=None,
                        help="samples.npz of scripts/sample.py --num_samples (uint8 N x T x H x W x 3): gFVD of these "
                             "clips against the real ones (no tokenizer)")
    data = parser.add_argument_group("data")
    data.add_argument("--data_root", default=None, help="UCF-101 root (<root>/<split>/<class>/*.avi) or a video folder")
    data.add_argument("--split", default=None,
                      help="split folder under --data_root (default: the protocol's; '' = --data_root itself)")
    data.add_argument("--demo", action="store_true", help="DemoVideos (camera motion over the bundled photographs)")
    data.add_argument("--num_clips", type=int, default=None, help="first N clips (default: all; --demo: 16)")
    data.add_argument("--num_workers", type=int, default=4, help="DataLoader workers per process")
    data.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="fixed", help="see above")
    parser.add_argument("--image_size", type=int, default=128, help="frame size after resize and crop")
    parser.add_argument("--num_frames", type=int, default=17, help="frames per clip (1 + a multiple of 4 for the release)")
    parser.add_argument("--seed", type=int, default=0, help="random crops and duplicates of --protocol om2")
    parser.add_argument("--batch_size", type=int, default=4, help="clips per batch and process")
    parser.add_argument("--metrics", nargs="+", choices=VIDEO_METRICS, default=list(VIDEO_METRICS))
    parser.add_argument("--i3d_weights", default=None, help=f"{I3D_FILE} (default: torch hub cache)")
    parser.add_argument("--lpips_alex_weights", default=None, help="torchvision alexnet-owt-7be5be79.pth")
    parser.add_argument("--lpips_vgg_weights", default=None, help="torchvision vgg16-397923af.pth")
    parser.add_argument("--output", default=None, help="JSON file (default: <checkpoint folder>/evaluation/...)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.image_size < 1 or args.num_frames < 1:
        parser.error("--batch_size, --image_size and --num_frames must be positive")
    if (args.data_root is None) == (not args.demo):
        parser.error("give --data_root or --demo")
    if (args.ckpt_path is None) == (args.generated is None):
        parser.error("give --ckpt_path (reconstructions) or --generated (samples), not both")
    return args


def open_protocol_clips(args, protocol: dict):
    """(dataset with item["index"], description for the JSON); --protocol om2 pads the list with seeded duplicates."""
    split = None if args.demo else protocol["split"] if args.split is None else args.split or None
    dataset, data, clips = open_clips(args, args.image_size, args.num_frames, split, protocol["crop"], args.seed)
    if args.demo or not protocol["pad_to"] or len(clips) >= protocol["pad_to"]:
        return dataset, data
    order = list(range(len(clips)))  # the release's random duplicates up to pad_to clips, seeded
    need = protocol["pad_to"] - len(order)
    order += np.random.default_rng(args.seed).choice(len(order), need, replace=need > len(order)).tolist()
    data["clips_with_duplicates"] = len(order)
    return IndexedSubset(clips, order[:args.num_clips]), data


def video_weight_files(args) -> dict:
    """{metric: file} for I3D and the LPIPS trunks; one FileNotFoundError listing every missing file."""
    errors, files = [], {}
    try:
        files = required_weight_files([m for m in args.metrics if m.startswith("lpips")], "pytorch-fid",
                                      {"lpips_alex": args.lpips_alex_weights, "lpips_vgg": args.lpips_vgg_weights})
    except FileNotFoundError as err:
        errors.append(str(err))
    if "rfvd" in args.metrics:
        try:
            files["rfvd"] = resolve_weight_file(I3D_FILE, args.i3d_weights, "--i3d_weights")
        except FileNotFoundError as err:
            errors.append(f"- rfvd: {err}")
    if errors:
        raise FileNotFoundError("\n".join(errors))
    return files


def generation_fvd(args, protocol: dict, device, rank: int, world_size: int) -> dict:
    """gFVD: I3D statistics of the real clips (the protocol's data) and of the generated ones, reduced over ranks."""
    try:
        i3d_file = resolve_weight_file(I3D_FILE, args.i3d_weights, "--i3d_weights")
        i3d = load_i3d(i3d_file, device=device)
        with np.load(args.generated) as archive:
            generated = archive["arr_0"]
        want = (args.num_frames, args.image_size, args.image_size, 3)
        if generated.dtype != np.uint8 or generated.ndim != 5 or generated.shape[1:] != want:
            raise ValueError(f"{args.generated} holds {generated.dtype} {generated.shape}; expected uint8 clips "
                             f"N x {' x '.join(map(str, want))} (--num_frames, --image_size)")
        dataset, data = open_protocol_clips(args, protocol)
    except (FileNotFoundError, KeyError, OSError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    real, fake = GaussianStats(I3D_CLASSES, device=device), GaussianStats(I3D_CLASSES, device=device)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in tqdm(make_loader(Shard(dataset, rank, world_size), args.batch_size, args.num_workers, device),
                          desc="real clips", disable=rank != 0, dynamic_ncols=True):
            if batch["relpath"]:
                real.update(i3d_logits(i3d, clips_to_uint8(batch["image"], protocol["truncate"])))
        mine = np.arange(rank, len(generated), world_size)
        for i in tqdm(range(0, len(mine), args.batch_size), desc="generated clips", disable=rank != 0):
            fake.update(i3d_logits(i3d, torch.from_numpy(generated[mine[i:i + args.batch_size]])))
    real.all_reduce()
    fake.all_reduce()
    results = {"gfvd": frechet_distance(*real.mean_cov(), *fake.mean_cov()), "num_generated": len(generated),
               "num_real": int(real.count.item())}
    if world_size > 1:
        torch.distributed.destroy_process_group()
    if rank == 0:
        print_table(results)
        record = {**data, "protocol": args.protocol, **{k: v for k, v in protocol.items() if k != "split"},
                  "generated": str(Path(args.generated).resolve()), "image_size": args.image_size,
                  "num_frames": args.num_frames, "i3d_weights": str(i3d_file),
                  "fvd": "Frechet distance (float64) of I3D Kinetics-400 logits; generated clips as stored (uint8)",
                  "world_size": world_size, "seconds": time.perf_counter() - start}
        write_results({"metrics": results, "protocol": record}, args.output or
                      Path(args.generated).with_name(f"gfvd_{data['split']}_{args.protocol}.json"))
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    protocol = PROTOCOLS[args.protocol]
    device, rank, world_size = setup_device(args.device)
    if args.generated:
        return generation_fvd(args, protocol, device, rank, world_size)
    try:  # every missing file is reported, together, before the data pass
        weight_files = video_weight_files(args)
        tokenizer = load_tokenizer_from_args(args, device)
        if getattr(tokenizer, "token_layout", None) != "volume":
            raise ValueError(f"{args.ckpt_path} holds an image tokenizer; evaluate it with evaluation.py")
        dataset, data = open_protocol_clips(args, protocol)
        evaluator = VideoReconstructionMetrics(args.metrics, len(dataset), args.num_frames, tokenizer.quantize,
                                               weight_files, device, truncate=protocol["truncate"])
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        raise SystemExit(f"error: {err}\nWithout downloaded weights: --metrics psnr ssim usage") from None
    loader = make_loader(Shard(dataset, rank, world_size), args.batch_size, args.num_workers, device)
    skipped = torch.zeros((), dtype=torch.int64, device=device)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in tqdm(loader, desc="evaluating", disable=rank != 0, dynamic_ncols=True):
            skipped += batch["num_skipped"]
            if not batch["relpath"]:
                continue
            clips = batch["image"].to(device, non_blocking=True)
            quant, indices = tokenizer.encode(clips)
            evaluator.update(clips, tokenizer.decode(quant), indices, batch["index"])
    seconds = time.perf_counter() - start
    results = evaluator.compute()
    all_reduce_sum(skipped)
    if world_size > 1:
        torch.distributed.destroy_process_group()
    if rank != 0:
        return results
    info = tokenizer.checkpoint_info
    record = {
        **data, "protocol": args.protocol, **{k: v for k, v in protocol.items() if k != "split"}, "seed": args.seed,
        "num_skipped_unreadable": int(skipped), "image_size": args.image_size, "num_frames": args.num_frames,
        "clip": "centre frames (n // 2 - T // 2 ...)", "resize": "shorter side, OpenCV INTER_LINEAR arithmetic",
        "weights": "ema" if info["ema"] else "raw", "checkpoint": str(Path(args.ckpt_path).resolve()),
        "checkpoint_sha256": file_sha256(args.ckpt_path), "global_step": info["global_step"],
        "tokenizer": tokenizer.config, "token_shape": list(tokenizer.token_shape(args.num_frames, args.image_size,
                                                                                 args.image_size)),
        "fvd": "Frechet distance (float64) of I3D Kinetics-400 logits averaged over time; input all frames, uint8 "
               f"({'truncated' if protocol['truncate'] else 'rounded'}), bilinear 224x224, [-1, 1]",
        "i3d_weights": str(weight_files.get("rfvd")), "psnr_ssim_lpips": "per frame, mean over all frames",
        "device": str(device), "world_size": world_size, "batch_size": args.batch_size,
        "data_pass_seconds": seconds, "clips_per_second": results["num_clips"] / seconds, "torch": torch.__version__,
    }
    print_table(results)
    if "rfvd" in results and results["num_clips"] <= I3D_CLASSES:
        print(f"note: rFVD from {results['num_clips']} clips (<= 400 feature dimensions) is strongly biased")
    ckpt = Path(args.ckpt_path)
    output = args.output or ckpt.parent / "evaluation" / f"{ckpt.stem}_{'demo' if args.demo else 'video'}_" \
                                                         f"{data['split']}_{args.protocol}_{args.image_size}px.json"
    write_results({"metrics": results, "protocol": record}, output)
    return results

