"""Generation metrics (taming/metrics/generation.py, evaluation_gen.py) against closed forms, brute force,
torch-fidelity's own implementations, and end to end on tiny ADM-format batches with random Inception weights."""
import json
import math
import re

import numpy as np
import pytest
import torch

from taming.cli import evaluation_gen
from taming.metrics.fid import GaussianStats, InceptionFeatures, frechet_distance
from taming.metrics.generation import (Activations, GenerationInception, NpzImages, file_fingerprint, inception_score,
                                       knn_radii, load_reference, npz_paths, npz_statistics, open_batches,
                                       precision_recall, read_batches, reference_cache_file, reference_cache_key,
                                       save_reference)
from helpers import torch_hub_dir

WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"


# ------------------------------------------------------------------------------------------- Inception Score


def test_inception_score_closed_forms():
    rng = np.random.default_rng(0)
    # every sample predicts the same distribution: p_i = marginal, KL = 0
    same = np.tile(rng.normal(size=(1, 7)), (12, 1))
    assert inception_score(same, splits=3) == pytest.approx((1.0, 0.0), abs=1e-12)
    # confident predictions spread evenly over n classes: KL = log n in every split
    n = 5
    confident = np.full((20, 9), -50.0)
    confident[np.arange(20), np.arange(20) % n] = 50.0
    assert inception_score(confident, splits=4) == pytest.approx((n, 0.0), rel=1e-12, abs=1e-12)
    assert inception_score(confident, splits=1)[0] == pytest.approx(n, rel=1e-12)


def test_inception_score_by_hand_with_splits():
    """Four samples, two classes, given probabilities; splits are contiguous in sample order."""
    uniform, left, right = [0.5, 0.5], [0.9, 0.1], [0.1, 0.9]
    # split A = (uniform, uniform): marginal = uniform, KL = 0 -> 1.
    # split B = (left, right): marginal uniform, KL = 0.9 ln 1.8 + 0.1 ln 0.2 for both -> 1.8^0.9 0.2^0.1
    b = 1.8**0.9 * 0.2**0.1
    probs = np.log([uniform, uniform, left, right])
    assert inception_score(probs, splits=2) == pytest.approx(((1 + b) / 2, abs(b - 1) / 2), rel=1e-12)
    # interleaved: (uniform, left) has marginal (0.7, 0.3), so does (uniform, right) mirrored
    kl_uniform = 0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3)
    kl_left = 0.9 * math.log(0.9 / 0.7) + 0.1 * math.log(0.1 / 0.3)
    kl = (kl_uniform + kl_left) / 2
    probs = np.log([uniform, left, uniform, right])
    assert inception_score(probs, splits=2) == pytest.approx((math.exp(kl), 0.0), rel=1e-12, abs=1e-12)
    # one split over all four: marginal (0.5, 0.5), KL = (0 + 0 + 2 * (0.9 ln 1.8 + 0.1 ln 0.2)) / 4
    assert inception_score(probs, splits=1)[0] == pytest.approx(math.exp(math.log(b) / 2), rel=1e-12)


def test_inception_score_matches_torch_fidelity_and_rejects_bad_input():
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.randn(60, 30, generator=torch.Generator().manual_seed(1)) * 3
    for splits in (1, 4, 7):  # 7: unequal chunks, same i * N // splits boundaries in both
        theirs = isc_features_to_metric(logits, splits=splits, shuffle=False)
        ours = inception_score(logits, splits=splits)
        assert ours == pytest.approx((theirs["inception_score_mean"], theirs["inception_score_std"]), rel=1e-12)
        assert 1 <= ours[0] <= 30
    with pytest.raises(ValueError, match="at least 10 samples"):
        inception_score(logits[:9], splits=10)
    with pytest.raises(ValueError, match="N x C"):
        inception_score(logits[0], 1)
    with pytest.raises(ValueError, match="NaN"):
        inception_score(logits.index_fill(1, torch.tensor([0]), math.nan), splits=2)


