"""Exponential moving average of a model's trainable parameters (Open-MAGVIT2 `LitEma` layout).

Shadows are buffers of this module named like the reference: the parameter name with the dots removed
(`encoder.conv_in.weight` -> `encoderconv_inweight`), plus `decay` (float32) and `num_updates` (int32), so
checkpoints hold `model_ema.*` keys that Open-MAGVIT2 tools and `load_tokenizer` read. Constant decay, no
(1 + n) / (10 + n) warm-up (the reference's setting); `num_updates` counts updates. Shadows are float32 for
float32 / half-precision parameters and float64 for float64 ones (a `precision: 64-true` run): the dtype of the
run, never below float32.
"""
from contextlib import contextmanager
from typing import Mapping

import torch
from torch import nn

EMA_PREFIX = "model_ema."  # of the shadows in a Lightning checkpoint's state_dict


def shadow_name(param_name: str) -> str:
    return param_name.replace(".", "")


def shadow_key(param_name: str) -> str:
    """Checkpoint key of the shadow of parameter `param_name` (its full name in the LightningModule)."""
    return EMA_PREFIX + shadow_name(param_name)


def with_shadows(model: nn.Module, raw: Mapping, state_dict: Mapping, prefix: str = "") -> dict:
    """`raw` (weights by `model`'s own names) with each parameter replaced by its shadow `shadow_key(prefix + name)`
    from `state_dict`; buffers are never averaged and stay raw. A parameter with neither is left out (a strict load
    then reports it)."""
    out = dict(raw)
    for name, _ in model.named_parameters():
        value = state_dict.get(shadow_key(prefix + name), out.get(name))
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


class LitEma(nn.Module):
    def __init__(self, model: nn.Module, decay: float = 0.999):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay_value = decay  # used for updates; the `decay` buffer records it for the reference layout
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.int))
        self.param_names = [name for name, p in model.named_parameters() if p.requires_grad]
        shadows = {}
        for name in self.param_names:
            s = shadow_name(name)
            if s in shadows or s in ("decay", "num_updates"):
                raise ValueError(f"parameter names {shadows.get(s, s)!r} and {name!r} collide once dots are removed")
            shadows[s] = name
        params = dict(model.named_parameters())
        for name in self.param_names:
            p = params[name].detach()
            self.register_buffer(shadow_name(name), p.to(torch.promote_types(p.dtype, torch.float32), copy=True))
        self.register_load_state_dict_post_hook(_keep_configured_decay)

    def _pairs(self, model: nn.Module):
        params = dict(model.named_parameters())
        missing = [n for n in self.param_names if n not in params]
        if missing:
            raise KeyError(f"model has no parameters {missing[:4]} tracked by this EMA; was the model rebuilt?")
        return [params[n] for n in self.param_names], [self._buffers[shadow_name(n)] for n in self.param_names]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow <- decay * shadow + (1 - decay) * param, for every tracked parameter (one fused foreach op)."""
        params, shadows = self._pairs(model)
        torch._foreach_lerp_(shadows, [p.detach().to(s.dtype) for p, s in zip(params, shadows)], 1.0 - self.decay_value)
        self.num_updates += 1

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """shadow <- param (e.g. after DDP has broadcast rank 0's initial weights)."""
        for p, s in zip(*self._pairs(model)):
            s.copy_(p)

    @torch.no_grad()
    def swap(self, model: nn.Module) -> None:
        """Exchange parameter and shadow values in place (no extra copy of the model); calling it twice restores."""
        for p, s in zip(*self._pairs(model)):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)

    @contextmanager
    def average_parameters(self, model: nn.Module):
        """Run the block with the EMA weights in `model`; the live weights are restored afterwards."""
        self.swap(model)
        try:
            yield model
        finally:
            self.swap(model)


def _keep_configured_decay(module: LitEma, incompatible_keys) -> None:
    """After loading a checkpoint the configured decay is the one used and recorded."""
    module.decay.fill_(module.decay_value)
