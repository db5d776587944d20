"""Video clips from files: UCF-101 (`<root>/<split>/<class>/*.avi`, as Open-MAGVIT2 video) and any folder of videos.

Decoding uses PyAV (FFmpeg bindings): it installs as a self-contained wheel on Linux, macOS and Windows and decodes
UCF-101's Xvid .avi as well as .mp4/.webm/.mkv. (decord's last wheel is from 2021 and has none for recent Pythons
or macOS arm64; torchvision's video API is deprecated and being removed in favour of torchcodec, which needs a system
FFmpeg.)

Items are {"image": float32 3 x T x H x W in [-1, 1], "class_label": int, "relpath": str} (the batch key every tool
reads; a clip is a stack of frames), or None for a video that cannot be decoded or is shorter than one clip (skipped
and counted by `collate_skip_none`). A clip is `sequence_length` frames, `frame_stride` apart, starting at a random
frame (`clip: random`, training) or centred (`clip: center`); every frame is resized so its shorter side is `size`
with OpenCV's INTER_LINEAR fixed-point arithmetic (what the release's `cv2.resize` computes, without OpenCV) and
cropped to size x size at one offset for the whole clip, random or centred. The release samples random crops for
evaluation too (`crop: random` reproduces it); this project's default evaluation crop is the centre. Random choices
come from (seed, epoch, index) under `ResumableSampler`, so resumed runs see the same clips.
"""
import logging
import math
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..modules.component import register
from .file_index import list_images
from .loading import sample_rng, split_key

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".avi", ".mp4", ".webm", ".mkv", ".mov")
UCF_LAYOUT = "<root>/<split>/<class>/<video>.avi (UCF-101 split into train/ and test/ class folders, as VideoGPT)"
CHOICES = ("random", "center")


def read_frames(path, stop: Optional[int] = None) -> np.ndarray:
    """uint8 N x H x W x 3 RGB frames of the first video stream, all of them or the first `stop`."""
    import av  # imported here: only video datasets need it

    frames = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if stop is not None and len(frames) >= stop:
                break
    if not frames:
        raise ValueError("no decodable frame")
    return np.stack(frames)


def container_frame_count(path) -> int:
    """Frames of the first video stream as the container records them; 0 when it does not (then decode to count)."""
    import av

    with av.open(str(path)) as container:
        return container.streams.video[0].frames if container.streams.video else 0


def _linear_taps(src: int, dst: int):
    """OpenCV INTER_LINEAR source pairs and 11-bit weights per output position (half-pixel centres, clamped)."""
    scale = np.float64(src) / np.float64(dst)
    pos = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    left = np.floor(pos).astype(np.int64)
    frac = (pos - left).astype(np.float32)
    frac[left < 0], left[left < 0] = 0.0, 0
    frac[left >= src - 1], left[left >= src - 1] = 0.0, src - 1
    w0 = np.rint((np.float32(1.0) - frac) * 2048).astype(np.int64)
    w1 = np.rint(frac * 2048).astype(np.int64)
    return torch.from_numpy(left), torch.from_numpy(np.minimum(left + 1, src - 1)), torch.from_numpy(w0), \
        torch.from_numpy(w1)


