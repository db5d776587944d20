"""Class-conditional autoregressive generators (LlamaGen / GigaTok `GPT`, Open-MAGVIT2 `FactorizedGPT`)."""
from .factorized import FACTORIZED_SIZES, FactorizedGPT
from .gpt import GPT, GPT_SIZES, ARGenerator

__all__ = ["ARGenerator", "GPT", "GPT_SIZES", "FactorizedGPT", "FACTORIZED_SIZES"]
