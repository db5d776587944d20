"""LightningModules (the training side). Imported on first use, so `taming.models.schedules` alone does not load
Lightning."""

__all__ = ["VQGAN", "VQModel"]


def __getattr__(name: str):
    if name == "VQModel":
        from .lfqgan import VQModel

        return VQModel
    if name == "VQGAN":
        from .vqgan import VQGAN

        return VQGAN
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
