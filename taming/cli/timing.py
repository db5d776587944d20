"""Timing and peak memory of a benchmark step (imports torch only, so CPU peak RSS stays the step's own)."""
import resource
import time

import torch


def time_steps(step, device: str, repeats: int) -> tuple:
    """(what one warm-up call of `step()` returns, mean ms per call over `repeats` timed calls, peak memory in MiB:
    CUDA max_memory_allocated after the warm-up, or the process's max RSS on the CPU)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    values = step()
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    sync()
    ms = (time.perf_counter() - t0) / repeats * 1e3
    if device.startswith("cuda"):
        return values, ms, torch.cuda.max_memory_allocated() / 2**20
    return values, ms, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
