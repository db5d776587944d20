"""Generation metrics as ADM's evaluator (guided-diffusion `evaluations/evaluator.py`) defines them: FID, sFID,
Inception Score, precision and recall of a sample batch against a reference batch.

Batches are ADM `.npz` files, `arr_0` = uint8 N x H x W x 3, read a batch at a time (constant memory). Features
come from torch-fidelity's port of the TF 2015-12-05 Inception that ADM runs (uint8 input, TF1-compatible bilinear
resize to 299; torch-fidelity documents ~1e-4 relative error per feature and ~1e-6 on FID against the TF graph):
- pool3 (2048): FID, precision/recall;
- `mixed_6/conv` (torch-fidelity's weight conversion maps mixed_6/conv to Mixed_6d.branch1x1: conv, BatchNorm,
  ReLU), first 7 of 192 channels, 17 x 17 x 7 = 2023 values in TF's H, W, C order: sFID;
- logits without the bias (pool3 @ W^T, 1008 classes): IS (ADM multiplies pool3 by the softmax weights only).

ADM reference batches (e.g. `VIRTUAL_imagenet256_labeled.npz`) also store `mu`, `sigma` (pool3) and `mu_s`,
`sigma_s` (spatial), computed by ADM's TF graph over the whole dataset (ImageNet train), while `arr_0` holds a
10,000-image subset used for precision/recall. ADM's FID uses those stored statistics; recomputing them from
`arr_0` gives the statistics of 10,000 images instead (a different, noisier reference).

As in ADM by default: the Inception Score cuts the samples, in order, into consecutive chunks of 5000 (the last
one shorter) and averages the chunks' scores (at 5k-12k samples this differs by 13-34 % from 10 equal parts, which
agree with ADM only at N = 50,000; `splits=` gives equal parts); precision/recall distances are computed in float16
per block and the block is recomputed in float32 only when a value is not finite (ADM's `DistanceBlock`: the float16
rounding decides points near a ball's border, moving precision/recall by ~0.1-0.4 points; `distances="float32"`
is the exact arithmetic); k = 3; `<=` on the ball border.
"""

import hashlib
import json
import os
import re
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from taming.checkpoints import atomic_path
from taming.metrics.fid import FEATURE_DIM, INCEPTION_FILES, GaussianStats
from taming.pretrained import resolve_weight_file

INCEPTION_FILE = INCEPTION_FILES["torch-fidelity"]
EXTRACTOR = "torch-fidelity inception-v3-compat (TF 2015-12-05 Inception)"
SPATIAL_CHANNELS = 7  # ADM: mixed_6/conv[..., :7]
SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17
STATS_KEYS = {"fid": ("mu", "sigma"), "sfid": ("mu_s", "sigma_s")}
STATS_DIMS = {"fid": FEATURE_DIM, "sfid": SPATIAL_DIM}
CACHE_FORMAT = 1


# ------------------------------------------------------------------------------------------- reading batches


