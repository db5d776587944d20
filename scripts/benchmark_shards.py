"""Reading throughput per core: tar shards (taming.data.ImageShards) against the image-folder reader
(taming.data.ImageFolder), the same JPEGs (ImageNet-like 500 x 375 crops of the bundled photographs, quality 90),
decoded, resized (shorter side) and randomly cropped to --size in one process, in the training order of each.

    python scripts/benchmark_shards.py --num_images 2000 --size 256
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from taming.data import ImageFolder, ImageShards, ResumableSampler, write_shards
from taming.data.demo import PHOTOS, load_photo


def make_jpegs(folder: Path, n: int) -> list:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    photos = [load_photo(name) for name in PHOTOS]
    items = []
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w)))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        image = Image.fromarray(photo[top:top + side, left:left + side]).resize((500, 375), Image.BICUBIC)
        path = folder / f"{i:06d}.jpg"
        image.save(path, quality=90)
        items.append((str(path), i % len(photos)))
    return items


def images_per_second(dataset, seconds_min: float = 5.0) -> float:
    keys = list(ResumableSampler(dataset, seed=0))
    start, done = time.perf_counter(), 0
    for key in keys:
        dataset[key]
        done += 1
        if time.perf_counter() - start > seconds_min and done >= 200:
            break
    return done / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_images", type=int, default=2000)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--samples_per_shard", type=int, default=500)
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        items = make_jpegs(Path(tmp) / "images", args.num_images)
        start = time.perf_counter()
        write_shards(items, Path(tmp) / "shards", args.samples_per_shard)
        written = time.perf_counter() - start
        folder = ImageFolder(str(Path(tmp) / "images"), size=args.size, random_crop=True,
                             index_cache_dir=str(Path(tmp) / "index"))
        shards = ImageShards(str(Path(tmp) / "shards"), size=args.size, random_crop=True)
        print(f"{args.num_images} JPEGs 500x375 -> {args.size} px random crops, one process, one thread")
        print(f"writing shards: {args.num_images / written:.0f} images/s")
        print(f"image folder:   {images_per_second(folder):.0f} images/s")
        print(f"tar shards:     {images_per_second(shards):.0f} images/s")


if __name__ == "__main__":
    main()
