"""Class-conditional autoregressive generators (LlamaGen / GigaTok `GPT`, Open-MAGVIT2 `FactorizedGPT`, IBQ
`AdaLNGPT`)."""
from .adaln import IBQ_GPT_SIZES, AdaLNGPT
from .factorized import FACTORIZED_SIZES, FactorizedGPT
from .gpt import GPT, GPT_SIZES, ARGenerator

GENERATORS = (GPT, FactorizedGPT, AdaLNGPT)


def generator_class(size: str) -> type:
    """The generator class that declares the size name `size` (every name is unique across the classes)."""
    for cls in GENERATORS:
        if size in cls.sizes:
            return cls
    names = sorted(name for cls in GENERATORS for name in cls.sizes)
    raise ValueError(f"unknown generator size {size!r}; choose one of {names}")


__all__ = ["GENERATORS", "generator_class", "ARGenerator", "AdaLNGPT", "GPT", "GPT_SIZES", "FactorizedGPT", "FACTORIZED_SIZES", "IBQ_GPT_SIZES"]