class NpzImages:
    """One ADM batch file: `arr_0` uint8 N x H x W x 3 inside an .npz (np.savez or np.savez_compressed).

    Opening reads only the array header and checks the layout; `batches` streams the images in file order.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"batch file {self.path} not found")
        with self._open() as f:
            shape = self._check_header(f)
        self.count, self.height, self.width = shape[:3]

    @contextmanager
    def _open(self):
        try:
            archive = zipfile.ZipFile(self.path)
        except zipfile.BadZipFile:
            with open(self.path, "rb") as f:
                if f.read(6) == b"\x93NUMPY":
                    raise ValueError(f"{self.path} is a .npy array, not an .npz archive; convert it with "
                                     "np.savez(path, np.load(npy_path))") from None
            raise ValueError(f"{self.path} is not a readable .npz archive (cut short, or not an .npz); write batches with "
                             "np.savez(path, images) (images: uint8 N x H x W x 3, stored as arr_0)") from None
        with archive:
            names = archive.namelist()
            if "arr_0.npy" not in names:
                found = sorted(n[:-4] for n in names if n.endswith(".npy"))
                raise ValueError(f"{self.path} has no arr_0 (arrays: {found}); ADM batches store the images as the first "
                                 "positional array: np.savez(path, images)")
            with archive.open("arr_0.npy") as f:
                yield f

    def _check_header(self, f) -> tuple:
        try:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
            shape, fortran, dtype = read(f)
        except (KeyError, ValueError) as err:
            raise ValueError(f"{self.path}: cannot read the header of arr_0 ({err}); re-save it with np.savez") from None
        name = f"{self.path}: arr_0"
        if dtype != np.uint8:
            raise ValueError(f"{name} has dtype {dtype}, ADM batches hold uint8 images in [0, 255]; convert floats in "
                             "[0, 1] with np.clip(np.round(x * 255), 0, 255).astype(np.uint8) (from [-1, 1]: (x + 1) * 127.5)")
        if len(shape) == 4 and shape[1] == 3 and shape[3] != 3:
            raise ValueError(f"{name} has shape {shape}, channels first; ADM batches are N x H x W x 3: "
                             "save x.transpose(0, 2, 3, 1)")
        if len(shape) != 4 or shape[3] != 3:
            raise ValueError(f"{name} has shape {shape}; ADM batches are RGB images N x H x W x 3")
        if fortran:
            raise ValueError(f"{name} is stored in Fortran order; re-save it with np.ascontiguousarray(x)")
        if shape[0] == 0:
            raise ValueError(f"{name} holds no images")
        return shape

    def batches(self, batch_size: int, limit: Optional[int] = None) -> Iterator[np.ndarray]:
        """uint8 arrays b x H x W x 3 (b <= batch_size) of the first `limit` images (default all), in order."""
        n = self.count if limit is None else min(limit, self.count)
        image_bytes = self.height * self.width * 3
        with self._open() as f:
            self._check_header(f)
            for start in range(0, n, batch_size):
                b = min(batch_size, n - start)
                data = bytearray()
                while len(data) < b * image_bytes:
                    try:
                        chunk = f.read(b * image_bytes - len(data))
                    except (EOFError, zipfile.BadZipFile, zlib.error) as err:
                        raise ValueError(f"{self.path}: arr_0 is damaged after image {start} ({type(err).__name__}: "
                                         f"{err}); write the file again") from None
                    if not chunk:
                        raise ValueError(f"{self.path}: arr_0 ends after {start + len(data) // image_bytes} of "
                                         f"{self.count} images (file cut short?); write the file again")
                    data += chunk
                yield np.frombuffer(data, np.uint8).reshape(b, self.height, self.width, 3)


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def npz_paths(specs: Sequence[str]) -> List[Path]:
    """Files, folders (every *.npz inside, in natural name order: shard_2 before shard_10) and glob patterns,
    expanded in the given order."""
    paths = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            found = sorted(path.glob("*.npz"), key=_natural_key)
            if not found:
                raise FileNotFoundError(f"no .npz files in folder {path}")
            paths += found
        elif path.is_file():
            paths.append(path)
        elif any(c in spec for c in "*?["):
            found = sorted((Path(p) for p in glob(os.path.expanduser(spec))), key=_natural_key)
            if not found:
                raise FileNotFoundError(f"no files match {spec!r}")
            paths += found
        else:
            raise FileNotFoundError(f"sample batch {path} not found")
    return paths


def open_batches(specs: Sequence[str]) -> List[NpzImages]:
    """NpzImages for every file of `npz_paths(specs)`; all must have the same resolution."""
    files = [NpzImages(p) for p in npz_paths(specs)]
    sizes = {(f.height, f.width) for f in files}
    if len(sizes) > 1:
        listing = ", ".join(f"{f.path.name}: {f.height}x{f.width}" for f in files)
        raise ValueError(f"sample files have different resolutions ({listing}); evaluate them separately")
    return files


def read_batches(files: Sequence[NpzImages], batch_size: int, limit: Optional[int] = None) -> Iterator[np.ndarray]:
    """The first `limit` images (default all) of the files in order, uint8 b x H x W x 3 batches."""
    left = sum(f.count for f in files) if limit is None else limit
    for f in files:
        if left <= 0:
            break
        for batch in f.batches(batch_size, left):
            left -= len(batch)
            yield batch


def npz_statistics(path) -> dict:
    """The precomputed statistics stored in a reference batch, {"fid": (mu, sigma), "sfid": (mu_s, sigma_s)}
    as float64, for those present (ADM's TF graph, whole dataset)."""
    found = {}
    with np.load(path) as archive:
        for metric, (mu_key, sigma_key) in STATS_KEYS.items():
            if mu_key in archive.files and sigma_key in archive.files:
                mu, sigma, d = archive[mu_key].astype(np.float64), archive[sigma_key].astype(np.float64), STATS_DIMS[metric]
                if mu.shape != (d,) or sigma.shape != (d, d):
                    raise ValueError(f"{path}: {mu_key} {mu.shape} / {sigma_key} {sigma.shape} are not the {d}-d "
                                     f"statistics of ADM's evaluator; use --ref_stats recompute")
                found[metric] = (mu, sigma)
    return found


# ------------------------------------------------------------------------------------------- Inception


class GenerationInception(nn.Module):
    """torch-fidelity's TF-compatible Inception-V3. uint8 images B x H x W x 3 (any size; resized to 299 inside)
    -> {"pool3": B x 2048, "spatial": B x 2023, "logits": B x 1008 (no bias)}, float32. Frozen, eval mode."""

    def __init__(self, weights_path=None, option: Optional[str] = None):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.weights = resolve_weight_file(INCEPTION_FILE, weights_path, option)
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                               feature_extractor_weights_path=str(self.weights))
        self._spatial = None
        self.net.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)  # TF's mixed_6/conv
        self.eval().requires_grad_(False)

    def _keep_spatial(self, module, inputs, output):
        self._spatial = output

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images B x H x W x 3, got {images.dtype} {tuple(images.shape)}")
        pool3, logits = self.net(images.permute(0, 3, 1, 2))
        spatial = self._spatial[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1).float()
        self._spatial = None
        return {"pool3": pool3, "spatial": spatial, "logits": logits}


