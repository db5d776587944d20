"""Frechet Inception distance: Inception-V3 pool3 features, streaming Gaussian statistics, the distance.

Two extractors, same 2015-12-05 TF Inception weights, different input handling:
- "pytorch-fid" (default, as Open-MAGVIT2): float images in [0, 1], torch bilinear resize to 299
  (align_corners=False), no uint8 round trip. Weight file `pt_inception-2015-12-05-6726825d.pth`.
- "torch-fidelity": uint8 images (rounded), TF1-compatible bilinear resize; matches the TF Inception
  of the ADM evaluator to ~1e-6 relative FID (LlamaGen/MaskBit tables). File
  `weights-inception-2015-12-05-6726825d.pth`.
"""

from typing import Optional

import numpy as np
import torch
from torch import nn

from taming.metrics.distributed import all_reduce_sum
from taming.metrics.image import to_uint8
from taming.pretrained import resolve_weight_file

INCEPTION_FILES = {
    "pytorch-fid": "pt_inception-2015-12-05-6726825d.pth",
    "torch-fidelity": "weights-inception-2015-12-05-6726825d.pth",
}
INCEPTION_INPUT = {  # what each extractor is fed (recorded in evaluation protocols)
    "pytorch-fid": "float in [0, 1], torch bilinear resize to 299 (align_corners=False), no uint8 round trip",
    "torch-fidelity": "uint8 (rounded), TF1-compatible bilinear resize to 299",
}
FEATURE_DIM = 2048


class InceptionFeatures(nn.Module):
    """Images B x 3 x H x W in [-1, 1] (float) -> pool3 features B x 2048 (float32). Frozen, eval mode."""

    def __init__(self, extractor: str = "pytorch-fid", weights_path=None, option: Optional[str] = None):
        super().__init__()
        if extractor not in INCEPTION_FILES:
            raise ValueError(f"FID extractor must be one of {sorted(INCEPTION_FILES)}, got {extractor!r}")
        self.extractor = extractor
        weights = resolve_weight_file(INCEPTION_FILES[extractor], weights_path, option)
        if extractor == "pytorch-fid":
            self.net = _pytorch_fid_inception(weights)
        else:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.extractor == "pytorch-fid":
            return self.net((x.float() + 1) / 2)[0].flatten(1)
        return self.net(to_uint8(x))[0]


def _pytorch_fid_inception(weights) -> nn.Module:
    """pytorch-fid's `InceptionV3([3])` (its exact architecture and input handling) with its weights read
    from `weights`: pytorch-fid only knows its download URL, so its loader is pointed at the file."""
    from pytorch_fid import inception

    def load_resolved_file(url, *args, **kwargs):
        return torch.load(weights, map_location="cpu", weights_only=True)

    download = inception.load_state_dict_from_url
    inception.load_state_dict_from_url = load_resolved_file
    try:
        return inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]])
    finally:
        inception.load_state_dict_from_url = download


class GaussianStats:
    """Streaming mean and covariance of feature vectors: count, sum and sum of outer products in float64
    on the features' device. The sums are exactly additive, so shards merge by summation (`all_reduce`)."""

    def __init__(self, dim: int = FEATURE_DIM, device=None):
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of features N x dim."""
        f = features.to(self.sum.device, torch.float64)
        self.count += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def all_reduce(self) -> None:
        for t in (self.count, self.sum, self.outer):
            all_reduce_sum(t)

    def mean_cov(self) -> tuple:
        """Mean (dim,) and unbiased covariance (dim, dim) as float64 numpy, like np.cov(rowvar=False)."""
        n = self.count.item()
        if n < 2:
            raise ValueError(f"covariance needs at least 2 feature vectors, got {int(n)}")
        mean = self.sum / n
        cov = (self.outer - n * torch.outer(mean, mean)) / (n - 1)
        return mean.cpu().numpy(), cov.cpu().numpy()

    def state_dict(self) -> dict:
        return {"count": self.count.cpu(), "sum": self.sum.cpu(), "outer": self.outer.cpu()}

    @classmethod
    def from_state_dict(cls, state: dict, device=None) -> "GaussianStats":
        stats = cls(state["sum"].numel(), device)
        for name in ("count", "sum", "outer"):
            getattr(stats, name).copy_(state[name])
        return stats


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)) in float64.

    The trace term is computed as tr((S1^(1/2) S2 S1^(1/2))^(1/2)) (same value: the two matrices are similar)
    from two symmetric eigendecompositions, with eigenvalues below round-off set to 0. It agrees with
    pytorch-fid's scipy `sqrtm(S1 @ S2)` to ~1e-12 relative on full-rank covariances, stays exact where sqrtm
    loses ~1e-5 (rank-deficient covariances: fewer images than feature dimensions), and is ~10x faster.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    diff = mu1 - mu2
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(_psd_eigenvalues((middle + middle.T) / 2)).sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def _psd_eigenvalues(matrix: np.ndarray, vectors: bool = False):
    """Eigenvalues (and vectors) of a symmetric PSD matrix, those below round-off (d * eps * largest) set to 0."""
    w, v = np.linalg.eigh(matrix) if vectors else (np.linalg.eigvalsh(matrix), None)
    w = np.where(w > len(w) * np.finfo(np.float64).eps * max(w.max(), 0.0), w, 0.0)
    return (w, v) if vectors else w


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    w, v = _psd_eigenvalues(matrix, vectors=True)
    return (v * np.sqrt(w)) @ v.T
