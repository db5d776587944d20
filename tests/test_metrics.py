"""Metric maths against closed forms, skimage and brute force; exact reduction across two gloo ranks."""
import math
from collections import Counter

import numpy as np
import pytest
import torch
from scipy import linalg
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from taming.metrics.evaluator import ReconstructionMetrics
from taming.metrics.fid import GaussianStats, frechet_distance
from taming.metrics.image import psnr, psnr_batch_legacy, ssim, to_uint8, to_uint8_truncated
from taming.metrics.usage import CodebookUsage
from taming.modules.quantizers import LFQ
from helpers import spawn_gloo


def random_spd(rng, d, scale=1.0):
    a = rng.normal(size=(d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


# ------------------------------------------------------------------------------------------- Frechet distance


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    d = 8
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s = random_spd(rng, d)
    assert frechet_distance(mu1, s, mu1, s) == pytest.approx(0, abs=1e-9)
    # equal covariances: only the means differ
    assert frechet_distance(mu1, s, mu2, s) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-9)
    # commuting covariances Q diag(a) Q^T, Q diag(b) Q^T: sum (sqrt a - sqrt b)^2
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T) == pytest.approx(expected, rel=1e-9)
    # general (non-commuting) case, against the reference's formula with scipy's sqrtm(S1 S2)
    s1, s2 = random_spd(rng, d), random_spd(rng, d, 2.0)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_rank_deficient_covariances_exact():
    """n < d samples: tr((S1 S2)^1/2) = nuclear norm of A B^T / (n - 1), A and B the centred samples."""
    rng = np.random.default_rng(1)
    n, d = 5, 64
    x = rng.gamma(2.0, size=(n, d))
    y = x + rng.normal(size=(n, d))
    a, b = x - x.mean(0), y - y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    nuclear = np.linalg.svd(a @ b.T, compute_uv=False).sum() / (n - 1)
    expected = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(s1) + np.trace(s2) - 2 * nuclear
    assert frechet_distance(x.mean(0), s1, y.mean(0), s2) == pytest.approx(expected, rel=1e-10)


def test_gaussian_stats_streaming_equals_batch():
    rng = np.random.default_rng(2)
    feats = rng.gamma(2.0, size=(257, 32))  # non-negative like pooled ReLU features
    stats = GaussianStats(32)
    for chunk in np.array_split(feats, [1, 50, 51, 200]):
        stats.update(torch.from_numpy(chunk).float())
    mean, cov = stats.mean_cov()
    f32 = feats.astype(np.float32).astype(np.float64)  # what update saw
    np.testing.assert_allclose(mean, f32.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(f32, rowvar=False), rtol=1e-10, atol=1e-12)
    restored = GaussianStats.from_state_dict(stats.state_dict())
    np.testing.assert_array_equal(restored.mean_cov()[1], cov)
    with pytest.raises(ValueError, match="at least 2"):
        GaussianStats(4).mean_cov()


# ------------------------------------------------------------------------------------------- PSNR / SSIM


def test_uint8_rounding_and_truncation():
    # (x + 1) * 127.5 = 100.6 -> rounded 101, truncated 100
    x = torch.full((1, 3, 2, 2), 100.6 / 127.5 - 1)
    assert to_uint8(x).unique().tolist() == [101]
    assert to_uint8_truncated(x).unique().tolist() == [100]
    assert to_uint8(torch.tensor([-1.5, 1.5])).tolist() == [0, 255]


def test_psnr_per_image_by_hand_and_against_skimage(sample_images):
    a = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    b = a.clone()
    b[0] += 10  # MSE (10/255)^2 -> 20 log10(25.5)
    b[1, :, :4] = 51  # half the values off by 51/255 -> MSE 0.5 * 0.2^2
    expected = [20 * math.log10(25.5), 10 * math.log10(1 / (0.5 * 0.04))]
    assert psnr(a, b).tolist() == pytest.approx(expected, rel=1e-12)

    photos = to_uint8(sample_images)
    noisy = to_uint8(sample_images + 0.1 * torch.randn(sample_images.shape, generator=torch.Generator().manual_seed(0)))
    ours = psnr(photos, noisy)
    for i in range(4):
        ref = peak_signal_noise_ratio(photos[i].numpy() / 255.0, noisy[i].numpy() / 255.0, data_range=1.0)
        assert ours[i].item() == pytest.approx(ref, rel=1e-12)


def test_psnr_batch_legacy_matches_reference_definition():
    """Open-MAGVIT2: per batch of 4, skimage PSNR of the whole (truncated uint8 / 255) batch arrays, averaged."""
    gen = torch.Generator().manual_seed(3)
    real = torch.rand(10, 3, 16, 16, generator=gen) * 2 - 1
    fake = (real + 0.2 * torch.randn(10, 3, 16, 16, generator=gen)).clamp(-1, 1)
    r8, f8 = to_uint8_truncated(real), to_uint8_truncated(fake)
    per_batch = [
        peak_signal_noise_ratio(r8[i:i + 4].numpy().astype(np.float32) / 255.0, f8[i:i + 4].numpy().astype(np.float32) / 255.0)
        for i in range(0, 10, 4)  # batches 4, 4, 2 (the last, smaller one kept)
    ]
    image_mse = ((r8.double() - f8.double()) / 255).square().flatten(1).mean(1)
    assert psnr_batch_legacy(image_mse, 4) == pytest.approx(np.mean(per_batch), rel=1e-5)
    assert psnr_batch_legacy(image_mse, 4) <= psnr(r8, f8).mean().item()
    assert psnr_batch_legacy(image_mse, 1) == pytest.approx(psnr(r8, f8).mean().item(), rel=1e-12)
    assert psnr_batch_legacy(torch.tensor([0.0, 0.0, 0.01]), 2) == math.inf  # skimage: identical batch -> inf


