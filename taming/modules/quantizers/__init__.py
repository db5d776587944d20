from .lfq import LFQ, LossBreakdown, bit_shifts

__all__ = ["LFQ", "LossBreakdown", "bit_shifts"]
