"""Throughput of each evaluation metric (images/s, on the device) next to JPEG decoding (images/s per CPU core).

    python scripts/benchmark_eval.py --image_size 256 --batch_size 64                # weights from the hub cache
    python scripts/benchmark_eval.py --random_weights --device cpu --image_size 128 --batch_size 8 --steps 2

Each metric runs alone through `ReconstructionMetrics.update` (real + reconstruction, as in evaluation.py).
--random_weights writes random weights in the real formats to a temporary torch hub dir (timing only: the
values are meaningless). The decode column is PIL decoding + resize + center crop of a 500 x 375 JPEG
(ImageNet's typical size) on one core: evaluation.py is input-bound when the sum of the metric costs per
image is below 1 / (decode rate x --num_workers).
"""
from pathlib import Path

import argparse
import io
import tempfile
import time

import torch
from PIL import Image

from taming.data.loading import ImageTransform, load_rgb
from taming.metrics.evaluator import METRICS, ReconstructionMetrics, required_weight_files
from taming.metrics.fid import INCEPTION_FILES


def write_random_weights(hub: Path) -> None:
    """Random weights in the real formats under <hub>/checkpoints (timing and tests; the values are meaningless):
    Inception for pytorch-fid and torch-fidelity (the same state-dict layout; BatchNorm statistics calibrated on
    noise so that features are O(1)), torchvision VGG16 and AlexNet. Seed torch first for reproducible files."""
    import torchvision

    (hub / "checkpoints").mkdir(parents=True, exist_ok=True)
    inception = torchvision.models.Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    for module in inception.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running stats = this batch's stats
    with torch.no_grad():
        inception.train()(torch.rand(4, 3, 299, 299) * 2 - 1)
    torch.save(inception.state_dict(), hub / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth")
    torch.save(inception.state_dict(), hub / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth")
    torch.save(torchvision.models.vgg16().state_dict(), hub / "checkpoints" / "vgg16-397923af.pth")
    torch.save(torchvision.models.alexnet().state_dict(), hub / "checkpoints" / "alexnet-owt-7be5be79.pth")


def timed(fn, steps: int, device: torch.device) -> float:
    fn()  # warm-up (cuDNN autotuning, lazy init)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def decode_rate(image_size: int, repeats: int = 20) -> float:
    import skimage.data

    buffer = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).resize((500, 375)).save(buffer, format="JPEG", quality=90)
    transform = ImageTransform(image_size, random_crop=False)
    start = time.perf_counter()
    for _ in range(repeats):
        buffer.seek(0)
        transform(load_rgb(buffer))
    return repeats / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS))
    parser.add_argument("--fid_extractor", choices=sorted(INCEPTION_FILES), default="pytorch-fid")
    parser.add_argument("--random_weights", action="store_true", help="time with random weights (no files needed)")
    parser.add_argument("--no_tf32", action="store_true", help="exact float32 convolutions (as evaluation.py --no_tf32)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.no_tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    if args.random_weights:
        with tempfile.TemporaryDirectory(prefix="benchmark_eval_hub_") as hub:  # ~0.7 GB, removed afterwards
            write_random_weights(Path(hub))
            torch.hub.set_dir(hub)
            benchmark(args, device)
    else:
        benchmark(args, device)


def benchmark(args, device: torch.device) -> None:
    weights = required_weight_files(args.metrics, args.fid_extractor, {})
    gen = torch.Generator().manual_seed(0)
    b, s = args.batch_size, args.image_size
    images = (torch.rand(b, 3, s, s, generator=gen) * 2 - 1).to(device)
    recon = (images + 0.1 * torch.randn(b, 3, s, s, generator=gen).to(device)).clamp(-1, 1)
    indices = torch.randint(0, 2**18, (b, s // 16, s // 16), generator=gen).to(device)
    positions = torch.arange(b, device=device)
    print(f"device {device}, batch {b}, {s} px, TF32 convolutions {torch.backends.cudnn.allow_tf32 and device.type == 'cuda'}")
    total = 0.0
    for metric in args.metrics:
        evaluator = ReconstructionMetrics([metric], b, 18, "msb", weights, device, args.fid_extractor)
        seconds = timed(lambda: evaluator.update(images, recon, indices, positions), args.steps, device)
        total += seconds
        print(f"{metric:<12} {b / seconds:10.1f} images/s")
    print(f"{'all metrics':<12} {b / total:10.1f} images/s")
    print(f"{'JPEG decode':<12} {decode_rate(s):10.1f} images/s per CPU core (500x375 JPEG -> {s} px)")


if __name__ == "__main__":
    main()
