"""Learning-rate multipliers per optimizer step (pure functions of the step; resume needs no scheduler state).

Warm-up over the first W steps: (s + 1) / W when `warmup_start` is None (Open-MAGVIT2's tokenizer schedules,
never an LR of 0), else warmup_start + (1 - warmup_start) * s / W (GigaTok: 1/100; Open-MAGVIT2 AR: 0.005).
After warm-up, with p the progress through the remaining steps and f = end factor:
- "constant" (alias "linear-warmup"): 1 (LlamaGen; Open-MAGVIT2 tokenizers).
- "cosine" (alias "linear-warmup_cosine-decay"): f + (1 - f) (1 + cos(pi p)) / 2 (GigaTok `cosine_v2`, Open-MAGVIT2).
- "wsd": 1 until the last `decay_fraction` of all steps, then f + (1 - f) max(0, 1 - sqrt(q)) with q the progress
  through that decay (GigaTok AR, "sqrt" decay).
- "hold-linear": 1 for the first `hold_fraction` of the remaining steps, then linear to f at the last step
  (Open-MAGVIT2 AR, VAR's `lr_wd_annealing`).
"""
import math
from typing import Optional

# Open-MAGVIT2's names are aliases: after warm-up "linear-warmup" is constant and "linear-warmup_cosine-decay" is cosine
# (their difference from "constant" / "cosine" is the warm-up, which the caller sets: VQModel gives "constant" none).
ALIASES = {"linear-warmup": "constant", "linear-warmup_cosine-decay": "cosine"}
SCHEDULES = ("constant", "linear-warmup", "cosine", "linear-warmup_cosine-decay", "wsd", "hold-linear")


def check_schedule(name: str) -> None:
    if name not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {name!r}; choose one of {SCHEDULES}")


def _constant(step, total_steps, warmup_steps, end_factor, decay_fraction, hold_fraction) -> float:
    return 1.0


def _cosine(step, total_steps, warmup_steps, end_factor, decay_fraction, hold_fraction) -> float:
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return end_factor + (1 - end_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def _wsd(step, total_steps, warmup_steps, end_factor, decay_fraction, hold_fraction) -> float:
    decay_steps = int(decay_fraction * total_steps)
    hold_until = total_steps - decay_steps
    if step < hold_until or decay_steps == 0:
        return 1.0
    return end_factor + (1 - end_factor) * max(0.0, 1 - math.sqrt((step - hold_until) / decay_steps))


def _hold_linear(step, total_steps, warmup_steps, end_factor, decay_fraction, hold_fraction) -> float:
    progress = (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps)
    if progress < hold_fraction:
        return 1.0
    return end_factor + (1 - end_factor) * max(0.0, 1 - progress) / (1 - hold_fraction)


AFTER_WARMUP = {"constant": _constant, "cosine": _cosine, "wsd": _wsd, "hold-linear": _hold_linear}


def lr_factor(name: str, step: int, total_steps: int, warmup_steps: int = 0, warmup_start: Optional[float] = None,
              end_factor: float = 0.0, decay_fraction: float = 0.2, hold_fraction: float = 0.05) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based) of `total_steps`."""
    check_schedule(name)
    if step < warmup_steps:
        if warmup_start is None:
            return (step + 1) / warmup_steps
        return warmup_start + (1 - warmup_start) * step / warmup_steps
    return AFTER_WARMUP[ALIASES.get(name, name)](step, total_steps, warmup_steps, end_factor, decay_fraction,
                                                 hold_fraction)
