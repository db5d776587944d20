r"""Convert images into WebDataset-style tar shards (read back by taming.data.ImageShards); rerun to resume.

    python scripts/write_shards.py --data_root data/imagenet --split train --output_dir data/shards/in1k_train
    python scripts/write_shards.py --data_root /photos --output_dir data/shards/photos          # any image folder
    python scripts/write_shards.py --image_list list.txt --captions captions.txt --output_dir data/shards/mine

Each image is stored byte for byte with its label (`.cls`: the ImageNet class index, or the list's label), its
caption (`.txt`, line i of --captions for image i) and {"relpath", "width", "height"} (`.json`); unreadable images
are skipped and counted. <output_dir>/shards.json lists the shards and their sample counts.
"""
from pathlib import Path

import argparse
import os

from taming.cli.common import HelpFormatter
from taming.data.datasets import ImageFolder, ImageList, ImageNet
from taming.data.shards import write_shards


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data_root", help="ImageNet-style root (<root>/<split>/<wnid>/*) or any folder of images")
    source.add_argument("--image_list", help="text file: `path` or `path label` per line")
    parser.add_argument("--split", default="train", help="with an ImageNet-style --data_root: the split folder")
    parser.add_argument("--captions", default=None, help="text file with one caption per image, in the order listed")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--samples_per_shard", type=int, default=1000)
    parser.add_argument("--prefix", default="shard", help="shard file names: <prefix>-NNNNNN.tar")
    args = parser.parse_args(argv)
    if args.samples_per_shard < 1:
        parser.error("--samples_per_shard must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.image_list:
        dataset = ImageList(args.image_list)
    else:
        root = Path(args.data_root).expanduser()
        dataset = ImageNet(str(root), split=args.split) if (root / args.split).is_dir() else ImageFolder(str(root))
    items = [(os.path.join(dataset.root, p.decode("utf-8", "surrogateescape")), int(label))
             for p, label in zip(dataset.relpaths, dataset.labels)]
    captions = None
    if args.captions:
        captions = Path(args.captions).read_text(encoding="utf-8").splitlines()
        if len(captions) != len(items):
            raise SystemExit(f"error: {args.captions} has {len(captions)} lines for {len(items)} images")
    manifest = write_shards(items, args.output_dir, args.samples_per_shard, args.prefix, captions)
    print(f"{manifest['samples']} images in {len(manifest['shards'])} shards under {args.output_dir}; "
          f"{manifest['skipped']} unreadable skipped")
    return manifest

