from .base import Quantizer, QuantizerOutput
from .ibq import IBQ
from .lfq import LFQ, bit_shifts
from .vq import VectorQuantizer

__all__ = ["IBQ", "LFQ", "Quantizer", "QuantizerOutput", "VectorQuantizer", "bit_shifts"]
