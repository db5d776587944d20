"""Image tokenizers for autoregressive visual generation (Open-MAGVIT2 re-implementation) and the class-conditional
autoregressive generators trained on their tokens."""
from .generator import build_generator, load_generator
from .modules.component import trusted_class_paths
from .tokenizer import Tokenizer, build_tokenizer, load_tokenizer

__all__ = ["Tokenizer", "build_generator", "build_tokenizer", "load_generator", "load_tokenizer", "trusted_class_paths"]
