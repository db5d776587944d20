from .lfqgan import VQModel

__all__ = ["VQModel"]
