"""DemoImages and DemoVideos: crops of, and camera motion over, the photographs bundled with scikit-image."""

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import skimage.data
import torch
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


MOTIONS = ("pan", "zoom", "rotate")


def camera_clip(photo: np.ndarray, size: int, frames: int, rng: np.random.Generator, motion: str,
                parallax: float = 0.6) -> np.ndarray:
    """uint8 frames x size x size x 3: a camera moving over `photo` (a pan between two windows, a zoom in or out, or
    a rotation about the window centre), with a nearer layer: a patch of the photo pasted in the middle of the view
    that moves `1 + parallax` times as far as the background, so the clip has motion at two speeds."""
    h, w = photo.shape[:2]
    img = Image.fromarray(photo)
    side = min(h, w) * float(rng.uniform(0.35, 0.6))
    cx, cy = float(rng.uniform(side / 2, w - side / 2)), float(rng.uniform(side / 2, h - side / 2))
    reach = min(cx - side / 2, w - side / 2 - cx, cy - side / 2, h - side / 2 - cy, side / 3)
    angle = float(rng.uniform(-30, 30))
    dx, dy = reach * float(np.cos(np.radians(angle))), reach * float(np.sin(np.radians(angle)))
    zoom_in = bool(rng.integers(0, 2))
    patch_side = side * 0.35
    pcx, pcy = float(rng.uniform(patch_side, w - patch_side)), float(rng.uniform(patch_side, h - patch_side))
    patch = img.crop((round(pcx - patch_side / 2), round(pcy - patch_side / 2), round(pcx + patch_side / 2),
                      round(pcy + patch_side / 2))).resize((round(size * 0.35),) * 2, Image.BICUBIC)
    out = []
    for t in range(frames):
        s = t / max(1, frames - 1) - 0.5  # -0.5 .. 0.5 over the clip
        x, y, half, rot = cx, cy, side / 2, 0.0
        if motion == "pan":
            x, y = cx + s * 2 * dx, cy + s * 2 * dy
        elif motion == "zoom":
            half = side / 2 * (1 - 0.3 * (s + 0.5) if zoom_in else 0.7 + 0.3 * (s + 0.5))
        else:
            rot = s * 30.0
        view = img.rotate(rot, resample=Image.BICUBIC, center=(x, y)) if rot else img
        frame = view.resize((size, size), Image.BICUBIC, box=(x - half, y - half, x + half, y + half))
        shift = (1 + parallax) * s * size * 0.25  # the near layer moves further than the background
        px = round(size / 2 - patch.width / 2 + shift * (np.sign(dx) or 1))
        py = round(size / 2 - patch.height / 2 + shift * 0.5)
        frame.paste(patch, (px, py))
        out.append(np.asarray(frame))
    return np.stack(out)


@register
class DemoVideos(Dataset):
    """`length` clips (3 x frames x size x size in [-1, 1]) of camera motion over the scikit-image photographs
    (`camera_clip`: pans, zooms, rotations, with a nearer layer moving faster), for tests and the CPU video demo.

    Clip i films photograph i % n_photos (its left three quarters for "train", the rest for "val"), with the motion
    and path drawn from (seed, split, i): identical in every epoch, process and worker. class_label is the
    photograph's position (as DemoImages). `motions`: a subset of MOTIONS.
    """

    def __init__(self, split: str = "train", size: int = 32, frames: int = 17, length: Optional[int] = None,
                 seed: int = 0, photos: Optional[Sequence[str]] = None, motions: Sequence[str] = MOTIONS):
        self.images = DemoImages(split, size=size, length=1, seed=seed, photos=photos)
        if not motions or set(motions) - set(MOTIONS):
            raise ValueError(f"DemoVideos motions must be a non-empty subset of {MOTIONS}, got {motions}")
        self.length = length if length is not None else (256 if split == "train" else 16)
        if self.length < 1 or frames < 1:
            raise ValueError(f"DemoVideos needs length >= 1 and frames >= 1, got {self.length} and {frames}")
        self.size, self.frames, self.seed, self.split, self.motions = size, frames, seed, split, tuple(motions)

    @property
    def names(self):
        return self.images.names

    def __len__(self) -> int:
        return self.length

    def clip(self, i: int) -> tuple:
        """(uint8 frames x size x size x 3, class, motion) of clip i."""
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for DemoVideos of length {self.length}")
        rng = np.random.default_rng([self.seed, int(self.split == "val"), i, 1])
        k = i % len(self.images.photos)
        motion = self.motions[int(rng.integers(0, len(self.motions)))]
        return camera_clip(self.images.photos[k], self.size, self.frames, rng, motion), k, motion

    def __getitem__(self, key) -> dict:
        i = split_key(key)
        frames, k, motion = self.clip(i)
        video = (torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255.0 - 0.5) / 0.5
        return {"image": video, "class_label": k, "relpath": f"{self.names[k]}/{i:05d}_{motion}"}


def write_demo_videos(root, split: str = "train", length: int = 32, size: int = 64, frames: int = 24,
                      fps: int = 25, seed: int = 0, photos: Optional[Sequence[str]] = None) -> list:
    """Write DemoVideos clips as MPEG-4 Part 2 .avi files (the codec family of UCF-101) in class folders,
    `root/split/<photo>/<i>_<motion>.avi` (split "train" films the photographs' training part, any other their
    held-out part); returns the paths. For the file-based video pipeline's tests and demo."""
    import av

    dataset = DemoVideos("train" if split == "train" else "val", size=size, frames=frames, length=length, seed=seed,
                         photos=photos)
    paths = []
    for i in range(length):
        clip, k, motion = dataset.clip(i)
        path = Path(root) / split / dataset.names[k] / f"{i:05d}_{motion}.avi"
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), "w") as container:
            stream = container.add_stream("mpeg4", rate=fps)
            stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
            stream.options = {"qscale": "2"}
            for frame in clip:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        paths.append(path)
    return paths
