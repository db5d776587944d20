"""File-based image datasets: ImageNet (synset folders), ImageFolder (any folder tree), ImageList (text file).

Every item is a dict {"image": float32 3 x size x size in [-1, 1], "class_label": int (-1 = unknown),
"relpath": str}, or None when the file cannot be decoded (logged with its path; `collate_skip_none`
drops it and counts it in batch["num_skipped"]). With `strict=True` an unreadable file raises instead.
Random crops and flips are drawn from (seed, epoch, index) when the sampler yields (index, epoch) keys
(`ResumableSampler`, used by `ImageDataModule` for training).
"""

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from ..modules.component import register
from .file_index import IMAGE_EXTENSIONS, list_images
from .loading import ImageTransform, load_rgb, sample_rng, split_key

log = logging.getLogger(__name__)

IMAGENET_LAYOUT = "<root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG (val sorted into synset folders)"


def _require_dir(path: Path, what: str, layout: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {path} does not exist or is not a directory; expected layout: {layout}")


class ImagePaths(Dataset):
    """Images at `root / relpath` with integer labels; the loading, transform and skip logic of every
    file-based dataset. Paths and labels are kept in numpy arrays (not lists of Python objects) so that
    DataLoader workers do not copy them page by page through reference counting."""

    def __init__(self, root, relpaths: Sequence[str], labels: Sequence[int], transform: ImageTransform,
                 strict: bool, seed: int = 0):
        self.root, self.seed = str(root), seed
        self.relpaths = np.array([p.encode("utf-8", "surrogateescape") for p in relpaths], dtype=np.bytes_)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform, self.strict = transform, strict

    def __len__(self) -> int:
        return len(self.relpaths)

    def __getitem__(self, key) -> Optional[dict]:
        """key: an index, or (index, epoch) from `ResumableSampler` (seeds the random crop / flip)."""
        i = split_key(key)
        relpath = self.relpaths[i].decode("utf-8", "surrogateescape")
        path = os.path.join(self.root, relpath)
        try:
            image = load_rgb(path)
            image = (self.transform(image, sample_rng(key, self.seed)) if getattr(self.transform, "random", False)
                     else self.transform(image))
        except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
            if self.strict:
                raise RuntimeError(f"cannot read image {path}: {type(err).__name__}: {err} "
                                   "(set strict=False to skip unreadable images)") from err
            log.warning("skipping unreadable image %s (%s: %s)", path, type(err).__name__, err)
            return None
        return {"image": image, "class_label": int(self.labels[i]), "relpath": relpath}


@register
class ImageNet(ImagePaths):
    """ImageNet-1k as laid out by the reference: `<root>/<split>/<wnid>/*.JPEG`.

    class_label = position of the wnid in the sorted list of the split's synset folders (the standard
    0-999 order when all 1000 are present). `random_crop` defaults to True for split "train" only;
    `resize_range` (lo, hi) draws the shorter side before the crop (see ImageTransform; GigaTok: (256, 320)).
    The file index is cached (see `list_images`); `rebuild_index=True` forces a rescan.
    """

    def __init__(self, root: str, split: str = "train", size: int = 256, random_crop: Optional[bool] = None,
                 hflip: bool = False, strict: bool = False, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                 index_cache_dir: Optional[str] = None, rebuild_index: bool = False, seed: int = 0,
                 resize_range: Optional[Sequence[int]] = None):
        root_dir = Path(root).expanduser()
        _require_dir(root_dir, "ImageNet root", IMAGENET_LAYOUT)
        split_dir = root_dir / split
        _require_dir(split_dir, f"ImageNet split '{split}'", IMAGENET_LAYOUT)
        relpaths = list_images(split_dir, extensions, index_cache_dir, rebuild_index)
        if not relpaths:
            raise FileNotFoundError(f"no images ({', '.join(extensions)}) found under {split_dir}; "
                                    f"expected layout: {IMAGENET_LAYOUT}")
        loose = [p for p in relpaths if "/" not in p]
        if loose:
            raise ValueError(f"{len(loose)} images lie directly in {split_dir} (e.g. {loose[0]}), not in synset "
                             f"folders; expected layout: {IMAGENET_LAYOUT}. Move the validation images into "
                             "<wnid> folders (e.g. with the usual valprep.sh) first.")
        wnids = [p.split("/", 1)[0] for p in relpaths]
        self.classes = sorted(set(wnids))
        index = {wnid: i for i, wnid in enumerate(self.classes)}
        log.info("ImageNet %s: %d images in %d classes under %s", split, len(relpaths), len(self.classes), split_dir)
        transform = ImageTransform(size, split == "train" if random_crop is None else random_crop, hflip, resize_range)
        super().__init__(split_dir, relpaths, [index[w] for w in wnids], transform, strict, seed)


@register
class ImageFolder(ImagePaths):
    """All images below `root` (flat or nested folders, any depth), class_label -1. Index cached as ImageNet."""

    def __init__(self, root: str, size: int = 256, random_crop: bool = False, hflip: bool = False,
                 strict: bool = False, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                 index_cache_dir: Optional[str] = None, rebuild_index: bool = False, seed: int = 0):
        layout = f"<root>/**/*{{{','.join(extensions)}}} (a flat or nested folder of images)"
        root_dir = Path(root).expanduser()
        _require_dir(root_dir, "image folder", layout)
        relpaths = list_images(root_dir, extensions, index_cache_dir, rebuild_index)
        if not relpaths:
            raise FileNotFoundError(f"no images found under {root_dir}; expected layout: {layout}")
        super().__init__(root_dir, relpaths, [-1] * len(relpaths), ImageTransform(size, random_crop, hflip), strict,
                         seed)


def read_image_list(list_file: Path) -> tuple:
    """Lines `path` or `path <int label>` (whitespace before the label); blank lines and `#` comments skipped.
    Returns (paths, labels) with label -1 where none is given."""
    paths, labels = [], []
    with open(list_file, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            has_label = len(parts) == 2 and parts[1].lstrip("-").isdigit()
            paths.append(parts[0] if has_label else line)
            labels.append(int(parts[1]) if has_label else -1)
    return paths, labels


@register
class ImageList(ImagePaths):
    """Images listed in a text file, one per line: `path` or `path label`. Relative paths are resolved
    against `root` (default: the list file's folder); absolute paths are used as they are. Missing files
    are not checked up front (one stat per file); they are skipped and counted when loaded."""

    def __init__(self, list_file: str, root: Optional[str] = None, size: int = 256, random_crop: bool = False,
                 hflip: bool = False, strict: bool = False, seed: int = 0):
        list_path = Path(list_file).expanduser()
        if not list_path.is_file():
            raise FileNotFoundError(f"image list {list_path} does not exist; expected a text file with one "
                                    "image path per line (relative to `root` or absolute), optionally followed by "
                                    "an integer label")
        root_dir = Path(root).expanduser() if root is not None else list_path.parent
        _require_dir(root_dir, "image list root", "the folder that relative paths in the list start from")
        paths, labels = read_image_list(list_path)
        if not paths:
            raise ValueError(f"image list {list_path} contains no image paths")
        super().__init__(root_dir, paths, labels, ImageTransform(size, random_crop, hflip), strict, seed)