def test_inception_score_default_is_adms_chunks_of_5000():
    """ADM's evaluator: consecutive chunks of 5000 (the last shorter), mean of exp(mean KL) per chunk; written here
    from its definition in numpy (float64). At N = 12,000: chunks 5000, 5000, 2000, not 10 equal parts."""
    logits = torch.randn(12000, 20, generator=torch.Generator().manual_seed(2)) * 2
    logits[:6000] *= 3  # the chunks differ: where the cuts fall matters
    probs = torch.softmax(logits.double(), 1).numpy()
    chunks = [probs[i:i + 5000] for i in range(0, len(probs), 5000)]
    adm = np.mean([np.exp(np.mean(np.sum(c * (np.log(c) - np.log(c.mean(0, keepdims=True))), 1))) for c in chunks])
    assert len(chunks) == 3 and inception_score(logits)[0] == pytest.approx(adm, rel=1e-10)
    assert inception_score(logits, splits=10)[0] != pytest.approx(adm, rel=1e-3)  # the other convention differs


# ------------------------------------------------------------------------------------------- precision / recall


def brute_force_precision_recall(real, fake, k):
    """Definition, with explicit loops over exact float64 distances."""
    def sq(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    real_radius = np.sort(sq(real, real), axis=1)[:, k]  # index 0 is the point itself
    fake_radius = np.sort(sq(fake, fake), axis=1)[:, k]
    d = sq(real, fake)
    precision = np.mean([any(d[j, i] <= real_radius[j] for j in range(len(real))) for i in range(len(fake))])
    recall = np.mean([any(d[j, i] <= fake_radius[i] for i in range(len(fake))) for j in range(len(real))])
    return precision, recall


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_against_brute_force_and_torch_fidelity(k):
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    rng = np.random.default_rng(k)
    real = rng.normal(size=(41, 5))
    fake = rng.normal(size=(33, 5)) * 1.4 + 0.6
    expected = brute_force_precision_recall(real, fake, k)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # a case where the balls matter
    real_t, fake_t = torch.from_numpy(real), torch.from_numpy(fake)
    for batch_size in (1, 7, 33, 10000):  # blocks smaller than, equal to and larger than the sets
        assert precision_recall(real_t, fake_t, k, batch_size, "float32") == pytest.approx(expected, abs=1e-15)
    radii = knn_radii(real_t, k, batch_size=4)
    d = ((real[:, None] - real[None]) ** 2).sum(-1)
    np.testing.assert_allclose(radii.numpy(), np.sort(d, 1)[:, k], rtol=1e-12)
    # torch-fidelity's PRC (features_1 = generated), float32 as in the CLI
    theirs = calculate_precision_recall_full(fake_t.float(), real_t.float(), k)
    assert precision_recall(real_t.float(), fake_t.float(), k, 8, "float32") == pytest.approx(theirs, rel=1e-6)
    # ADM's float16 distances decide the same here: no point within float16 rounding of a ball's border
    assert precision_recall(real_t, fake_t, k, 8) == pytest.approx(expected, abs=1e-15)


def test_precision_recall_constructed_cases():
    rng = np.random.default_rng(5)
    real = torch.from_numpy(rng.normal(size=(300, 8)))
    assert precision_recall(real, real.clone(), 3, 64, "float32") == (1.0, 1.0)  # each point sits in its own ball
    assert precision_recall(real, real + 1000, 3, 64) == (0.0, 0.0)  # far apart: no point in the other's balls
    # mode collapse at the centre of the real cloud: every sample is realistic, almost no real point is covered
    collapsed = torch.from_numpy(rng.normal(size=(20, 8)) * 1e-3)
    assert precision_recall(real, collapsed, 3, 64) == (1.0, 0.0)
    with pytest.raises(ValueError, match="more than 3 feature vectors"):
        precision_recall(real[:3], collapsed, 3)
    with pytest.raises(ValueError, match="same D"):
        precision_recall(real, collapsed[:, :4], 3)


def test_precision_recall_float16_distances_as_adm():
    """ADM computes each distance block in float16 (recomputed in float32 only when a value is not finite): a sample
    just outside a ball (squared distance 1.0004 vs radius 1) rounds onto its border and counts as inside."""
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.float64)  # k = 1: every real radius is 1
    fake = torch.tensor([[-1.0002], [-1.5], [-2.5]], dtype=torch.float64)
    assert precision_recall(real, fake, 1, distances="float32")[0] == 0.0
    assert precision_recall(real, fake, 1, distances="float16")[0] == pytest.approx(1 / 3)
    # features whose squared norms overflow float16 fall back to float32 for that block: same result as float32
    big = torch.from_numpy(np.random.default_rng(0).normal(size=(50, 4))) * 300
    other = big[:30] + 1
    assert precision_recall(big, other, 3, 16) == precision_recall(big, other, 3, 16, "float32")


