from .lfq import LFQ, LossBreakdown

__all__ = ["LFQ", "LossBreakdown"]
