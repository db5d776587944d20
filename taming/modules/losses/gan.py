"""Adversarial objectives on discriminator logits (PatchGAN maps B x 1 x h x w, or B x L token logits) and LeCam.

Every function computes in the dtype of the run, at least float32: fp16/bf16 logits under autocast are promoted to
float32, float64 logits (precision 64-true) stay float64.
"""
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def per_image_logits(logits: torch.Tensor) -> torch.Tensor:
    """B x ... logits -> B mean logit per image."""
    return at_least_float32(logits).flatten(1).mean(dim=1)


def non_saturating_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Open-MAGVIT2's generator loss -log sigmoid(m_b) = softplus(-m_b), m_b the per-image mean logit; mean over images."""
    return F.softplus(-per_image_logits(logits_fake)).mean()


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """LlamaGen / GigaTok generator loss -mean D(x_hat) over all logits."""
    return -at_least_float32(logits_fake).mean()


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))), means over all logits."""
    return 0.5 * (F.relu(1.0 - at_least_float32(logits_real)).mean() + F.relu(1.0 + at_least_float32(logits_fake)).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """taming's 'vanilla' loss: 0.5 * (mean softplus(-D(x)) + mean softplus(D(x_hat))) over all logits."""
    return 0.5 * (F.softplus(-at_least_float32(logits_real)).mean() + F.softplus(at_least_float32(logits_fake)).mean())


def non_saturating_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Sigmoid cross-entropy on per-image mean logits, real labelled 1 and fake 0 (the G loss's counterpart):
    mean softplus(-m_real) + mean softplus(m_fake)."""
    return F.softplus(-per_image_logits(logits_real)).mean() + F.softplus(per_image_logits(logits_fake)).mean()


G_LOSSES = {"non_saturating": non_saturating_g_loss, "hinge": hinge_g_loss}
D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss, "non_saturating": non_saturating_d_loss}


class LeCamEMA(nn.Module):
    """LeCam regulariser (Tseng et al. 2021) with EMAs of the mean real/fake logits as buffers.

    The averages are global: under DDP the batch means are taken over the logits of all ranks (one all-reduce of
    the sums and counts) before the update, so every rank holds the same values. (Open-MAGVIT2 kept one average per
    GPU, from its own shard, as Python floats that were lost on resume.) The buffers are saved in checkpoints, so a
    resumed run continues them. `next_state` is pure: the caller commits the new averages with `commit` only for
    accepted (finite) training steps, never in validation.
    """

    def __init__(self, decay: float = 0.999):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"LeCam EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.register_buffer("logits_real_ema", torch.zeros(()))
        self.register_buffer("logits_fake_ema", torch.zeros(()))

    def next_state(self, logits_real: torch.Tensor, logits_fake: torch.Tensor):
        """EMAs after seeing this batch: e <- decay * e + (1 - decay) * mean(logits of all ranks)."""
        real, fake = logits_real.detach(), logits_fake.detach()
        dtype = self.logits_real_ema.dtype
        stats = torch.stack([real.sum(dtype=dtype), fake.sum(dtype=dtype),
                             real.new_full((), real.numel(), dtype=dtype), fake.new_full((), fake.numel(), dtype=dtype)])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        w = 1.0 - self.decay
        return (torch.lerp(self.logits_real_ema, stats[0] / stats[2], w),
                torch.lerp(self.logits_fake_ema, stats[1] / stats[3], w))

    @staticmethod
    def penalty(logits_real, logits_fake, real_ema, fake_ema) -> torch.Tensor:
        """mean(relu(D(x) - fake_ema)^2) + mean(relu(real_ema - D(x_hat))^2)."""
        return (F.relu(at_least_float32(logits_real) - fake_ema).pow(2).mean()
                + F.relu(real_ema - at_least_float32(logits_fake)).pow(2).mean())

    @torch.no_grad()
    def commit(self, real_ema: torch.Tensor, fake_ema: torch.Tensor) -> None:
        self.logits_real_ema.copy_(real_ema)
        self.logits_fake_ema.copy_(fake_ema)

    def extra_repr(self) -> str:
        return f"decay={self.decay}"
