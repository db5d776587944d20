"""Pixel metrics on the device: uint8 quantisation, per-image PSNR/SSIM, the reference's batch PSNR.

Images enter as float B x 3 x H x W in [-1, 1]. PSNR and SSIM are computed on the images a user would
save: rounded to uint8 (`to_uint8`), then scaled to [0, 1] (data range 1). Open-MAGVIT2 truncated
instead of rounding (`to_uint8_truncated`); that is kept only for `psnr_batch_legacy`.
"""

import torch
import torch.nn.functional as F

SSIM_WINDOW = 7  # skimage default: 7 x 7 uniform window, sample covariance, K1 0.01, K2 0.03


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 in [0, 255], rounded to nearest (values outside [-1, 1] clamped)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_uint8_truncated(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 as Open-MAGVIT2's evaluation did it: ((x + 1) / 2 * 255) cast (truncated)."""
    return ((x.clamp(-1, 1) + 1) / 2 * 255.0).to(torch.uint8)


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared difference of two uint8 batches, in [0, 1] units, float64 (B,)."""
    diff = (a.double() - b.double()) / 255.0
    return diff.square().flatten(1).mean(1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of two uint8 batches B x C x H x W, data range 1 (B,), float64.

    Identical images give +inf (as skimage does).
    """
    return 10 * torch.log10(1.0 / mse(a, b))


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of two uint8 batches B x C x H x W (B,), float64.

    Same definition as `skimage.metrics.structural_similarity(x, y, data_range=1.0, channel_axis=-1)`
    on the images scaled to [0, 1]: 7 x 7 uniform window, sample covariance (49/48), K1 0.01, K2 0.03,
    SSIM map averaged over the positions where the window fits (skimage crops 3 px on each side),
    then over channels.
    """
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} x {SSIM_WINDOW} pixels, got {tuple(a.shape[-2:])}")
    x, y = a.double() / 255.0, b.double() / 255.0
    n = x.shape[1]
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    ux, uy, uxx, uyy, uxy = F.avg_pool2d(stacked, SSIM_WINDOW, stride=1).split(n, dim=1)
    cov_norm = SSIM_WINDOW**2 / (SSIM_WINDOW**2 - 1)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def psnr_batch_legacy(image_mse: torch.Tensor, batch_size: int) -> float:
    """Open-MAGVIT2's reported PSNR: mean over consecutive batches of PSNR(whole batch), data range 1.

    `image_mse`: per-image MSE of the truncated uint8 images (in [0, 1] units) in dataset order (equal
    sizes, so a batch's MSE is the mean of its images'); the last batch may be smaller (the reference's
    loader kept it). Depends on `batch_size` and is <= the mean per-image PSNR. A batch of identical
    images has PSNR +inf (as skimage), and so has the mean.
    """
    if image_mse.numel() == 0:
        raise ValueError("psnr_batch_legacy needs at least one image")
    image_mse = image_mse.detach().double().cpu()
    batch_of_image = torch.arange(len(image_mse)) // batch_size
    batch_mse = torch.zeros(int(batch_of_image[-1]) + 1, dtype=torch.float64).index_add_(0, batch_of_image, image_mse)
    batch_mse /= torch.bincount(batch_of_image)
    return (10 * torch.log10(1.0 / batch_mse)).mean().item()
