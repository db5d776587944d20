"""Image tokenizers for autoregressive visual generation (Open-MAGVIT2 re-implementation)."""
from .tokenizer import Tokenizer, build_tokenizer, load_tokenizer

__all__ = ["Tokenizer", "build_tokenizer", "load_tokenizer"]
