"""Adversarial objectives on PatchGAN logit maps (B x 1 x h x w) and the LeCam regulariser.

All functions return a scalar computed in float32, whatever the dtype of the logits (fp16 under autocast).
"""
import torch
import torch.nn.functional as F
from torch import nn


def per_image_logits(logits: torch.Tensor) -> torch.Tensor:
    """B x ... patch logits -> B mean logit per image (float32)."""
    return logits.float().flatten(1).mean(dim=1)


def non_saturating_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator loss -log sigmoid(m_b) = softplus(-m_b), m_b the per-image mean logit; mean over images."""
    return F.softplus(-per_image_logits(logits_fake)).mean()


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))), means over all patch logits."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """taming's 'vanilla' loss: 0.5 * (mean softplus(-D(x)) + mean softplus(D(x_hat))) over all patch logits."""
    return 0.5 * (F.softplus(-logits_real.float()).mean() + F.softplus(logits_fake.float()).mean())


def non_saturating_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Sigmoid cross-entropy on per-image mean logits, real labelled 1 and fake 0 (the G loss's counterpart):
    mean softplus(-m_real) + mean softplus(m_fake)."""
    return F.softplus(-per_image_logits(logits_real)).mean() + F.softplus(per_image_logits(logits_fake)).mean()


D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss, "non_saturating": non_saturating_d_loss}


class LeCamEMA(nn.Module):
    """LeCam regulariser (Tseng et al. 2021) with EMAs of the mean real/fake logits as float32 buffers.

    The buffers are saved in checkpoints, so a resumed run continues them. `next_state` is pure: the caller
    commits the new averages with `commit` only for accepted (finite) training steps, never in validation.
    """

    def __init__(self, decay: float = 0.999):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"LeCam EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.register_buffer("logits_real_ema", torch.zeros(()))
        self.register_buffer("logits_fake_ema", torch.zeros(()))

    def next_state(self, logits_real: torch.Tensor, logits_fake: torch.Tensor):
        """EMAs after seeing this batch: e <- decay * e + (1 - decay) * mean(logits)."""
        w = 1.0 - self.decay
        real = torch.lerp(self.logits_real_ema, logits_real.detach().float().mean(), w)
        fake = torch.lerp(self.logits_fake_ema, logits_fake.detach().float().mean(), w)
        return real, fake

    @staticmethod
    def penalty(logits_real, logits_fake, real_ema, fake_ema) -> torch.Tensor:
        """mean(relu(D(x) - fake_ema)^2) + mean(relu(real_ema - D(x_hat))^2)."""
        return (F.relu(logits_real.float() - fake_ema).pow(2).mean()
                + F.relu(real_ema - logits_fake.float()).pow(2).mean())

    @torch.no_grad()
    def commit(self, real_ema: torch.Tensor, fake_ema: torch.Tensor) -> None:
        self.logits_real_ema.copy_(real_ema)
        self.logits_fake_ema.copy_(fake_ema)

    def extra_repr(self) -> str:
        return f"decay={self.decay}"
