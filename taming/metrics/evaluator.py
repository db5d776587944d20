"""All reconstruction metrics from one pass: feed (original, reconstruction, indices) batches, reduce, report.

Everything is accumulated as sums on the device, so ranks that each see a shard give, after `all_reduce`,
exactly the statistics of the whole set. The only per-batch host syncs are the two inside CUDA `torch.bincount`
(it reads the index range to size its output); nothing else in `update` waits for the device.
"""

from typing import Optional, Sequence

import torch

from taming.metrics.distributed import all_reduce_sum
from taming.metrics.fid import INCEPTION_FILES, GaussianStats, InceptionFeatures, frechet_distance
from taming.metrics.image import mse, psnr, psnr_batch_legacy, ssim, to_uint8, to_uint8_truncated
from taming.metrics.usage import CodebookUsage
from taming.pretrained import LPIPS_TRUNK_FILES, build_lpips, resolve_weight_file

METRICS = ("rfid", "psnr", "ssim", "lpips_alex", "lpips_vgg", "usage")
WEIGHT_OPTIONS = {"rfid": "--inception_weights", "lpips_alex": "--lpips_alex_weights", "lpips_vgg": "--lpips_vgg_weights"}


def required_weight_files(metrics: Sequence[str], extractor: str, paths: dict, need_real_features: bool = True) -> dict:
    """{metric: resolved weight file} for every metric that needs one; raises one FileNotFoundError listing
    every missing file (with its expected location and option) before any work starts."""
    wanted = {}
    if "rfid" in metrics:
        wanted["rfid"] = INCEPTION_FILES[extractor]
    for net in ("alex", "vgg"):
        if f"lpips_{net}" in metrics:
            wanted[f"lpips_{net}"] = LPIPS_TRUNK_FILES[net]
    resolved, errors = {}, []
    for metric, filename in wanted.items():
        try:
            resolved[metric] = resolve_weight_file(filename, paths.get(metric), WEIGHT_OPTIONS[metric])
        except FileNotFoundError as err:
            errors.append(f"- {metric}: {err}")
    if errors:
        raise FileNotFoundError("pretrained weights missing (nothing is downloaded during a run):\n" + "\n".join(errors))
    return resolved


class ReconstructionMetrics:
    """rFID, per-image PSNR/SSIM, the reference's batch PSNR, LPIPS (AlexNet, VGG) and codebook usage.

    metrics: subset of METRICS. num_images: dataset length (positions for the legacy batch PSNR). quantizer: the
    tokenizer's quantizer (its index space, and bits for the bit balance of LFQ).
    weight_files: from `required_weight_files`. real_stats: precomputed Inception statistics of the
    originals (then the originals are not fed to Inception). legacy_batch_size: the reference's
    evaluation batch size for `psnr_batch_legacy` (4 in Open-MAGVIT2's evaluation.py).
    """

    def __init__(self, metrics: Sequence[str], num_images: int, quantizer, weight_files: dict, device,
                 extractor: str = "pytorch-fid",
                 real_stats: Optional[GaussianStats] = None, legacy_batch_size: int = 4):
        unknown = set(metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {list(METRICS)}")
        self.metrics, self.device, self.legacy_batch_size = tuple(metrics), torch.device(device), legacy_batch_size
        f64 = {"dtype": torch.float64, "device": self.device}
        self.count = torch.zeros((), **f64)
        self.sums = {name: torch.zeros((), **f64) for name in ("psnr", "ssim", "lpips_alex", "lpips_vgg") if name in metrics}
        if "psnr" in metrics:  # per-image MSE of the truncated uint8 images, by dataset position
            self.legacy_mse = torch.zeros(num_images, **f64)
            self.legacy_seen = torch.zeros(num_images, dtype=torch.int32, device=self.device)
        self.lpips = {name: build_lpips(name[len("lpips_"):], weight_files[name]).to(self.device)
                      for name in ("lpips_alex", "lpips_vgg") if name in metrics}
        if "rfid" in metrics:
            self.inception = InceptionFeatures(extractor, weight_files["rfid"]).to(self.device)
            self.real_precomputed = real_stats is not None
            self.real_stats = real_stats if real_stats is not None else GaussianStats(device=self.device)
            self.fake_stats = GaussianStats(device=self.device)
        if "usage" in metrics:
            self.usage = CodebookUsage.of(quantizer, self.device)

    @torch.no_grad()
    def update(self, images: torch.Tensor, recon: torch.Tensor, indices: torch.Tensor, positions: torch.Tensor) -> None:
        """images, recon: B x 3 x H x W in [-1, 1] (recon is clamped here); indices: token indices of the
        batch; positions: (B,) dataset positions of the images (for the legacy batch PSNR)."""
        recon = recon.clamp(-1, 1)
        self.count += images.shape[0]
        if "psnr" in self.metrics or "ssim" in self.metrics:
            real8, fake8 = to_uint8(images), to_uint8(recon)
            if "psnr" in self.metrics:
                self.sums["psnr"] += psnr(real8, fake8).sum()
                positions = positions.to(self.device, non_blocking=True)
                self.legacy_mse[positions] = mse(to_uint8_truncated(images), to_uint8_truncated(recon))
                self.legacy_seen[positions] = 1
            if "ssim" in self.metrics:
                self.sums["ssim"] += ssim(real8, fake8).sum()
        for name, net in self.lpips.items():
            self.sums[name] += net(images, recon).double().sum()
        if "rfid" in self.metrics:
            if not self.real_precomputed:
                self.real_stats.update(self.inception(images))
            self.fake_stats.update(self.inception(recon))
        if "usage" in self.metrics:
            self.usage.update(indices)

    def compute(self) -> dict:
        """Reduce over ranks (every rank calls it, once) and return the metrics as plain Python numbers."""
        all_reduce_sum(self.count)
        for total in self.sums.values():
            all_reduce_sum(total)
        n = self.count.item()
        if n == 0:
            raise ValueError("no images were evaluated (all unreadable?)")
        results = {"num_images": int(n)}
        for name, total in self.sums.items():
            results[name] = total.item() / n
        if "psnr" in self.metrics:
            all_reduce_sum(self.legacy_mse)
            all_reduce_sum(self.legacy_seen)
            results["psnr_batch_legacy"] = psnr_batch_legacy(self.legacy_mse[self.legacy_seen > 0], self.legacy_batch_size)
        if "rfid" in self.metrics:
            if not self.real_precomputed:
                self.real_stats.all_reduce()
            self.fake_stats.all_reduce()
            results["rfid"] = frechet_distance(*self.real_stats.mean_cov(), *self.fake_stats.mean_cov())
        if "usage" in self.metrics:
            self.usage.all_reduce()
            summary = self.usage.summary()
            results.update({"codebook_usage": summary.pop("usage"), **{f"codebook_{k}": v for k, v in summary.items()}})
        return results