# ------------------------------------------------------------------------------------------- FID


def test_fid_of_gaussian_sample_statistics_closed_form():
    """Samples with exactly prescribed sample mean and covariance (commuting covariances Q D Q^T):
    FID = |m1 - m2|^2 + sum (sqrt d1 - sqrt d2)^2, through streaming GaussianStats and frechet_distance."""
    rng = np.random.default_rng(6)
    n, d = 400, 6
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))

    def samples(mean, eigenvalues):
        z = rng.normal(size=(n, d))
        z -= z.mean(0)
        z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # sample covariance exactly I
        return mean + z @ (q * np.sqrt(eigenvalues)).T

    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    d1, d2 = rng.uniform(0.2, 3, d), rng.uniform(0.2, 3, d)
    x, y = samples(m1, d1), samples(m2, d2)
    stats = []
    for data in (x, y):
        s = GaussianStats(d)
        for chunk in np.array_split(data, 7):
            s.update(torch.from_numpy(chunk))
        stats.append(s.mean_cov())
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    assert frechet_distance(*stats[0], *stats[1]) == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------------------------------- reading batches


def test_npz_reading_streams_the_images(tmp_path):
    images = np.random.default_rng(7).integers(0, 256, size=(11, 6, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "plain.npz", images, np.arange(11))  # labels as arr_1 are ignored
    np.savez_compressed(tmp_path / "compressed.npz", arr_0=images)
    for name in ("plain.npz", "compressed.npz"):
        batch_file = NpzImages(tmp_path / name)
        assert (batch_file.count, batch_file.height, batch_file.width) == (11, 6, 5)
        batches = list(batch_file.batches(4))
        assert [len(b) for b in batches] == [4, 4, 3]
        np.testing.assert_array_equal(np.concatenate(batches), images)
        np.testing.assert_array_equal(np.concatenate(list(batch_file.batches(4, limit=6))), images[:6])
    # shards: folder in natural order (part_2 before part_10), limit across files
    (tmp_path / "shards").mkdir()
    np.savez(tmp_path / "shards" / "part_10.npz", images[7:])
    np.savez(tmp_path / "shards" / "part_2.npz", images[:7])
    files = open_batches([str(tmp_path / "shards")])
    assert [f.path.name for f in files] == ["part_2.npz", "part_10.npz"]
    np.testing.assert_array_equal(np.concatenate(list(read_batches(files, 3))), images)
    np.testing.assert_array_equal(np.concatenate(list(read_batches(files, 3, limit=9))), images[:9])
    assert npz_paths([str(tmp_path / "shards" / "part_*.npz")]) == [f.path for f in files]


@pytest.mark.parametrize("array, message", [
    (np.zeros((2, 3, 8, 8), np.uint8), r"channels first.*transpose\(0, 2, 3, 1\)"),
    (np.zeros((2, 8, 8, 3), np.float32), r"dtype float32.*uint8.*np.round\(x \* 255\)"),
    (np.zeros((2, 8, 8), np.uint8), r"shape \(2, 8, 8\).*N x H x W x 3"),
    (np.zeros((0, 8, 8, 3), np.uint8), "holds no images"),
    (np.asfortranarray(np.zeros((2, 8, 8, 3), np.uint8)), "Fortran order"),
])
def test_npz_bad_layouts_are_named(tmp_path, array, message):
    np.savez(tmp_path / "bad.npz", array)
    with pytest.raises(ValueError, match=message):
        NpzImages(tmp_path / "bad.npz")


def test_npz_bad_files_are_named(tmp_path):
    images = np.zeros((4, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "keyword.npz", samples=images)
    with pytest.raises(ValueError, match=r"no arr_0 \(arrays: \['samples'\]\)"):
        NpzImages(tmp_path / "keyword.npz")
    np.save(tmp_path / "plain.npy", images)
    with pytest.raises(ValueError, match=r"plain.npy is a .npy array, not an .npz archive; convert it with np.savez"):
        NpzImages(tmp_path / "plain.npy")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        npz_paths([str(tmp_path / "missing.npz")])
    with pytest.raises(FileNotFoundError, match="no files match"):
        npz_paths([str(tmp_path / "nothing_*.npz")])
    np.savez(tmp_path / "big.npz", np.ones((4, 16, 16, 3), np.uint8))
    np.savez(tmp_path / "small.npz", images)
    with pytest.raises(ValueError, match="different resolutions .*16x16.*8x8"):
        open_batches([str(tmp_path / "big.npz"), str(tmp_path / "small.npz")])
    # an interrupted copy: cut short, uncompressed or compressed
    for name in ("big.npz", "compressed.npz"):
        if name == "compressed.npz":
            np.savez_compressed(tmp_path / name, np.ones((4, 16, 16, 3), np.uint8))
        data = (tmp_path / name).read_bytes()
        (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])
        with pytest.raises(ValueError, match="cut.npz is not a readable .npz archive \\(cut short"):
            NpzImages(tmp_path / "cut.npz")
    rng = np.random.default_rng(11)
    stored = {"mu": rng.normal(size=2048).astype(np.float32), "sigma": np.eye(2048) * 2, "mu_s": rng.normal(size=2023),
              "sigma_s": np.eye(2023)}
    np.savez(tmp_path / "stats.npz", images, **stored)
    found = npz_statistics(tmp_path / "stats.npz")
    assert set(found) == {"fid", "sfid"} and found["fid"][0].dtype == np.float64
    np.testing.assert_array_equal(found["fid"][0], stored["mu"])
    np.testing.assert_array_equal(found["sfid"][1], stored["sigma_s"])
    np.savez(tmp_path / "stats.npz", images, mu=stored["mu"], sigma=stored["sigma"])
    assert set(npz_statistics(tmp_path / "stats.npz")) == {"fid"}
    np.savez(tmp_path / "stats.npz", images)
    assert npz_statistics(tmp_path / "stats.npz") == {}
    np.savez(tmp_path / "stats.npz", images, mu=np.zeros(2048), sigma=np.eye(3))
    with pytest.raises(ValueError, match="not the 2048-d statistics"):
        npz_statistics(tmp_path / "stats.npz")


# ------------------------------------------------------------------------------------------- reference cache


def test_reference_cache_is_keyed_by_file_contents_weights_and_count(tmp_path):
    images = np.random.default_rng(10).integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", images)
    weights = {"size_bytes": 1, "sha256": "a" * 64}

    def cache_path(weights=weights):
        ref = NpzImages(tmp_path / "ref.npz")
        return reference_cache_file(tmp_path / "cache", reference_cache_key(ref, file_fingerprint(ref.path), weights))

    first = cache_path()
    assert first == cache_path() and first.parent == tmp_path / "cache" and first.name.startswith("ref_5_")
    assert cache_path({"size_bytes": 1, "sha256": "b" * 64}) != first  # other extractor weights
    np.savez(tmp_path / "ref.npz", images[::-1])  # same name, size and count, other images
    assert cache_path() != first
    np.savez(tmp_path / "ref.npz", images[:4])
    assert cache_path() != first

    gen = torch.Generator().manual_seed(0)
    pool, spatial = GaussianStats(3), GaussianStats(2)
    pool.update(torch.randn(4, 3, generator=gen))
    spatial.update(torch.randn(4, 2, generator=gen))
    acts = Activations(4, pool, spatial, pool3=torch.randn(4, 3, generator=gen))
    key = {"reference": "ref.npz", "num_images": 4}
    save_reference(first, key, acts)
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]  # written atomically, no temporary left
    loaded = load_reference(first, key, "cpu")
    assert loaded.count == 4 and torch.equal(loaded.pool3, acts.pool3)
    assert np.array_equal(loaded.pool_stats.mean_cov()[1], pool.mean_cov()[1])
    assert np.array_equal(loaded.spatial_stats.mean_cov()[0], spatial.mean_cov()[0])
    with pytest.raises(ValueError, match="holds reference features for .*delete it"):
        load_reference(first, {**key, "num_images": 5}, "cpu")


