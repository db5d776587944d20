from .base import Quantizer, QuantizerOutput
from .lfq import LFQ, bit_shifts
from .vq import VectorQuantizer

__all__ = ["LFQ", "Quantizer", "QuantizerOutput", "VectorQuantizer", "bit_shifts"]