@dataclass
class Activations:
    """Inception outputs of an image set: Gaussian statistics of pool3 and spatial features (float64, on the
    device) and, when kept, pool3 features N x 2048 and logits N x 1008 (float32, CPU)."""

    count: int
    pool_stats: GaussianStats
    spatial_stats: GaussianStats
    pool3: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None


@torch.no_grad()
def extract(model: GenerationInception, batches, device, keep: Sequence[str] = ("pool3", "logits"),
            progress=None) -> Activations:
    """Run uint8 N x H x W x 3 numpy batches through `model` on `device`. `progress`: optional callable(n_images)."""
    pool_stats, spatial_stats = GaussianStats(FEATURE_DIM, device), GaussianStats(SPATIAL_DIM, device)
    kept = {name: [] for name in keep}
    count = 0
    for batch in batches:
        out = model(torch.from_numpy(batch).to(device, non_blocking=True))
        pool_stats.update(out["pool3"])
        spatial_stats.update(out["spatial"])
        for name in keep:
            kept[name].append(out[name].cpu())
        count += len(batch)
        if progress is not None:
            progress(len(batch))
    if count == 0:
        raise ValueError("no images to evaluate")
    return Activations(count, pool_stats, spatial_stats, **{name: torch.cat(parts) for name, parts in kept.items()})


# ------------------------------------------------------------------------------------------- metrics


ADM_IS_SPLIT_SIZE = 5000
PR_DISTANCES = ("float16", "float32")