# ------------------------------------------------------------------------------------------- end to end
# Inception at 299 px costs ~0.3 s per image on a CPU core: these tests push few images, few times.


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Torch hub dir holding random Inception weights in torch-fidelity's file format (a torchvision Inception3
    state dict with 1008 classes), BatchNorm statistics calibrated on upsampled small random images like the
    test batches so that features are O(1)."""
    import torchvision

    hub = tmp_path_factory.mktemp("torch_home") / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    net = torchvision.models.Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running statistics = those of the calibration batch
    calibration = torch.nn.functional.interpolate(torch.rand(2, 3, 24, 24) * 2 - 1, size=(299, 299), mode="bilinear")
    with torch.no_grad():
        net.train()(calibration)
    torch.save(net.state_dict(), hub / "checkpoints" / WEIGHTS)
    with torch_hub_dir(hub):
        yield hub


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    """samples.npz: 5 uint8 images 24 x 24; ref.npz: 4 brighter ones; arrays returned as well."""
    folder = tmp_path_factory.mktemp("batches")
    rng = np.random.default_rng(8)
    samples = rng.integers(0, 256, size=(5, 24, 24, 3), dtype=np.uint8)
    ref = rng.integers(60, 256, size=(4, 24, 24, 3), dtype=np.uint8)
    np.savez(folder / "samples.npz", samples)
    np.savez(folder / "ref.npz", ref)
    return folder, samples, ref


@pytest.fixture(scope="module")
def oracle(hub, batches):
    """Features from torch-fidelity's extractor itself: pool3, unbiased logits, and mixed_6/conv (Mixed_6d.branch1x1)
    reordered to ADM's N x 17 x 17 x 7 layout with numpy."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                      feature_extractor_weights_path=str(hub / "checkpoints" / WEIGHTS)).eval()
    spatial = []
    net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, out: spatial.append(out.numpy()))
    _, samples, ref = batches
    with torch.no_grad():
        pool3, logits = net(torch.from_numpy(np.concatenate([samples, ref])).permute(0, 3, 1, 2))
    spatial = spatial[0].transpose(0, 2, 3, 1)[..., :7].reshape(len(pool3), -1)
    n = len(samples)
    return {"samples": (pool3[:n].numpy(), logits[:n], spatial[:n]), "ref": (pool3[n:].numpy(), logits[n:], spatial[n:])}


