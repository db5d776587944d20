"""Datasets (items: {"image": 3 x H x W float32 in [-1, 1], "class_label": int, -1 = unknown, "relpath": str}),
the collate that skips unreadable images, and the LightningDataModule."""

from .datamodule import ImageDataModule, collate_skip_none
from .datasets import ImageFolder, ImageList, ImageNet, ImagePaths
from .demo import DemoImages
from .file_index import IMAGE_EXTENSIONS, list_images
from .loading import ImageTransform, load_rgb
from .sampler import ResumableSampler

__all__ = ["ImageDataModule", "collate_skip_none", "ImageNet", "ImageFolder", "ImageList", "ImagePaths",
           "DemoImages", "IMAGE_EXTENSIONS", "list_images", "ImageTransform", "load_rgb", "ResumableSampler"]
