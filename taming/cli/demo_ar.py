"""CPU demo, Stage II: class-conditional generation with a tiny AR model on the demo tokenizer's tokens.

`run(tokenizer_ckpt, out_dir)` (taming.cli.demo calls it after training the demo tokenizer) tokenizes 16 px views
of eight bundled photographs (taming.data.DemoImages; the class is the photograph, each view shows the whole
photograph with its position jittered; 4 views per photograph, in LlamaGen's ten crops) with
scripts/encode_tokens.py into <out_dir>/ar_tokens/, trains configs/ar/demo_ar.yaml (checkpoints in
models/demo_ar/version_N/), samples every class and judges the samples with a classifier fitted on real views: is
each sample recognisably its photograph? The validation loss is measured on other views of the same photographs;
with so few training views the model memorises them and that loss rises after the first few hundred steps: the demo
shows that the whole chain (tokens, training, KV-cache sampling with guidance, decoding) works, not generalisation. Writes <out_dir>/ar_samples.png (a
column per class: a real view on top, samples below, with the classifier's accuracy) and <out_dir>/ar_loss_curve.png.
Alone:

    python scripts/demo_ar.py --tokenizer_ckpt models/demo/version_0/last.ckpt --out_dir logs/demo_ar [--trainer.max_steps 50]
"""
from pathlib import Path

import argparse
import math
import shutil
import time

import numpy as np
import torch
from PIL import Image

from taming.cli.main import cli_main
from taming.config_files import SHIPPED_CONFIGS
from taming.cli import encode_tokens, sample
from taming.cli.plots import labelled_grid, plot_curves, read_scalars
from taming.callbacks import last_checkpoint
from taming.data import DemoImages

CONFIG = SHIPPED_CONFIGS / "ar" / "demo_ar.yaml"
CURVES = ("train/loss", "val/loss")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "coins", "camera", "retina", "motorcycle")  # distinct at 16 px
WHOLE = ["64"]  # region side 64 x 16 px, clipped to the photograph: its whole shorter side
SAMPLES_PER_CLASS = 8
SAMPLING = {"cfg_scale": "2.0", "temperature": "0.5"}  # (few training views: milder guidance, a cooler softmax)
TRAIN_VIEWS = 32  # jittered views (4 per photograph), each in LlamaGen's ten crops: 320 training sequences


def views(seed: int, size: int, length: int) -> tuple:
    """Real views of the photographs as the generator sees them: (uint8 N x H x W x 3, labels N)."""
    data = DemoImages("train", size=size, length=length, scales=[float(s) for s in WHOLE], seed=seed, photos=PHOTOS)
    images = torch.stack([data[i]["image"] for i in range(length)])
    return to_uint8(images), np.array([data[i]["class_label"] for i in range(length)])


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return images.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()


def fit_classifier(images: np.ndarray, labels: np.ndarray, num_classes: int, weight_decay: float = 1e-2):
    """Multinomial logistic regression on standardised pixels (L2-regularised, full-batch L-BFGS): the judge of
    which photograph an image shows. Returns predict(uint8 N x H x W x 3) -> labels N."""
    x = torch.from_numpy(images.reshape(len(images), -1)).double()
    mean, std = x.mean(0), x.std(0) + 1.0
    x = (x - mean) / std
    y = torch.from_numpy(labels).long()
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)

    def predict(batch: np.ndarray) -> np.ndarray:
        z = (torch.from_numpy(batch.reshape(len(batch), -1)).double() - mean) / std
        return (z @ weight + bias).argmax(1).numpy()

    return predict


