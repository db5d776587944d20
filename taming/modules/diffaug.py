"""Differentiable augmentation (DiffAug, as in StyleGAN-T) applied to real and fake images before GigaTok's
DINO discriminator: random translation, colour jitter and cutout, drawn independently per image.
"""
from typing import Optional

import torch
from torch import nn


class DiffAug(nn.Module):
    """B x C x H x W -> same shape, float32; every step is differentiable in the input.

    Each image gets each augmentation with probability `prob` (GigaTok: 1.0):
    - translation: integer shift by up to round(translation * size) pixels per axis, zeros shifted in;
    - colour: brightness + U(-0.5, 0.5), saturation x U(0, 2) (around the channel mean), contrast
      x U(0.5, 1.5) (around the image mean);
    - cutout: a zeroed rectangle of round(cutout * H) x round(cutout * W) pixels centred at a random pixel
      (clipped at the borders).
    translation=0, color=False or cutout=0 switch a step off. `generator` (on the images' device) makes
    the draw reproducible. No host synchronisation: all randomness stays on the device.
    """

    def __init__(self, prob: float = 1.0, translation: float = 0.125, color: bool = True, cutout: float = 0.2):
        super().__init__()
        for name, value in (("prob", prob), ("translation", translation), ("cutout", cutout)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"DiffAug {name} must be in [0, 1], got {value}")
        self.prob, self.translation, self.color, self.cutout = prob, translation, color, cutout

    def extra_repr(self) -> str:
        return f"prob={self.prob}, translation={self.translation}, color={self.color}, cutout={self.cutout}"

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"DiffAug expects float images B x C x H x W, got {x.dtype} {tuple(x.shape)}")
        x = x.float()
        b, c, h, w = x.shape
        u = torch.rand(10, b, device=x.device, generator=generator)  # 3 gates + 7 parameters per image
        on = u[:3] < self.prob
        if self.translation > 0:
            x = self._translate(x, u[3], u[4], on[0])
        if self.color:
            y = x + (u[5] - 0.5).view(b, 1, 1, 1)
            mean = y.mean(dim=1, keepdim=True)
            y = (y - mean) * (2 * u[6]).view(b, 1, 1, 1) + mean
            mean = y.mean(dim=(1, 2, 3), keepdim=True)
            y = (y - mean) * (u[7] + 0.5).view(b, 1, 1, 1) + mean
            x = torch.where(on[1].view(b, 1, 1, 1), y, x)
        if self.cutout > 0:
            x = x * self._cutout_mask(x, u[8], u[9], on[2]).unsqueeze(1)
        return x

    def _translate(self, x, u_h, u_w, on):
        b, c, h, w = x.shape
        max_h, max_w = round(h * self.translation), round(w * self.translation)
        shift_h = torch.where(on, (u_h * (2 * max_h + 1)).floor().long() - max_h, 0)
        shift_w = torch.where(on, (u_w * (2 * max_w + 1)).floor().long() - max_w, 0)
        rows = torch.arange(h, device=x.device) + shift_h[:, None]  # B x H: output row i reads row i + shift
        cols = torch.arange(w, device=x.device) + shift_w[:, None]
        x = x.gather(2, rows.clamp(0, h - 1)[:, None, :, None].expand(b, c, h, w))
        x = x.gather(3, cols.clamp(0, w - 1)[:, None, None, :].expand(b, c, h, w))
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        return x * inside.unsqueeze(1)

    def _cutout_mask(self, x, u_h, u_w, on):
        """B x H x W, 0 inside each image's cutout rectangle, 1 elsewhere."""
        b, c, h, w = x.shape
        size_h, size_w = round(h * self.cutout), round(w * self.cutout)
        # centre pixel, as StyleGAN-T: in [0, H) for odd sizes, [0, H] for even ones; start = centre - size // 2
        top = (u_h * (h + 1 - size_h % 2)).floor().long() - size_h // 2
        left = (u_w * (w + 1 - size_w % 2)).floor().long() - size_w // 2
        rows = torch.arange(h, device=x.device) - top[:, None]
        cols = torch.arange(w, device=x.device) - left[:, None]
        cut = ((rows >= 0) & (rows < size_h))[:, :, None] & ((cols >= 0) & (cols < size_w))[:, None, :]
        return (~(cut & on.view(b, 1, 1))).to(x.dtype)
