"""CPU demo, Stage II: class-conditional generation with a tiny AR model on the demo tokenizer's tokens.

`run(tokenizer_ckpt, out_dir)` (scripts/demo.py calls it after training the demo tokenizer) tokenizes the bundled
photographs (taming.data.DemoImages, class = photograph) with scripts/encode_tokens.py into <out_dir>/ar_tokens/,
trains configs/ar/demo_ar.yaml (logs and checkpoints as that config says, relative to the working directory), then
writes <out_dir>/ar_samples.png (4 samples of every class, a column per class, 4x enlarged; the PNGs themselves in
<out_dir>/ar_samples/) and <out_dir>/ar_loss_curve.png (training and validation loss). The crops are 16 px (8x8
tokens): the demo tokenizer is convolutional, and 4x fewer tokens than at its 32 px make each image ~6x cheaper
to train on. Alone:

    python scripts/demo_ar.py --tokenizer_ckpt models/demo/last.ckpt --out_dir logs/demo_ar [--trainer.max_steps 50]
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

from PIL import Image  # noqa: E402

from main import cli_main  # noqa: E402
from scripts import encode_tokens, sample  # noqa: E402
from taming.callbacks import last_checkpoint  # noqa: E402

CONFIG = REPO / "configs" / "ar" / "demo_ar.yaml"
CURVES = ("train/loss", "val/loss")


def run(tokenizer_ckpt, out_dir, image_size: int = 16, extra_args=()) -> dict:
    """Tokenize, train, sample, plot (see the module docstring); returns the paths and the validation losses."""
    from scripts.demo import plot_curves, read_scalars

    start = time.time()
    out_dir = Path(out_dir)
    tokens = out_dir / "ar_tokens"
    shutil.rmtree(tokens, ignore_errors=True)  # made by the previous demo tokenizer: encode_tokens would refuse it
    for split, views in (("train", ["--ten_crop"]), ("val", [])):
        encode_tokens.main(["--ckpt_path", str(tokenizer_ckpt), "--demo", "--split", split,
                            "--image_size", str(image_size), "--output_dir", str(tokens / split), "--batch_size", "64",
                            "--num_workers", "0", "--device", "cpu", *views])
    cli = cli_main(["fit", "--config", str(CONFIG), "--data.init_args.train.init_args.path", str(tokens / "train"),
                    "--data.init_args.validation.init_args.path", str(tokens / "val"), *extra_args])
    trainer = cli.trainer
    ckpt = last_checkpoint(trainer)
    train_time = time.time() - start
    classes = [str(c) for c in range(cli.model.generator.num_classes)]
    grid = sample.main(["--ckpt_path", str(ckpt), "--output_dir", str(out_dir / "ar_samples"),
                        "--class_labels", *classes, "--samples_per_class", "4", "--cfg_scale", "3.0",
                        "--batch_size", "64", "--device", "cpu"])
    with Image.open(grid) as small:  # 16 px samples: shown 4x larger
        small.resize((small.width * 4, small.height * 4), Image.NEAREST).save(out_dir / "ar_samples.png")
    scalars = read_scalars(Path(trainer.logger.log_dir), CURVES)
    curve = out_dir / "ar_loss_curve.png"
    plot_curves(scalars, curve, ["train/loss"], ["val/loss"], "cross-entropy, pre + post sub-token (nats)")
    val = [value for _, value in scalars.get("val/loss", [])]
    print(f"\nAR: tokenized and trained {trainer.global_step} steps in {train_time:.0f} s; checkpoint: {ckpt}")
    if val:
        print(f"AR validation loss {val[0]:.3f} -> {val[-1]:.3f} nats (a uniform guess: "
              f"{math.log(cli.model.generator.codebook_size):.3f})")
    print(f"AR samples (a column per photograph class, guidance 3.0): {out_dir / 'ar_samples.png'}")
    print(f"AR loss curve: {curve}")
    print(f"AR demo time {time.time() - start:.0f} s")
    return {"checkpoint": ckpt, "samples": out_dir / "ar_samples.png", "loss_curve": curve, "val_loss": val}


def main(argv) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer_ckpt", required=True,
                        help="the demo tokenizer (scripts/demo.py: models/demo/last.ckpt)")
    parser.add_argument("--out_dir", required=True, help="where the token folders and figures go")
    parser.add_argument("--image_size", type=int, default=16,
                        help="crop size (configs/ar/demo_ar.yaml: 16 -> 8x8 tokens)")
    args, extra = parser.parse_known_args(argv)
    run(args.tokenizer_ckpt, args.out_dir, args.image_size, extra)


if __name__ == "__main__":
    main(sys.argv[1:])