def run(tokenizer_ckpt, out_dir, image_size: int = 16, extra_args=()) -> dict:
    """Tokenize, train, sample, judge, plot (see the module docstring); returns paths, losses and accuracies."""
    start = time.time()
    out_dir = Path(out_dir)
    tokens = out_dir / "ar_tokens"
    shutil.rmtree(tokens, ignore_errors=True)  # made by an earlier demo tokenizer: encode_tokens would refuse it
    data = ["--demo", "--split", "train", "--demo_photos", *PHOTOS, "--demo_scales", *WHOLE]
    for split, options in (("train", ["--ten_crop", "--num_images", str(TRAIN_VIEWS)]),
                           ("val", ["--demo_seed", "1", "--num_images", "64"])):
        encode_tokens.main(["--ckpt_path", str(tokenizer_ckpt), *data, "--image_size", str(image_size),
                            "--output_dir", str(tokens / split), "--batch_size", "64", "--num_workers", "0",
                            "--device", "cpu", *options])
    cli = cli_main(["fit", "--config", str(CONFIG), "--data.init_args.train.init_args.path", str(tokens / "train"),
                    "--data.init_args.validation.init_args.path", str(tokens / "val"), *extra_args])
    trainer = cli.trainer
    ckpt = last_checkpoint(trainer)
    train_time = time.time() - start
    num_classes = cli.model.generator.num_classes
    sample_dir = out_dir / "ar_samples"
    sample.main(["--ckpt_path", str(ckpt), "--output_dir", str(sample_dir), "--class_labels",
                 *map(str, range(num_classes)), "--samples_per_class", str(SAMPLES_PER_CLASS),
                 *[f"--{k}={v}" for k, v in SAMPLING.items()], "--batch_size", "64", "--device", "cpu"])
    samples = np.stack([np.asarray(Image.open(sample_dir / f"class{c}_{j}.png").convert("RGB"))
                        for c in range(num_classes) for j in range(SAMPLES_PER_CLASS)])
    sample_labels = np.repeat(np.arange(num_classes), SAMPLES_PER_CLASS)

    # the judge: fitted on the training views, checked on held-out real views, then applied to the samples
    train_images, train_labels = views(0, image_size, 512)
    held_out, held_out_labels = views(7, image_size, 128)
    predict = fit_classifier(train_images, train_labels, num_classes)
    real_accuracy = float((predict(held_out) == held_out_labels).mean())
    sample_accuracy = float((predict(samples) == sample_labels).mean())

    figure = out_dir / "ar_samples.png"
    real_row = [held_out[held_out_labels == c][0] for c in range(num_classes)]
    sample_rows = [[samples[c * SAMPLES_PER_CLASS + j] for c in range(num_classes)] for j in range(4)]
    labelled_grid([real_row, *sample_rows], ["real", *[f"sample {j + 1}" for j in range(4)]], list(PHOTOS), figure,
                  f"class-conditional AR samples (guidance {SAMPLING['cfg_scale']}, temperature "
                  f"{SAMPLING['temperature']}); a classifier fitted on real views names "
                  f"{100 * sample_accuracy:.0f}% of {len(samples)} samples' class (real held-out: "
                  f"{100 * real_accuracy:.0f}%)")
    scalars = read_scalars(Path(trainer.logger.log_dir), CURVES)
    curve = out_dir / "ar_loss_curve.png"
    plot_curves(scalars, curve, ["train/loss"], ["val/loss"], "cross-entropy, pre + post sub-token (nats)")
    val = [value for _, value in scalars.get("val/loss", [])]
    print(f"\nAR: tokenized and trained {trainer.global_step} steps in {train_time:.0f} s; checkpoint: {ckpt}")
    if val:
        print(f"AR validation loss {val[0]:.3f} -> {val[-1]:.3f} nats (a uniform guess: "
              f"{math.log(cli.model.generator.codebook_size):.3f})")
    print(f"AR samples recognised as their class by a classifier fitted on real views: {100 * sample_accuracy:.0f}% "
          f"of {len(samples)} (the classifier on held-out real views: {100 * real_accuracy:.0f}%)")
    print(f"AR samples (a column per photograph, a real view on top): {figure}")
    print(f"AR loss curve: {curve}")
    print(f"AR demo time {time.time() - start:.0f} s")
    return {"checkpoint": ckpt, "samples": figure, "loss_curve": curve, "val_loss": val,
            "sample_accuracy": sample_accuracy, "real_accuracy": real_accuracy}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer_ckpt", required=True,
                        help="the demo tokenizer (scripts/demo.py: models/demo/version_N/last.ckpt)")
    parser.add_argument("--out_dir", required=True, help="where the token folders and figures go")
    parser.add_argument("--image_size", type=int, default=16,
                        help="view size (configs/ar/demo_ar.yaml: 16 -> 8x8 tokens)")
    args, extra = parser.parse_known_args(argv)
    run(args.tokenizer_ckpt, args.out_dir, args.image_size, extra)

