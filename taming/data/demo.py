"""DemoImages: square crops of the photographs bundled with scikit-image (no download)."""

import logging
from typing import Optional, Sequence

import numpy as np
import skimage.data
from PIL import Image
from torch.utils.data import Dataset

from ..modules.component import register
from .loading import ImageTransform, split_key

log = logging.getLogger(__name__)

# Every photograph is split: its right-most quarter (columns >= 3/4 of the width) is held out for validation,
# so train and val share no pixels but see the same kinds of content and colour.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "coins", "gravel", "camera", "hubble_deep_field",
          "immunohistochemistry", "retina", "motorcycle", "brick", "grass", "page", "text", "moon")
VAL_FRACTION = 0.25


def load_photo(name: str) -> np.ndarray:
    """uint8 H x W x 3 (grayscale photographs replicated to 3 channels)."""
    img = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]


@register
class DemoImages(Dataset):
    """`length` crops of size x size from skimage photographs, for smoke tests and CPU demos.

    Item i is a square region of side min(size * s, shorter region side), s drawn from `scales`, at a
    random position in photograph i % n_photos (its left three quarters for "train", the rest for "val"), resized to `size` (shared bilinear antialiased resize)
    and returned as float32 3 x size x size in [-1, 1]. Everything is a function of (seed, split, i), so
    the dataset is identical in every epoch, process and DataLoader worker. class_label is k, the position of the
    item's photograph among those loaded (`names`; the same in both splits), so a class-conditional model can be
    trained on it (16 classes when every photograph is available).
    Default `length`: 512 train crops, 32 val crops (2-core CPU friendly). `photos`: a subset of `PHOTOS` (the
    classes are then their positions in that list).
    """

    def __init__(self, split: str = "train", size: int = 64, length: Optional[int] = None,
                 scales: Sequence[float] = (1.0, 2.0, 4.0), seed: int = 0, photos: Optional[Sequence[str]] = None):
        if split not in ("train", "val"):
            raise ValueError(f"DemoImages split must be 'train' or 'val', got {split!r}")
        unknown = sorted(set(photos or ()) - set(PHOTOS))
        if unknown or (photos is not None and not photos):
            raise ValueError(f"DemoImages photos must be a non-empty subset of {PHOTOS}, got unknown {unknown}")
        self.names, self.photos, self.offsets = [], [], []  # offsets: first column of the region in the photo
        for name in photos or PHOTOS:
            try:
                photo = load_photo(name)
                boundary = round(photo.shape[1] * (1 - VAL_FRACTION))
                self.photos.append(photo[:, :boundary] if split == "train" else photo[:, boundary:])
                self.offsets.append(0 if split == "train" else boundary)
                self.names.append(name)
            except Exception as err:  # missing in this scikit-image version, or its data file is not installed
                log.warning("DemoImages: scikit-image photograph %r unavailable (%s); using the others", name, err)
        if not self.photos:
            raise RuntimeError(f"DemoImages: none of the scikit-image photographs for split {split!r} could be "
                               "loaded; reinstall scikit-image (its bundled data files are missing)")
        self.length = length if length is not None else (512 if split == "train" else 32)
        if self.length < 1 or not scales or min(scales) <= 0:
            raise ValueError(f"DemoImages needs length >= 1 and positive scales, got {self.length} and {scales}")
        self.size, self.scales, self.seed, self.split = size, tuple(scales), seed, split
        self.transform = ImageTransform(size, random_crop=False)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key) -> dict:
        """key: an index, or (index, epoch) from `ResumableSampler` (the crops do not change between epochs)."""
        i = split_key(key)
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for DemoImages of length {self.length}")
        rng = np.random.default_rng([self.seed, int(self.split == "val"), i])
        k = i % len(self.photos)
        photo = self.photos[k]
        h, w = photo.shape[:2]
        side = min(round(self.size * rng.choice(self.scales)), h, w)
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[top:top + side, left:left + side])
        return {"image": self.transform(crop), "class_label": k,
                "relpath": f"{self.names[k]}/{i:05d}_y{top}_x{left + self.offsets[k]}_s{side}"}
