"""CPU demo, video stage: the causal 3-D video tokenizer, then a class-conditional video GPT on its tokens.

`run(out_dir)` (taming.cli.demo calls it after the image stages) trains configs/video/demo_video.yaml on clips of camera
motion over the bundled photographs (taming.data.DemoVideos: pans, zooms, rotations, with a nearer layer moving
faster), measures its reconstructions (per-frame PSNR, SSIM, codebook usage on held-out clips), tokenizes 9-frame
clips of eight photographs (scripts/encode_tokens.py), trains configs/ar/demo_video_ar.yaml (a GPT with 3-D rotary
positions over 3 x 16 x 16 tokens) and samples every class (scripts/sample.py: GIFs). The samples are judged twice:
do they move (mean absolute frame-to-frame difference, against real clips) and do they show their photograph (a
classifier fitted on the colour histograms of real clips names their class). Writes <out_dir>/video_reconstructions.png and
<out_dir>/video_samples.png (per class: a real clip's frames, then samples). Alone:

    python scripts/demo_video.py --out_dir logs/demo_video_stage [--trainer.max_steps 50]
    python scripts/demo_video.py --tokenizer_ckpt models/demo_video/version_0/last.ckpt   # the generator part only
"""
from pathlib import Path

import argparse
import shutil
import time

import numpy as np
import torch
import torchvision
from PIL import Image, ImageSequence

from taming.cli.main import cli_main
from taming.config_files import SHIPPED_CONFIGS
from taming.cli import encode_tokens, sample
from taming.cli.demo_ar import PHOTOS, fit_classifier
from taming import load_tokenizer
from taming.callbacks import last_checkpoint
from taming.data import DemoVideos
from taming.metrics.video import VideoReconstructionMetrics

TOKENIZER_CONFIG = SHIPPED_CONFIGS / "video" / "demo_video.yaml"
AR_CONFIG = SHIPPED_CONFIGS / "ar" / "demo_video_ar.yaml"
SIZE, FRAMES = 32, 5
SAMPLES_PER_CLASS = 4
SAMPLING = {"cfg_scale": "2.0", "temperature": "0.7"}


def real_clips(split: str, length: int, seed: int) -> tuple:
    """(uint8 N x T x H x W x 3, labels N) of DemoVideos over the eight photographs."""
    data = DemoVideos(split, size=SIZE, frames=FRAMES, length=length, seed=seed, photos=PHOTOS)
    clips = [data.clip(i) for i in range(length)]
    return np.stack([c for c, _, _ in clips]), np.array([k for _, k, _ in clips])


