"""Video reconstruction metrics from one pass: rFVD (I3D logits, Fréchet distance), per-frame PSNR / SSIM / LPIPS and
codebook usage, accumulated as sums so that ranks evaluating shards reduce to exactly the whole set's values."""
from typing import Sequence

import torch

from ..modules.losses.vqperceptual import frames
from .distributed import all_reduce_sum
from .evaluator import ReconstructionMetrics
from .fid import GaussianStats, frechet_distance
from .i3d import clips_to_uint8, load_i3d, preprocess

VIDEO_METRICS = ("rfvd", "psnr", "ssim", "lpips_alex", "lpips_vgg", "usage")
I3D_CLASSES = 400  # the FVD features: the Kinetics-400 logits, averaged over I3D's output time steps


def i3d_logits(i3d, clips: torch.Tensor) -> torch.Tensor:
    """uint8 clips B x T x H x W x 3 -> B x 400 FVD features (224 x 224 bilinear, [-1, 1], all frames)."""
    device = next(i3d.parameters()).device
    return i3d(preprocess(clips.to(device)))


class VideoReconstructionMetrics:
    """metrics: subset of VIDEO_METRICS. num_clips x frames_per_clip frames feed the per-frame metrics
    (`ReconstructionMetrics`). weight_files: {"rfvd": I3D file, "lpips_*": trunk files}. truncate: the release's
    uint8 conversion for the I3D input (`clips_to_uint8`); False rounds."""

    def __init__(self, metrics: Sequence[str], num_clips: int, frames_per_clip: int, quantizer, weight_files: dict,
                 device, truncate: bool = True):
        unknown = set(metrics) - set(VIDEO_METRICS)
        if unknown:
            raise ValueError(f"unknown video metrics {sorted(unknown)}; choose from {list(VIDEO_METRICS)}")
        self.metrics, self.truncate, self.frames_per_clip = tuple(metrics), truncate, frames_per_clip
        self.device = torch.device(device)
        self.per_frame = ReconstructionMetrics([m for m in metrics if m != "rfvd"], num_clips * frames_per_clip,
                                               quantizer, weight_files, device)
        self.clips = torch.zeros((), dtype=torch.float64, device=self.device)
        if "rfvd" in metrics:
            self.i3d = load_i3d(weight_files["rfvd"], device=self.device)
            self.real_stats = GaussianStats(I3D_CLASSES, device=self.device)
            self.fake_stats = GaussianStats(I3D_CLASSES, device=self.device)

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """B x 3 x T x H x W in [-1, 1] -> B x 400 I3D logits (uint8 round trip, 224 x 224 bilinear, all frames)."""
        return i3d_logits(self.i3d, clips_to_uint8(clips, self.truncate))

    @torch.no_grad()
    def update(self, clips: torch.Tensor, recon: torch.Tensor, indices: torch.Tensor, positions: torch.Tensor) -> None:
        """clips, recon: B x 3 x T x H x W in [-1, 1] (recon clamped here); positions: (B,) dataset positions."""
        recon = recon.clamp(-1, 1)
        t = clips.shape[2]
        frame_positions = (positions.to(self.device)[:, None] * t + torch.arange(t, device=self.device)).flatten()
        self.per_frame.update(frames(clips), frames(recon), indices, frame_positions)
        self.clips += clips.shape[0]
        if "rfvd" in self.metrics:
            self.real_stats.update(self.features(clips))
            self.fake_stats.update(self.features(recon))

    def compute(self) -> dict:
        """Reduce over ranks (every rank calls it once) -> {"num_clips", "num_frames", "rfvd", "psnr", ...}."""
        results = self.per_frame.compute()
        results.pop("psnr_batch_legacy", None)  # an image-table convention
        all_reduce_sum(self.clips)
        results = {"num_clips": int(self.clips.item()), "num_frames": results.pop("num_images"), **results}
        if "rfvd" in self.metrics:
            self.real_stats.all_reduce()
            self.fake_stats.all_reduce()
            results["rfvd"] = frechet_distance(*self.real_stats.mean_cov(), *self.fake_stats.mean_cov())
        return results
