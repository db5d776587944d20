"""Sampling pieces for autoregressive generation: logit filters, classifier-free guidance and its schedules.

Pure functions on B x V logits (float). The order per step is the references' (LlamaGen, GigaTok,
Open-MAGVIT2): guided = cfg_combine(cond, uncond, scale), then / temperature, then top-k, then top-p, then
softmax and one multinomial draw.
"""
import numbers
from typing import Optional

import torch

CFG_SCHEDULES = ("constant", "linear", "step")


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    """Raise a clear error for sampling settings that are out of range."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (1.0 = the model's distribution), got {temperature}")
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1.0 = off), got {top_p}")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Logits below the k-th largest of their row become -inf (ties with it are kept); k <= 0 keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter (Hugging Face rule): keep the most probable tokens, in order, while the probability mass
    of the tokens ranked above is <= p; the most probable token is always kept. p >= 1 keeps all."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    mass_above = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
    drop_sorted = torch.zeros_like(mass_above, dtype=torch.bool)
    drop_sorted[..., 1:] = mass_above[..., :-1] > p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond). scale 1 = conditional, 0 = unconditional."""
    return uncond + (cond - uncond) * scale


def cfg_scale_at(step: int, num_tokens: int, scale: float, schedule: str = "constant",
                 start_ratio: float = 0.18) -> float:
    """Guidance scale for the token at `step` (0 .. num_tokens - 1) under GigaTok's schedules.

    Step 0 (the prefill, which predicts the first token) always uses the full `scale`. Decode step s >= 1 has
    ratio r = s / (num_tokens - 1) in (0, 1]:
      constant: scale
      linear:   1 + (scale - 1) * r + 1e-4
      step:     scale if r >= start_ratio (or scale == 1), else 1 + 1e-4
    The 1e-4 is GigaTok's: its sampler only guides while the step's scale is > 1, so it keeps guidance on.
    """
    if schedule not in CFG_SCHEDULES:
        raise ValueError(f"cfg_schedule must be one of {CFG_SCHEDULES}, got {schedule!r}")
    if step == 0 or schedule == "constant":
        return scale
    ratio = step / (num_tokens - 1)
    if schedule == "linear":
        return 1.0 + (scale - 1.0) * ratio + 1e-4
    return scale if scale == 1.0 or ratio >= start_ratio else 1.0 + 1e-4


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One token per row: logits B x V -> (B,) int64, drawn with torch.multinomial (from `generator` if given).

    temperature 0 is treated as 1e-5 (near-greedy), as LlamaGen does.
    """
    logits = top_p_filter(top_k_filter(logits.float() / max(temperature, 1e-5), top_k), top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]