@pytest.mark.parametrize("shape", [(32, 32), (24, 40)])
def test_ssim_matches_skimage(shape, sample_images):
    gen = torch.Generator().manual_seed(4)
    photos = torch.nn.functional.interpolate(sample_images, size=shape, mode="bilinear", antialias=True)
    blurred = torch.nn.functional.avg_pool2d(photos, 3, stride=1, padding=1) + 0.05 * torch.randn(4, 3, *shape, generator=gen)
    a, b = to_uint8(photos), to_uint8(blurred)
    ours = ssim(a, b)
    for i in range(4):
        x = a[i].permute(1, 2, 0).numpy().astype(np.float64) / 255.0
        y = b[i].permute(1, 2, 0).numpy().astype(np.float64) / 255.0
        ref = structural_similarity(x, y, data_range=1.0, channel_axis=-1)
        assert ours[i].item() == pytest.approx(ref, abs=1e-10)
    assert ssim(a, a).tolist() == pytest.approx([1.0] * 4)
    with pytest.raises(ValueError, match="at least 7"):
        ssim(a[..., :6, :6], b[..., :6, :6])


# ------------------------------------------------------------------------------------------- codebook usage


@pytest.mark.parametrize("bit_order", ["msb", "lsb"])
def test_codebook_usage_against_brute_force(bit_order):
    d = 6
    gen = torch.Generator().manual_seed(5)
    # +-1 codes with a per-channel bias, so bit balances differ by channel
    bias = torch.linspace(0.1, 0.9, d)
    codes = torch.where(torch.rand(3, 5, 7, d, generator=gen) < bias, 1, -1)
    weights = 2 ** (d - 1 - torch.arange(d)) if bit_order == "msb" else 2 ** torch.arange(d)
    indices = ((codes > 0).long() * weights).sum(-1)  # channel c carries bit weights[c]

    usage = CodebookUsage(2**d, d, bit_order)
    usage.update(indices[:2])
    usage.update(indices[2])
    summary = usage.summary()

    counts = Counter(indices.flatten().tolist())
    n = indices.numel()
    assert summary["tokens"] == n
    assert summary["codes_used"] == len(counts)
    assert summary["usage"] == len(counts) / 2**d
    entropy = -sum(c / n * math.log2(c / n) for c in counts.values())
    assert summary["entropy_bits"] == pytest.approx(entropy, rel=1e-12)
    assert summary["perplexity"] == pytest.approx(2**entropy, rel=1e-12)
    expected_balance = (codes > 0).double().flatten(0, 2).mean(0)
    assert summary["bit_balance"] == pytest.approx(expected_balance.tolist(), rel=1e-12)


def test_codebook_usage_of_a_vq_codebook_has_no_bit_balance():
    usage = CodebookUsage(10)
    usage.update(torch.tensor([[3, 3, 9], [0, 3, 9]]))
    summary = usage.summary()
    assert "bit_balance" not in summary and summary["codes_used"] == 3 and summary["usage"] == 0.3


def test_codebook_usage_rejects_out_of_range():
    usage = CodebookUsage(16)
    with pytest.raises(ValueError, match="index >= 16"):
        usage.update(torch.tensor([3, 16]))
    with pytest.raises(ValueError, match="no tokens"):
        usage.summary()


# ------------------------------------------------------------------------------------------- sharded reduction


def _sharded_metrics(images, recon, indices, rank, world):
    metrics = ReconstructionMetrics(["psnr", "ssim", "usage"], len(images), LFQ(dim=6), {}, "cpu", legacy_batch_size=4)
    stats = GaussianStats(8)
    feats = images.flatten(1)[:, :8].double() * 3
    for start in range(rank * 2, len(images), world * 2):  # blocks of 2 images, round robin
        block = slice(start, start + 2)
        metrics.update(images[block], recon[block], indices[block], torch.arange(len(images))[block])
        stats.update(feats[block])
    stats.all_reduce()
    return metrics.compute(), stats.mean_cov()


def _worker(rank, world, images, recon, indices, result_path):
    result = _sharded_metrics(images, recon, indices, rank, world)
    if rank == 0:
        torch.save(result, result_path)


def test_sharded_reduction_equals_single_process(tmp_path):
    gen = torch.Generator().manual_seed(6)
    images = torch.rand(11, 3, 16, 16, generator=gen) * 2 - 1
    recon = images + 0.1 * torch.randn(11, 3, 16, 16, generator=gen)
    indices = torch.randint(0, 64, (11, 2, 2), generator=gen)
    single, (mean1, cov1) = _sharded_metrics(images, recon, indices, 0, 1)

    spawn_gloo(_worker, images, recon, indices, str(tmp_path / "rank0.pt"))
    sharded, (mean2, cov2) = torch.load(tmp_path / "rank0.pt", weights_only=False)  # written by this test

    assert sharded["num_images"] == single["num_images"] == 11
    for key in ("psnr", "ssim", "psnr_batch_legacy", "codebook_usage", "codebook_entropy_bits"):
        assert sharded[key] == pytest.approx(single[key], rel=1e-12), key
    assert sharded["codebook_bit_balance"] == single["codebook_bit_balance"]
    np.testing.assert_allclose(mean2, mean1, rtol=1e-13)
    np.testing.assert_allclose(cov2, cov1, rtol=1e-11, atol=1e-13)
