from .lfqgan import VQModel
from .vqgan import VQGAN

__all__ = ["VQGAN", "VQModel"]
