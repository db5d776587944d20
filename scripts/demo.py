"""CPU demo (`make demo`): train configs/demo.yaml on the bundled photographs, evaluate, plot.

Offline by design: the demo config has no perceptual (LPIPS) term and the evaluation uses the metrics that
need no downloaded weights (per-image PSNR, SSIM, codebook usage). Writes into the run's log directory:
reconstructions.png (validation originals above their EMA reconstructions) and loss_curve.png.
Extra arguments go to the training CLI, e.g. `python scripts/demo.py --trainer.max_steps 50`.
"""
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from main import cli_main  # noqa: E402
from taming import load_tokenizer  # noqa: E402
from taming.callbacks import make_grid  # noqa: E402
from taming.data import DemoImages  # noqa: E402
from taming.metrics.evaluator import ReconstructionMetrics  # noqa: E402


def read_scalars(log_dir: Path, tags) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    found = set(events.Tags()["scalars"])
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in tags if tag in found}


def plot_curves(scalars: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for tag in ("train/reconstruct_loss", "train/total_loss"):
        if tag in scalars:
            steps, values = zip(*scalars[tag])
            line, = axes[0].plot(steps, values, alpha=0.3)
            smooth = [sum(values[max(0, i - 4):i + 1]) / len(values[max(0, i - 4):i + 1]) for i in range(len(values))]
            axes[0].plot(steps, smooth, color=line.get_color(), label=f"{tag} (5-point mean)")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    if "val/psnr" in scalars:
        steps, values = zip(*scalars["val/psnr"])
        axes[1].plot(steps, values, "o-", label="val/psnr (EMA weights)")
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("PSNR (dB)")
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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


def main(argv) -> None:
    import torchvision

    start = time.time()
    cli = cli_main(["fit", "--config", str(REPO / "configs" / "demo.yaml"), *argv])
    trainer = cli.trainer
    log_dir = Path(trainer.logger.log_dir).resolve()  # printed in full: the config writes relative to the cwd
    ckpt = Path(trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path)
    train_time = time.time() - start
    results, grid = evaluate(ckpt, cli.datamodule.datasets["validation"].size)
    grid_path, curve_path = log_dir / "reconstructions.png", log_dir / "loss_curve.png"
    torchvision.utils.save_image(torch.nn.functional.interpolate(grid[None], scale_factor=4, mode="nearest"), grid_path)
    plot_curves(read_scalars(log_dir, ["train/reconstruct_loss", "train/total_loss", "val/psnr"]), curve_path)
    print(f"\ntrained {trainer.global_step} steps in {train_time:.0f} s; checkpoint: {ckpt}")
    print(f"validation ({results['num_images']} images, EMA weights): PSNR {results['psnr']:.2f} dB, "
          f"SSIM {results['ssim']:.3f}, {results['codebook_codes_used']} distinct codes "
          f"({100 * results['codebook_usage']:.1f}% of the codebook), perplexity {results['codebook_perplexity']:.0f}")
    print(f"reconstruction grid (originals above reconstructions): {grid_path}")
    print(f"loss curve: {curve_path}")
    print(f"total demo time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