def fid_small_n(x, y):
    """FID from sample statistics for n <= d: tr((S1 S2)^1/2) = nuclear norm of A B^T / sqrt((n-1)(m-1))."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    a, b = x - x.mean(0), y - y.mean(0)
    nuclear = np.linalg.svd(a @ b.T, compute_uv=False).sum() / math.sqrt((len(a) - 1) * (len(b) - 1))
    return (np.sum((x.mean(0) - y.mean(0)) ** 2) + (a**2).sum() / (len(a) - 1) + (b**2).sum() / (len(b) - 1)
            - 2 * nuclear)


def fid_to_samples(mu, sigma, y):
    """FID between (mu, sigma) and the sample statistics of y (n x d, n <= d) without d x d eigendecompositions:
    with S2 = B^T B (B the centred samples / sqrt(n - 1)), S1^1/2 S2 S1^1/2 = (B S1^1/2)^T (B S1^1/2) has the
    nonzero eigenvalues of B S1 B^T (n x n)."""
    y = np.asarray(y, np.float64)
    b = (y - y.mean(0)) / math.sqrt(len(y) - 1)
    eigenvalues = np.clip(np.linalg.eigvalsh(b @ sigma @ b.T), 0, None)
    return np.sum((mu - y.mean(0)) ** 2) + np.trace(sigma) + (b**2).sum() - 2 * np.sqrt(eigenvalues).sum()


def expected_metrics(oracle, n, splits=2):
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    (s_pool, s_logits, s_spatial), (r_pool, _, r_spatial) = oracle["samples"], oracle["ref"]
    isc = isc_features_to_metric(s_logits[:n], splits=splits, shuffle=False)
    precision, recall = calculate_precision_recall_full(torch.from_numpy(s_pool[:n]), torch.from_numpy(r_pool), 3)
    return {"num_samples": n, "fid": fid_small_n(r_pool, s_pool[:n]), "sfid": fid_small_n(r_spatial, s_spatial[:n]),
            "inception_score": isc["inception_score_mean"], "inception_score_std": isc["inception_score_std"],
            "precision": precision, "recall": recall}


def run(folder, *extra):
    argv = ["--samples", str(folder / "samples.npz"), "--ref_batch", str(folder / "ref.npz"), "--batch_size", "3",
            "--device", "cpu", "--is_splits", "2", "--output", str(folder / "out.json"), *extra]
    return evaluation_gen.main(argv)


def test_generation_inception_matches_evaluation_extractor(hub, batches, oracle):
    """pool3 equals evaluation.py's torch-fidelity extractor fed the same image as floats in [-1, 1]."""
    _, samples, _ = batches
    model = GenerationInception()
    ours = model(torch.from_numpy(samples[:1]))
    assert {k: tuple(v.shape) for k, v in ours.items()} == {"pool3": (1, 2048), "spatial": (1, 2023), "logits": (1, 1008)}
    floats = torch.from_numpy(samples[:1]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(ours["pool3"], InceptionFeatures("torch-fidelity")(floats))
    np.testing.assert_allclose(ours["spatial"].numpy(), oracle["samples"][2][:1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="uint8 images B x H x W x 3"):
        model(torch.from_numpy(samples[:1]).permute(0, 3, 1, 2))


def test_evaluation_gen_end_to_end_and_reference_cache(hub, batches, oracle):
    folder, samples, ref = batches
    cache = folder / "cache"
    results = run(folder, "--ref_cache", str(cache))
    saved = json.loads((folder / "out.json").read_text())
    assert saved["metrics"] == results and all(math.isfinite(v) for v in results.values())
    expected = expected_metrics(oracle, 5)
    assert results == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert 1 < results["inception_score"] and results["fid"] > 0 and results["sfid"] > 0

    protocol = saved["protocol"]
    assert protocol["num_samples"] == 5 and protocol["resolution"] == [24, 24]
    [entry] = protocol["samples"]
    assert entry["num_images"] == 5 and entry["size_bytes"] == (folder / "samples.npz").stat().st_size
    assert len(entry["sha256"]) == 64 and protocol["reference"]["num_images"] == 4
    assert set(protocol["reference_statistics"]) == {"fid", "sfid"}
    assert all(v.startswith("recomputed") for v in protocol["reference_statistics"].values())
    assert protocol["is_splits"] == "2 equal parts" and protocol["pr_k"] == 3 and protocol["device"] == "cpu"
    assert protocol["inception_weights"] == str(hub / "checkpoints" / WEIGHTS) and protocol["torch"] == torch.__version__
    assert protocol["reference_features"]["source"] == "computed"
    assert any("strongly biased" in w for w in protocol["warnings"])

    # second run: the reference comes from the cache. To see that it is really read, its features are moved far
    # away first: precision/recall drop to 0. (The statistics' round trip: test_reference_cache_is_keyed_...)
    [cache_file] = cache.glob("*.pt")
    assert cache_file.name.startswith("ref_4_") and protocol["reference_features"]["cache"] == str(cache_file)
    state = torch.load(cache_file, weights_only=True)
    state["pool3"] += 1e4
    torch.save(state, cache_file)
    again = run(folder, "--ref_cache", str(cache), "--num_samples", "4", "--metrics", "precision", "recall")
    assert json.loads((folder / "out.json").read_text())["protocol"]["reference_features"]["source"] == "cache"
    assert again == {"num_samples": 4, "precision": 0.0, "recall": 0.0}
    cache_file.write_bytes(cache_file.read_bytes()[:1000])  # cut short
    with pytest.raises(SystemExit, match="cannot read cached reference features .*delete it"):
        run(folder, "--ref_cache", str(cache), "--metrics", "precision")


def test_evaluation_gen_shards_and_stored_reference_statistics(hub, batches, oracle, tmp_path):
    """Samples as a folder of shards (read in natural name order) and a reference batch carrying ADM's
    mu/sigma/mu_s/sigma_s: FID uses those, and no reference pass is needed. (sFID only in the first test: each
    2048-d Frechet distance costs seconds on two CPU cores.)"""
    folder, samples, ref = batches
    shards = tmp_path / "shards"
    shards.mkdir()
    np.savez(shards / "samples_2.npz", samples[:3])
    np.savez(shards / "samples_10.npz", samples[3:])
    rng = np.random.default_rng(9)
    stored = {"mu": rng.normal(size=2048), "sigma": np.cov(rng.normal(size=(30, 2048)), rowvar=False),
              "mu_s": rng.normal(size=2023), "sigma_s": np.cov(rng.normal(size=(30, 2023)), rowvar=False)}
    np.savez(tmp_path / "ref_stats.npz", ref, **stored)
    argv = ["--samples", str(shards), "--ref_batch", str(tmp_path / "ref_stats.npz"), "--metrics", "fid", "is",
            "--is_splits", "2", "--device", "cpu", "--batch_size", "2", "--output", str(tmp_path / "out.json")]
    results = evaluation_gen.main(argv)
    s_pool = oracle["samples"][0]
    expected = expected_metrics(oracle, 5)
    assert results == pytest.approx({
        "num_samples": 5, "inception_score": expected["inception_score"], "inception_score_std": expected["inception_score_std"],
        "fid": fid_to_samples(stored["mu"], stored["sigma"], s_pool)}, rel=1e-5, abs=1e-6)
    protocol = json.loads((tmp_path / "out.json").read_text())["protocol"]
    assert [s["path"] for s in protocol["samples"]] == [str(shards / "samples_2.npz"), str(shards / "samples_10.npz")]
    assert list(protocol["reference_statistics"]) == ["fid"] and protocol["reference_statistics"]["fid"].startswith("npz")
    assert protocol["reference_features"] == {"source": "not needed", "cache": None}  # no reference pass
    # --ref_stats npz on a reference without stored statistics is refused
    with pytest.raises(SystemExit, match="stores no fid statistics; use --ref_stats recompute"):
        evaluation_gen.main(argv[:3] + [str(folder / "ref.npz"), "--metrics", "fid", "--ref_stats", "npz"])


def test_evaluation_gen_input_errors(hub, batches, tmp_path, capsys):
    folder, samples, ref = batches
    np.savez(tmp_path / "big.npz", np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(SystemExit, match="samples are 24x24 px but the reference batch big.npz is 32x32 px.*Resize"):
        run(folder, "--ref_batch", str(tmp_path / "big.npz"))
    np.savez(tmp_path / "chw.npz", samples.transpose(0, 3, 1, 2))
    with pytest.raises(SystemExit, match="channels first"):
        run(folder, "--samples", str(tmp_path / "chw.npz"))
    with pytest.raises(SystemExit, match="--num_samples 7 but the sample files hold 5"):
        run(folder, "--num_samples", "7")
    with pytest.raises(SystemExit, match="batch file .*nope.npz not found"):
        run(folder, "--ref_batch", str(tmp_path / "nope.npz"))
    with pytest.raises(SystemExit, match="at least 10 samples"):
        run(folder, "--is_splits", "10")
    with pytest.raises(SystemExit, match="more than 3 reference images"):
        np.savez(tmp_path / "small_ref.npz", ref[:3])
        run(folder, "--ref_batch", str(tmp_path / "small_ref.npz"), "--metrics", "recall")
    with pytest.raises(SystemExit):  # argparse: the reference is needed for fid
        evaluation_gen.main(["--samples", str(folder / "samples.npz"), "--metrics", "fid"])
    assert "--ref_batch is needed for ['fid']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluation_gen.parse_args(["--help"])
    assert re.search(r"images per Inception batch \(default:\s+200\)", capsys.readouterr().out)
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(SystemExit, match="cannot load the Inception weights .*damaged.pth"):
        run(folder, "--inception_weights", str(damaged))


def test_missing_weight_file_is_reported_before_work(batches, tmp_path):
    folder, _, _ = batches
    with torch_hub_dir(tmp_path / "empty_hub"):
        with pytest.raises(SystemExit) as err:
            run(folder)
    message = str(err.value)
    for expected in (WEIGHTS, str(tmp_path / "empty_hub" / "checkpoints"), "--inception_weights", "Nothing is downloaded"):
        assert expected in message
    with pytest.raises(SystemExit, match="nope.pth.*given by --inception_weights"):
        run(folder, "--inception_weights", str(tmp_path / "nope.pth"))