def colour_histogram(clips: np.ndarray) -> np.ndarray:
    """N x 64: each clip's joint RGB histogram (4 levels per channel), normalised: the judge's features (colours
    name the photograph whatever the camera does; raw pixels would have to learn every camera position)."""
    q = (clips // 64).astype(np.int64)
    bins = (q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).reshape(len(clips), -1)
    hist = np.stack([np.bincount(row, minlength=64) for row in bins]).astype(np.float64)
    return hist / hist.sum(1, keepdims=True)


def motion(clips: np.ndarray) -> float:
    """Mean absolute difference of consecutive frames, in grey levels."""
    return float(np.abs(np.diff(clips.astype(np.float64), axis=1)).mean())


@torch.no_grad()
def evaluate_tokenizer(ckpt: Path) -> tuple:
    """Per-frame metrics of the EMA tokenizer on 16 held-out clips, and a grid: original frames above reconstructions."""
    tokenizer = load_tokenizer(ckpt)
    data = DemoVideos("val", size=SIZE, frames=FRAMES, length=16)
    clips = torch.stack([data[i]["image"] for i in range(len(data))])
    metrics = VideoReconstructionMetrics(("psnr", "ssim", "usage"), len(data), FRAMES, tokenizer.quantize, {}, "cpu")
    quant, indices = tokenizer.encode(clips)
    recon = tokenizer.decode(quant).clamp(-1, 1)
    metrics.update(clips, recon, indices, torch.arange(len(data)))
    rows = torch.cat([torch.stack([clips[i], recon[i]]) for i in range(4)]).transpose(1, 2)  # 8 x T x 3 x H x W
    grid = torchvision.utils.make_grid(rows.flatten(0, 1).add(1).div(2), nrow=FRAMES, padding=1, pad_value=1.0)
    return metrics.compute(), grid


def run(out_dir, tokenizer_args=(), ar_args=(), tokenizer_ckpt=None) -> dict:
    """The whole stage; with `tokenizer_ckpt` (a trained demo video tokenizer) its training is skipped."""
    start = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_ckpt is None:
        cli = cli_main(["fit", "--config", str(TOKENIZER_CONFIG), *tokenizer_args])
        tokenizer_ckpt = last_checkpoint(cli.trainer)
        print(f"\nvideo tokenizer: {cli.trainer.global_step} steps in {time.time() - start:.0f} s; checkpoint "
              f"{tokenizer_ckpt}")
    results, grid = evaluate_tokenizer(tokenizer_ckpt)
    recon_path = out_dir / "video_reconstructions.png"
    torchvision.utils.save_image(torch.nn.functional.interpolate(grid[None], scale_factor=3), recon_path)
    print(f"held-out clips ({results['num_clips']} x {FRAMES} frames, EMA weights): PSNR {results['psnr']:.2f} dB, SSIM "
          f"{results['ssim']:.3f}, {results['codebook_codes_used']} distinct codes; frames (originals above "
          f"reconstructions): {recon_path}")

    tokens = out_dir / "video_tokens"
    shutil.rmtree(tokens, ignore_errors=True)
    common = ["--ckpt_path", str(tokenizer_ckpt), "--demo", "--demo_photos", *PHOTOS, "--image_size", str(SIZE),
              "--num_frames", str(FRAMES), "--batch_size", "16", "--num_workers", "0", "--device", "cpu"]
    encode_tokens.main([*common, "--split", "train", "--num_images", "128", "--output_dir", str(tokens / "train")])
    encode_tokens.main([*common, "--split", "val", "--demo_seed", "1", "--num_images", "32", "--output_dir",
                        str(tokens / "val")])
    ar_start = time.time()
    ar = cli_main(["fit", "--config", str(AR_CONFIG), "--data.init_args.train.init_args.path", str(tokens / "train"),
                   "--data.init_args.validation.init_args.path", str(tokens / "val"), *ar_args])
    ar_ckpt = last_checkpoint(ar.trainer)
    ar_time = time.time() - ar_start
    classes = ar.model.generator.num_classes
    sample_dir = out_dir / "video_samples"
    sample.main(["--ckpt_path", str(ar_ckpt), "--output_dir", str(sample_dir), "--class_labels",
                 *map(str, range(classes)), "--samples_per_class", str(SAMPLES_PER_CLASS),
                 *[f"--{k}={v}" for k, v in SAMPLING.items()], "--batch_size", "32", "--device", "cpu"])
    samples = np.stack([np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(Image.open(
        sample_dir / f"class{c}_{j}.gif"))]) for c in range(classes) for j in range(SAMPLES_PER_CLASS)])
    sample_labels = np.repeat(np.arange(classes), SAMPLES_PER_CLASS)

    train_clips, train_labels = real_clips("train", 256, 0)
    held_out, held_out_labels = real_clips("train", 64, 7)  # other clips (camera paths) than the classifier's
    predict = fit_classifier(colour_histogram(train_clips), train_labels, classes)
    real_accuracy = float((predict(colour_histogram(held_out)) == held_out_labels).mean())
    sample_accuracy = float((predict(colour_histogram(samples)) == sample_labels).mean())
    real_motion, sample_motion = motion(held_out), motion(samples)

    rows = []
    for c in range(classes):
        rows += [held_out[held_out_labels == c][0], samples[c * SAMPLES_PER_CLASS], samples[c * SAMPLES_PER_CLASS + 1]]
    figure = out_dir / "video_samples.png"
    frames = torch.from_numpy(np.stack(rows)).flatten(0, 1).permute(0, 3, 1, 2).float() / 255
    torchvision.utils.save_image(torchvision.utils.make_grid(frames, nrow=FRAMES, padding=1, pad_value=1.0), figure)
    print(f"\nvideo AR: {ar.trainer.global_step} steps in {ar_time:.0f} s; checkpoint {ar_ckpt}")
    print(f"video samples move: mean |frame difference| {sample_motion:.1f} grey levels (real clips: {real_motion:.1f})")
    print(f"video samples named as their photograph by a classifier fitted on real clips: {100 * sample_accuracy:.0f}% "
          f"of {len(samples)} (held-out real clips: {100 * real_accuracy:.0f}%)")
    print(f"video samples (per photograph: a real clip's frames, then two samples): {figure}; GIFs in {sample_dir}")
    print(f"video stage time {time.time() - start:.0f} s")
    return {"tokenizer": tokenizer_ckpt, "generator": ar_ckpt, "psnr": results["psnr"], "ssim": results["ssim"],
            "sample_motion": sample_motion, "real_motion": real_motion, "sample_accuracy": sample_accuracy,
            "real_accuracy": real_accuracy, "samples": figure, "reconstructions": recon_path}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default="logs/demo_video_stage", help="where token folders and figures go")
    parser.add_argument("--tokenizer_ckpt", default=None, help="a trained demo video tokenizer: skip its training")
    args, extra = parser.parse_known_args(argv)
    run(args.out_dir, extra, tokenizer_ckpt=args.tokenizer_ckpt)

