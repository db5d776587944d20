"""CPU demo (`make demo`): a tokenizer, then a class-conditional AR model on its tokens, on the bundled photographs.

Stage I trains configs/demo.yaml (a small LFQ tokenizer), evaluates it and plots; Stage II (scripts/demo_ar.py)
tokenizes the photographs with it, trains configs/ar/demo_ar.yaml and samples every class. Offline by design: no
perceptual (LPIPS) term, and only the metrics that need no downloaded weights (per-image PSNR, SSIM, codebook
usage). Writes into the tokenizer run's log directory: reconstructions.png (validation originals above their EMA
reconstructions), loss_curve.png (the GAN's start marked), ar_samples.png (labelled, judged by a classifier fitted on
real views) and ar_loss_curve.png. Every run checkpoints into a folder of its own (models/demo/version_N), so the
token folders and AR checkpoints of an earlier run keep pointing at the weights that made them.
Then the video stage (scripts/demo_video.py): the causal 3-D video tokenizer on camera-motion clips of the photographs
and a class-conditional video GPT on its tokens (video_reconstructions.png, video_samples.png, GIFs).
Extra arguments go to the tokenizer's training CLI, e.g. `python scripts/demo.py --trainer.max_steps 50`;
`--skip_ar` stops after Stage I, `--skip_video` skips the video stage.
"""
import sys
import time
from pathlib import Path

import torch

from taming.cli.main import cli_main
from taming.config_files import SHIPPED_CONFIGS
from taming.cli import demo_ar, demo_video
from taming.cli.plots import plot_curves, read_scalars
from taming import load_tokenizer
from taming.callbacks import last_checkpoint, make_grid
from taming.data import DemoImages
from taming.metrics.evaluator import ReconstructionMetrics


@torch.no_grad()
def evaluate(ckpt: Path, size: int) -> tuple:
    tokenizer = load_tokenizer(ckpt)  # EMA weights, architecture from the checkpoint
    data = DemoImages("val", size=size)
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    metrics = ReconstructionMetrics(("psnr", "ssim", "usage"), len(data), tokenizer.quantize, weight_files={},
                                    device="cpu")
    quant, indices = tokenizer.encode(images)
    recon = tokenizer.decode(quant).clamp(-1, 1)
    metrics.update(images, recon, indices, torch.arange(len(data)))
    return metrics.compute(), make_grid(images[:8], recon[:8])


def main(argv=None) -> None:
    import torchvision

    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(__doc__ + "\nThe training flags: python main.py fit --config configs/demo.yaml --help")
        return
    skip_ar, skip_video = "--skip_ar" in argv, "--skip_video" in argv
    argv = [a for a in argv if a not in ("--skip_ar", "--skip_video")]
    start = time.time()
    cli = cli_main(["fit", "--config", str(SHIPPED_CONFIGS / "demo.yaml"), *argv])
    trainer = cli.trainer
    log_dir = Path(trainer.logger.log_dir).resolve()  # printed in full: the config writes relative to the cwd
    ckpt = last_checkpoint(trainer)
    train_time = time.time() - start
    results, grid = evaluate(ckpt, cli.datamodule.datasets["validation"].size)
    grid_path, curve_path = log_dir / "reconstructions.png", log_dir / "loss_curve.png"
    torchvision.utils.save_image(torch.nn.functional.interpolate(grid[None], scale_factor=4, mode="nearest"), grid_path)
    scalars = read_scalars(log_dir, ["train/reconstruct_loss", "train/total_loss", "val_ema/psnr"])
    gan_start = getattr(cli.model.loss, "disc_start", None)
    marks = {gan_start: f"GAN loss starts (step {gan_start})"} if gan_start else {}
    plot_curves(scalars, curve_path, ["train/reconstruct_loss", "train/total_loss"], ["val_ema/psnr"], "loss",
                "PSNR (dB), EMA weights", marks=marks)
    print(f"\ntrained {trainer.global_step} steps in {train_time:.0f} s; checkpoint: {ckpt}")
    print(f"validation ({results['num_images']} images, EMA weights): PSNR {results['psnr']:.2f} dB, "
          f"SSIM {results['ssim']:.3f}, {results['codebook_codes_used']} distinct codes "
          f"({100 * results['codebook_usage']:.1f}% of the codebook), perplexity {results['codebook_perplexity']:.0f}")
    print(f"reconstruction grid (originals above reconstructions): {grid_path}")
    print(f"loss curve: {curve_path}")
    if not skip_ar:
        demo_ar.run(ckpt, log_dir)
        if not skip_video:
            demo_video.run(log_dir)
    print(f"total demo time {time.time() - start:.0f} s")

