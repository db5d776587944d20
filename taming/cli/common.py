"""Command-line plumbing shared by the commands of taming.cli: tokenizer and data flags, device / torchrun setup,
sharding a dataset across ranks, PNG and GIF output. Imports no Lightning (the inference-side commands use it)."""

import argparse
import os
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from taming.data import DemoImages, DemoVideos, ImageFolder, ImageNet, ImageShards, VideoClips, collate_skip_none
from taming.tokenizer import load_tokenizer


def run_cli(main, on_interrupt: str = "rerun the same command to start again") -> None:
    """Run a tool's main(); Ctrl-C ends it with one line saying how to go on, instead of a traceback."""
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit(f"interrupted: {on_interrupt}") from None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help keeps the description's layout and shows each option's default, unless the help text already states
    it or there is none to show (None, off flags)."""

    def _get_help_string(self, action):
        if "default" in (action.help or "") or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


# What `open_dataset(args, size)` does to every image (recorded in evaluation and token protocols).
CROP = "shorter side resized to image_size (bilinear, antialiased), center crop image_size x image_size"


def add_tokenizer_args(parser: argparse.ArgumentParser, ckpt_required: bool = True) -> None:
    group = parser.add_argument_group("tokenizer")
    group.add_argument("--ckpt_path", required=ckpt_required,
                       help="tokenizer checkpoint: this project's, or a released Open-MAGVIT2, LlamaGen or GigaTok one")
    group.add_argument("--config_file", default=None,
                       help="the architecture, needed for released checkpoints (ours store it): a YAML (this project's, "
                            "a released Open-MAGVIT2 or GigaTok one, or LlamaGen ModelArgs fields + ch) or a LlamaGen "
                            "preset name (VQ-16, VQ-8)")
    group.add_argument("--no_ema", action="store_true", help="use the raw weights even when EMA shadows are present")
    group.add_argument("--bit_order", choices=("msb", "lsb"), default=None,
                       help="index bit order override (default: from the checkpoint, else v1 msb / v2 lsb)")
    group.add_argument("--allow_unsafe_pickle", action="store_true",
                       help="load checkpoints that torch.load(weights_only=True) refuses (only for files you trust)")
    add_trust_arg(group)


def add_trust_arg(group) -> None:
    group.add_argument("--trust_class_path", action="append", default=[], metavar="PKG.MODULE.CLASS",
                       help="a class of your own that a checkpoint, manifest or config may name (repeatable); "
                            "without it, files may name only this package's components")


def add_data_args(parser: argparse.ArgumentParser, default_split: str = "val") -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data_root", default=None,
                       help="ImageNet-style root (<root>/<split>/<wnid>/*.JPEG) or any folder of images")
    group.add_argument("--shards", nargs="+", default=None, metavar="PATTERN",
                       help="WebDataset-style tar shards instead of --data_root: paths, folders, globs or brace "
                            "patterns (data/shards/val-{000000..000049}.tar)")
    group.add_argument("--split", default=default_split, help="split folder under an ImageNet-style --data_root")
    group.add_argument("--demo", action="store_true",
                       help="use the bundled scikit-image photographs (DemoImages, --split train|val) instead of --data_root")
    group.add_argument("--demo_photos", nargs="+", default=None, metavar="NAME",
                       help="with --demo: these photographs only (taming.data.demo.PHOTOS; the class is the position)")
    group.add_argument("--demo_scales", type=float, nargs="+", default=(1.0, 2.0, 4.0),
                       help="with --demo: region sides as multiples of the image size (a large value: the whole photo)")
    group.add_argument("--demo_seed", type=int, default=0, help="with --demo: seed of the crop positions")
    group.add_argument("--num_images", type=int, default=None, help="first N images of the dataset (default: all)")
    group.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers per process")
    group.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available; torchrun: cuda:LOCAL_RANK)")


def load_tokenizer_from_args(args, device) -> torch.nn.Module:
    tokenizer = load_tokenizer(args.ckpt_path, config=args.config_file, ema=False if args.no_ema else None,
                               bit_order=args.bit_order, allow_unsafe_pickle=args.allow_unsafe_pickle,
                               trust_class_paths=args.trust_class_path)
    return tokenizer.to(device)


def open_dataset(args, size: Optional[int], transform=None) -> tuple:
    """(dataset, description) for the data flags. `size`: resize shorter side + center crop (`transform`
    replaces that when given, e.g. for native resolution). The description names the data for protocols.
    --data_root is ImageNet-style when <root>/<split> is a folder, else a folder of images; a root holding
    train/val/validation/test folders but not <split> is an error (a mistyped split would read them all)."""
    if args.demo:
        dataset = DemoImages(split=args.split, size=size or 64, scales=args.demo_scales, seed=args.demo_seed,
                             photos=args.demo_photos)
        description = {"dataset": "demo", "split": args.split, "photos": dataset.names,
                       "scales": list(args.demo_scales), "seed": args.demo_seed}
    elif getattr(args, "shards", None):
        if args.data_root is not None:
            raise SystemExit("error: give either --data_root or --shards, not both")
        dataset = ImageShards(args.shards, size=size or 256)
        description = {"dataset": "shards", "shards": list(args.shards), "num_shards": len(dataset.paths),
                       "shard_counts": dataset.counts}
    elif args.data_root is None:
        raise SystemExit("error: give --data_root (ImageNet-style root or a folder of images), --shards or --demo")
    else:
        root = Path(args.data_root).expanduser().resolve()
        imagenet_style = (root / args.split).is_dir()
        splits = [name for name in ("train", "val", "validation", "test") if (root / name).is_dir()]
        if not imagenet_style and splits:  # else the whole root, every split at once, would be read as one folder
            raise SystemExit(f"error: --split {args.split} not found under {root}, which has split folders "
                             f"{splits}; pass one of them with --split")
        cls = ImageNet if imagenet_style else ImageFolder
        kwargs = {"split": args.split, "random_crop": False} if imagenet_style else {}
        dataset = cls(str(root), size=size or 256, **kwargs)
        description = {"dataset": str(root), "split": args.split if imagenet_style else None}
    if transform is not None:
        dataset.transform = transform
    if args.num_images is not None:
        if args.num_images < 1:
            raise SystemExit(f"error: --num_images must be positive, got {args.num_images}")
        dataset = IndexedSubset(dataset, range(min(args.num_images, len(dataset))))
    else:
        dataset = IndexedSubset(dataset, range(len(dataset)))
    return dataset, description


def open_clips(args, size: int, frames: int, split: Optional[str], crop: str = "center", seed: int = 0) -> tuple:
    """(dataset of clips with item["index"], description, the underlying clip dataset) for --demo (DemoVideos of
    `split` "train" or "val" (default), --num_clips of them, default 16) or --data_root (VideoClips: the centre `frames` of every video, `crop` crop drawn
    from (seed, position): the same in every run and rank layout)."""
    if args.demo:
        split = split if split in ("train", "val") else "val"
        base = DemoVideos(split, size=size, frames=frames, length=args.num_clips or 16,
                          photos=getattr(args, "demo_photos", None), seed=getattr(args, "demo_seed", 0))
        return IndexedSubset(base, range(len(base))), {"dataset": "demo", "split": split, "photos": base.names}, base
    base = VideoClips(args.data_root, split=split, size=size, sequence_length=frames, clip="center", crop=crop,
                      seed=seed)
    keyed = FirstEpoch(base)
    count = len(base) if args.num_clips is None else min(args.num_clips, len(base))
    description = {"dataset": str(Path(args.data_root).resolve()), "split": split, "num_videos": len(base)}
    return IndexedSubset(keyed, range(count)), description, keyed


class FirstEpoch(Dataset):
    """dataset[(i, 0)] for item i: a dataset's per-sample random choices fixed by (seed, epoch 0, index)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.dataset[(i, 0)]


