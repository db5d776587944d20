"""Image decoding and the train/eval transform shared by every dataset (one implementation)."""

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

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
    from the numpy Generator passed in (see `sample_rng`)."""

    def __init__(self, size: int, random_crop: bool, hflip: bool = False):
        if size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        self.size, self.random_crop, self.hflip = size, random_crop, hflip

    @property
    def random(self) -> bool:
        return self.random_crop or self.hflip

    def __call__(self, img: Image.Image, rng: np.random.Generator = None) -> torch.Tensor:
        img = TF.resize(img, self.size, interpolation=T.InterpolationMode.BILINEAR, antialias=True)
        if self.random_crop:
            top = int(rng.integers(0, img.height - self.size + 1))
            left = int(rng.integers(0, img.width - self.size + 1))
            img = TF.crop(img, top, left, self.size, self.size)
        else:
            img = TF.center_crop(img, [self.size, self.size])
        if self.hflip and rng.random() < 0.5:
            img = TF.hflip(img)
        return to_tensor(img)
