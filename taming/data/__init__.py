"""Datasets (items: {"image": 3 x H x W float32 in [-1, 1] (clips: 3 x T x H x W), "class_label": int, -1 = unknown, "relpath": str}),
the collate that skips unreadable images, and the LightningDataModule (imported on first use: the inference side
never loads Lightning)."""

from .datasets import ImageFolder, ImageList, ImageNet, ImagePaths
from .demo import DemoImages, DemoVideos, write_demo_videos
from .file_index import IMAGE_EXTENSIONS, list_images
from .loading import ImageTransform, collate_skip_none, load_rgb
from .sampler import ResumableSampler
from .shards import ImageShards, write_shards
from .video import VIDEO_EXTENSIONS, VideoClips


def __getattr__(name: str):
    if name == "ImageDataModule":
        from .datamodule import ImageDataModule

        return ImageDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["ImageDataModule", "collate_skip_none", "ImageNet", "ImageFolder", "ImageList", "ImagePaths",
           "DemoImages", "IMAGE_EXTENSIONS", "list_images", "ImageTransform", "load_rgb", "ResumableSampler",
           "ImageShards", "write_shards", "DemoVideos", "write_demo_videos", "VideoClips", "VIDEO_EXTENSIONS"]