def resize_linear_uint8(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """N x H x W x C uint8 -> N x height x width x C uint8, bit-exact with `cv2.resize(INTER_LINEAR)` on x86 (its
    fixed-point path: 11-bit horizontal taps, then (((S0 >> 4) * b0) >> 16) + (((S1 >> 4) * b1) >> 16), rounded by
    (+2) >> 2). No antialiasing, as OpenCV."""
    x = frames.to(torch.int64)
    l, r, a0, a1 = _linear_taps(x.shape[2], width)
    rows = x[:, :, l] * a0[:, None] + x[:, :, r] * a1[:, None]
    t, b, b0, b1 = _linear_taps(x.shape[1], height)
    out = ((rows[:, t] >> 4) * b0[:, None, None] >> 16) + ((rows[:, b] >> 4) * b1[:, None, None] >> 16)
    return ((out + 2) >> 2).clamp(0, 255).to(torch.uint8)


def clip_to_tensor(frames: torch.Tensor) -> torch.Tensor:
    """T x H x W x 3 uint8 -> 3 x T x H x W float32 in [-1, 1] ((x / 255 - 0.5) / 0.5, the release's transforms)."""
    return (frames.permute(3, 0, 1, 2).float() / 255.0 - 0.5) / 0.5


@register
class VideoClips(Dataset):
    """Clips of the videos under `root` (or `root/split` when `split` is given).

    labels: "folder" = index of the video's parent folder name among the sorted parent names (UCF-101's classes),
        "none" = -1 for every clip.
    sequence_length: frames per clip (17: 5 latent frames for the release's tokenizer). frame_stride: 1 = consecutive
        frames at the native rate (the release; its `frame_sample_rate: 4` is never applied).
    clip / crop: "random" or "center" (defaults: random for split "train", center otherwise).
    Videos shorter than (sequence_length - 1) * frame_stride + 1 frames are skipped and counted (the release crashes).
    The file index is cached as for images (`taming.data.list_images`).
    """

    def __init__(self, root: str, split: Optional[str] = None, size: int = 128, sequence_length: int = 17,
                 frame_stride: int = 1, clip: Optional[str] = None, crop: Optional[str] = None,
                 labels: str = "folder", strict: bool = False, seed: int = 0,
                 extensions: Sequence[str] = VIDEO_EXTENSIONS, index_cache_dir: Optional[str] = None,
                 rebuild_index: bool = False):
        folder = Path(root).expanduser() / (split or "")
        if not folder.is_dir():
            raise FileNotFoundError(f"video folder {folder} does not exist or is not a directory; expected layout: "
                                    f"{UCF_LAYOUT}, or any folder of videos with split: null")
        training = split == "train"
        clip, crop = clip or ("random" if training else "center"), crop or ("random" if training else "center")
        for name, value in (("clip", clip), ("crop", crop)):
            if value not in CHOICES:
                raise ValueError(f"VideoClips {name} must be one of {CHOICES}, got {value!r}")
        if labels not in ("folder", "none"):
            raise ValueError(f"VideoClips labels must be 'folder' or 'none', got {labels!r}")
        if sequence_length < 1 or frame_stride < 1 or size < 1:
            raise ValueError(f"VideoClips needs size, sequence_length and frame_stride >= 1, got {size}, "
                             f"{sequence_length}, {frame_stride}")
        relpaths = list_images(folder, tuple(extensions), index_cache_dir, rebuild_index)
        if not relpaths:
            raise FileNotFoundError(f"no videos ({', '.join(extensions)}) found under {folder}; expected layout: "
                                    f"{UCF_LAYOUT}")
        parents = [os.path.dirname(p) for p in relpaths]
        self.classes = sorted(set(parents)) if labels == "folder" else []
        index = {name: i for i, name in enumerate(self.classes)}
        self.labels = np.array([index[p] for p in parents] if labels == "folder" else [-1] * len(relpaths))
        self.relpaths = np.array([p.encode("utf-8", "surrogateescape") for p in relpaths], dtype=np.bytes_)
        self.root, self.size, self.sequence_length, self.frame_stride = str(folder), size, sequence_length, frame_stride
        self.clip, self.crop, self.strict, self.seed = clip, crop, strict, seed
        log.info("VideoClips: %d videos in %d classes under %s", len(relpaths), len(self.classes), folder)

    def __len__(self) -> int:
        return len(self.relpaths)

    @property
    def span(self) -> int:
        """Frames a clip covers in the source video."""
        return (self.sequence_length - 1) * self.frame_stride + 1

    def __getitem__(self, key) -> Optional[dict]:
        """key: an index, or (index, epoch) from `ResumableSampler` (seeds the clip start and the crop)."""
        i = split_key(key)
        relpath = self.relpaths[i].decode("utf-8", "surrogateescape")
        path = os.path.join(self.root, relpath)
        rng = sample_rng(key, self.seed)
        try:
            total = container_frame_count(path)
            frames = None if total else torch.from_numpy(read_frames(path))  # no count recorded: decode once, all
            total = total or len(frames)
            if total < self.span:
                raise ValueError(f"{total} frames, fewer than the {self.span} of one clip")
            start = int(rng.integers(0, total - self.span + 1)) if self.clip == "random" else total // 2 - self.span // 2
            if frames is None:
                frames = torch.from_numpy(read_frames(path, stop=start + self.span))
            if len(frames) < start + self.span:  # the container's frame count was too high
                raise ValueError(f"only {len(frames)} frames decodable, the clip needs {start + self.span}")
            video = self.transform(frames[start:start + self.span:self.frame_stride], rng)
        except Exception as err:  # FFmpeg errors (av.error.*), short or empty videos
            if self.strict:
                raise RuntimeError(f"cannot read video {path}: {type(err).__name__}: {err} "
                                   "(set strict=False to skip unreadable videos)") from err
            log.warning("skipping video %s (%s: %s)", path, type(err).__name__, err)
            return None
        return {"image": video, "class_label": int(self.labels[i]), "relpath": relpath}

    def transform(self, frames: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """T x H x W x 3 uint8 -> 3 x T x size x size in [-1, 1]: shorter side to `size`, one crop for all frames."""
        h, w = frames.shape[1:3]
        short = min(h, w)
        new_h, new_w = (self.size, math.floor(self.size * w / h)) if h == short else (math.floor(self.size * h / w),
                                                                                      self.size)
        frames = resize_linear_uint8(frames, new_h, new_w)
        if self.crop == "random":
            top, left = int(rng.integers(0, new_h - self.size + 1)), int(rng.integers(0, new_w - self.size + 1))
        else:
            top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
        return clip_to_tensor(frames[:, top:top + self.size, left:left + self.size])