def inception_score(logits, split_size: Optional[int] = ADM_IS_SPLIT_SIZE, splits: Optional[int] = None
                    ) -> Tuple[float, float]:
    """Inception Score of pre-softmax logits N x C: the rows, in order, are cut into consecutive chunks of
    `split_size` (ADM: 5000, the last chunk shorter) or, with `splits`, into that many equal parts (boundaries
    i * N // splits); per chunk exp(mean_i KL(p_i || mean_j p_j)). Returns (mean, population std) over chunks (ADM
    reports the mean); each score is in [1, C]. Computed in float64 from log-softmax (ADM: float32 log of the
    softmax)."""
    logits = torch.as_tensor(logits).double()
    if logits.ndim != 2:
        raise ValueError(f"logits must be N x C, got shape {tuple(logits.shape)}")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf; check the Inception weight file and the input images")
    n = len(logits)
    if splits is not None:
        if splits < 1 or n < splits:
            raise ValueError(f"Inception Score with {splits} splits needs at least {splits} samples, got {n}")
        bounds = [(i * n // splits, (i + 1) * n // splits) for i in range(splits)]
    else:
        if split_size is None or split_size < 1 or n < 1:
            raise ValueError(f"Inception Score needs samples and a positive split size, got {n} and {split_size}")
        bounds = [(lo, min(lo + split_size, n)) for lo in range(0, n, split_size)]
    log_p = logits.log_softmax(1)
    p = log_p.exp()
    scores = []
    for lo, hi in bounds:
        chunk, log_chunk = p[lo:hi], log_p[lo:hi]
        marginal = chunk.mean(0)
        kl = (chunk * log_chunk).sum(1) - torch.xlogy(chunk, marginal).sum(1)
        scores.append(kl.mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def _squared_distances(a: torch.Tensor, b: torch.Tensor, distances: str = "float32") -> torch.Tensor:
    """a: n x d, b: m x d -> n x m squared Euclidean distances (clamped at 0, as ADM), in a.dtype. `distances`
    "float16": computed in float16 (norms, product and sum, as ADM's DistanceBlock) and recomputed in float32 when
    any value of the block is not finite."""
    if distances == "float16":
        a16, b16 = a.half(), b.half()
        d = ((a16 * a16).sum(1, keepdim=True) - 2 * a16 @ b16.T + (b16 * b16).sum(1)).clamp_min_(0).to(a.dtype)
        if torch.isfinite(d).all():
            return d
    return ((a * a).sum(1, keepdim=True) - 2 * a @ b.T + (b * b).sum(1)).clamp_min_(0)


def knn_radii(features: torch.Tensor, k: int = 3, batch_size: int = 10000, distances: str = "float32") -> torch.Tensor:
    """Squared distance from each row of `features` N x D to its k-th nearest other row (the point itself is the
    0th), (N,). Distances are formed in batch_size x batch_size blocks, keeping the k + 1 smallest per row."""
    if k < 1:
        raise ValueError(f"k must be at least 1 (k = 0 is the point itself), got {k}")
    if len(features) <= k:
        raise ValueError(f"k-th nearest neighbour radii with k = {k} need more than {k} feature vectors, got {len(features)}")
    radii = []
    for rows in features.split(batch_size):
        nearest = rows.new_empty(len(rows), 0)
        for cols in features.split(batch_size):
            candidates = torch.cat([nearest, _squared_distances(rows, cols, distances)], 1)
            nearest = candidates.topk(min(k + 1, candidates.shape[1]), dim=1, largest=False).values
        radii.append(nearest[:, k])
    return torch.cat(radii)


def precision_recall(real_features, fake_features, k: int = 3, batch_size: int = 10000,
                     distances: str = "float16") -> Tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) as ADM: each set's manifold is the union of balls
    around its points with radius the distance to the point's k-th nearest neighbour in the set. Precision: the
    fraction of fake points inside the real manifold (distance <= some real radius); recall: the fraction of real
    points inside the fake manifold. Features N x D on any device, at most batch_size x batch_size distances at a
    time. `distances`: "float16" (ADM's arithmetic, see `_squared_distances`) or "float32" (exact to float32)."""
    if distances not in PR_DISTANCES:
        raise ValueError(f"distances must be one of {PR_DISTANCES}, got {distances!r}")
    real, fake = torch.as_tensor(real_features), torch.as_tensor(fake_features)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be N x D with the same D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    dtype = torch.promote_types(torch.promote_types(real.dtype, fake.dtype), torch.float32)
    real, fake = real.to(dtype), fake.to(real.device, dtype)
    real_radii = knn_radii(real, k, batch_size, distances)
    fake_radii = knn_radii(fake, k, batch_size, distances)
    real_covered = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    fake_covered = torch.zeros(len(fake), dtype=torch.bool, device=real.device)
    for i in range(0, len(real), batch_size):
        for j in range(0, len(fake), batch_size):
            d = _squared_distances(real[i:i + batch_size], fake[j:j + batch_size], distances)
            real_covered[i:i + batch_size] |= (d <= fake_radii[j:j + batch_size]).any(1)
            fake_covered[j:j + batch_size] |= (d <= real_radii[i:i + batch_size, None]).any(0)
    return fake_covered.double().mean().item(), real_covered.double().mean().item()


# ------------------------------------------------------------------------------------------- reference cache


def file_fingerprint(path) -> dict:
    """{"size_bytes", "sha256"} of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return {"size_bytes": Path(path).stat().st_size, "sha256": digest.hexdigest()}


def reference_cache_file(folder, key: dict) -> Path:
    """<folder>/<reference stem>_<N>_<hash of key>.pt. The key names the reference file by size and SHA-256 (so a
    changed or different file with the same name is never reused), the extractor and its weight file's SHA-256, and
    the number of images."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(folder) / f"{Path(key['reference']).stem}_{key['num_images']}_{digest}.pt"


def reference_cache_key(reference: NpzImages, reference_fingerprint: dict, weights_fingerprint: dict) -> dict:
    return {"format": CACHE_FORMAT, "reference": reference.path.name, "num_images": reference.count,
            "reference_size_bytes": reference_fingerprint["size_bytes"], "reference_sha256": reference_fingerprint["sha256"],
            "extractor": EXTRACTOR, "weights_sha256": weights_fingerprint["sha256"]}


def save_reference(path: Path, key: dict, acts: Activations) -> None:
    """Write the reference's pool3 features and statistics atomically (temporary file in the folder, then rename)."""
    state = {"key": key, "count": acts.count, "pool3": acts.pool3, "pool_stats": acts.pool_stats.state_dict(),
             "spatial_stats": acts.spatial_stats.state_dict()}
    with atomic_path(path, unique=True) as tmp:
        torch.save(state, tmp)


def load_reference(path: Path, key: dict, device) -> Activations:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign file: RuntimeError, EOFError, UnpicklingError, ...
        raise ValueError(f"cannot read cached reference features {path} ({type(err).__name__}: {err}); delete it "
                         "to recompute them") from None
    if not isinstance(state, dict) or state.get("key") != key:
        found = state.get("key") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} holds reference features for {found}, not {key}; delete it")
    return Activations(state["count"], GaussianStats.from_state_dict(state["pool_stats"], device),
                       GaussianStats.from_state_dict(state["spatial_stats"], device), pool3=state["pool3"])