class IndexedSubset(Dataset):
    """Items `indices` of `dataset`, each dict given its position in `indices` as item["index"] (None stays None)."""

    def __init__(self, dataset: Dataset, indices):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        item = self.dataset[self.indices[i]]
        return None if item is None else {**item, "index": i}


class Shard(Dataset):
    """Rank `rank`'s share of `dataset` without padding: items rank, rank + world, ... (so sums over ranks
    see every item exactly once, unlike DistributedSampler which repeats items to even out the shards)."""

    def __init__(self, dataset: Dataset, rank: int, world_size: int):
        self.dataset, self.items = dataset, range(rank, len(dataset), world_size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.dataset[self.items[i]]


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, device: torch.device) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_skip_none, pin_memory=device.type == "cuda",
                      persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None)


def setup_device(device: Optional[str]) -> tuple:
    """(device, rank, world_size). Under torchrun (WORLD_SIZE > 1) initialises the process group
    (NCCL on CUDA, else gloo) and uses cuda:LOCAL_RANK."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device != "cpu"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        return torch.device(f"cuda:{local_rank}" if use_cuda else "cpu"), dist.get_rank(), world_size
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device), 0, 1


def single_process_device(device: Optional[str], script: str) -> torch.device:
    """setup_device for tools that run in one process: an error under torchrun."""
    device, _, world_size = setup_device(device)
    if world_size > 1:
        raise SystemExit(f"error: {script} runs in one process; start it without torchrun")
    return device


class PngNames:
    """Output names `<relpath with .png>` for a run. Two inputs that differ only by extension (a.jpg, a.png)
    would overwrite each other; the later one keeps its extension instead (a.jpg.png)."""

    def __init__(self):
        self.taken = set()

    def __call__(self, relpath: str) -> Path:
        name = Path(relpath).with_suffix(".png")
        if name in self.taken:
            name = Path(relpath + ".png")
        self.taken.add(name)
        return name


def save_png(array, path: Path) -> None:
    """H x W x 3 uint8 array -> PNG at `path` (parent folders created)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def save_video(frames, path: Path, fps: int = 8) -> None:
    """uint8 T x H x W x 3 -> an animated, looping GIF."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    first, *rest = [Image.fromarray(f) for f in frames]
    first.save(path, save_all=True, append_images=rest, duration=round(1000 / fps), loop=0)
