"""Image decoding and the train/eval transform shared by every dataset (one implementation)."""

from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data._utils.collate import default_collate

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB.

    - transparency (RGBA, LA, PA, P or L/RGB with a transparency key) is composited over a WHITE
      background (a transparent logo stays a logo on white instead of turning black);
    - 16-bit / 32-bit integer modes (I;16*, I, e.g. 16-bit grayscale PNG) are scaled, not clipped:
      v8 = round(v16 / 257), i.e. 0..65535 -> 0..255;
    - CMYK uses PIL's conversion R = 255 (1 - C/255) (1 - K/255) (Adobe-inverted JPEGs are handled by
      the decoder); L, 1, P, YCbCr replicate / look up as PIL does.
    ICC profiles and EXIF orientation are ignored, as in the reference.
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I"):
        v16 = np.asarray(img).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(v16 / 257.0), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(path) -> Image.Image:
    """Decode the whole file (a truncated or corrupt file raises here, not later) and convert to RGB."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image (uint8) -> float32 tensor 3 x H x W in [-1, 1]: x / 127.5 - 1 computed in float64 and rounded
    to float32, as the reference (a float32 division differs in the last bit for half of the 256 values)."""
    return (torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).double() / 127.5 - 1.0).float()


def sample_rng(key, seed: int) -> np.random.Generator:
    """Random generator of one sample. `key` is the dataset index, or (index, epoch) as yielded by
    `ResumableSampler`: then the augmentation depends only on (seed, epoch, index), the same in every run, rank and
    DataLoader worker, so a resumed run sees the crops of the uninterrupted one. A plain index draws a fresh seed
    from torch's RNG (seeded per worker by PyTorch / Lightning), i.e. not reproducible across runs."""
    if isinstance(key, tuple):
        index, epoch = key
        return np.random.default_rng([seed, epoch, index])
    return np.random.default_rng(int(torch.randint(0, 2**62, ())))


def split_key(key) -> int:
    """Dataset index of a sampler key (an index, or an (index, epoch) pair)."""
    return key[0] if isinstance(key, tuple) else key


class ImageTransform:
    """RGB PIL image -> float32 tensor 3 x size x size in [-1, 1], as the reference: shorter side resized
    to `size` (bilinear, antialiased), then a random crop (`random_crop=True`, training) or the center crop,
    then an optional horizontal flip with probability 0.5 (off by default, as the reference). The randomness comes
    from the numpy Generator passed in (see `sample_rng`).

    resize_range (lo, hi): resize the shorter side to a size drawn uniformly from the integers lo..hi instead of
    `size` (GigaTok / ADM training augmentation: (256, 320) with size 256 and a random crop); drawn first, so the
    crop and flip draws follow it.
    """

    def __init__(self, size: int, random_crop: bool, hflip: bool = False,
                 resize_range: Optional[Sequence[int]] = None):
        if size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        if resize_range is not None and (len(resize_range) != 2 or not size <= resize_range[0] <= resize_range[1]):
            raise ValueError(f"resize_range must be (lo, hi) with size <= lo <= hi, got {resize_range} for size "
                             f"{size}; e.g. ({size}, {round(size * 1.25)}) as GigaTok")
        self.size, self.random_crop, self.hflip = size, random_crop, hflip
        self.resize_range = None if resize_range is None else tuple(int(v) for v in resize_range)

    @property
    def random(self) -> bool:
        return self.random_crop or self.hflip or self.resize_range is not None

    def __call__(self, img: Image.Image, rng: np.random.Generator = None) -> torch.Tensor:
        side = self.size if self.resize_range is None else int(rng.integers(self.resize_range[0],
                                                                            self.resize_range[1] + 1))
        import torchvision.transforms.functional as TF  # (here: torchvision costs ~1.5 s to import, --help need not)

        img = TF.resize(img, side, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        if self.random_crop:
            top = int(rng.integers(0, img.height - self.size + 1))
            left = int(rng.integers(0, img.width - self.size + 1))
            img = TF.crop(img, top, left, self.size, self.size)
        else:
            img = TF.center_crop(img, [self.size, self.size])
        if self.hflip and rng.random() < 0.5:
            img = TF.hflip(img)
        return to_tensor(img)


def adm_center_crop(img: Image.Image, size: int) -> Image.Image:
    """ADM / LlamaGen `center_crop_arr`: halve with a box filter while the shorter side is >= 2 * size, resize
    the shorter side to `size` (bicubic), then take the central size x size square."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))


class ADMCenterCropTransform:
    """RGB PIL image -> float32 tensor 3 x size x size in [-1, 1] by `adm_center_crop` (the crop of the ADM evaluator's
    reference batches and of LlamaGen's evaluation)."""

    random = False

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        self.size = size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return to_tensor(adm_center_crop(img, self.size))


class TenCropTransform:
    """LlamaGen's code extraction: `adm_center_crop` to round(size * crop_range), then the ten size x size views
    of torchvision's TenCrop (corners top-left, top-right, bottom-left, bottom-right, center, then the same of the
    horizontally flipped image) -> float32 10 x 3 x size x size in [-1, 1]."""

    views = 10

    def __init__(self, size: int, crop_range: float = 1.1):
        if size < 1 or crop_range < 1:
            raise ValueError(f"need size >= 1 and crop_range >= 1, got {size} and {crop_range}")
        self.size, self.crop_range = size, crop_range

    def __call__(self, img: Image.Image) -> torch.Tensor:
        square = adm_center_crop(img, int(self.size * self.crop_range))
        import torchvision.transforms.functional as TF

        return torch.stack([to_tensor(view) for view in TF.ten_crop(square, [self.size, self.size])])


def collate_skip_none(items: list) -> dict:
    """Collate dataset items, dropping the None returned for unreadable images.

    batch["num_skipped"] (int) is the number dropped from this batch, so a LightningModule can sum it
    (it works across DataLoader worker processes, unlike a counter on the dataset). When every item is
    bad, the batch is empty: image 0 x 3 x 0 x 0, class_label of length 0, relpath [].
    """
    good = [item for item in items if item is not None]
    if good:
        batch = default_collate(good)
    else:
        batch = {"image": torch.empty(0, 3, 0, 0), "class_label": torch.empty(0, dtype=torch.long), "relpath": []}
    batch["num_skipped"] = len(items) - len(good)
    return batch
