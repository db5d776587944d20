"""evaluation_video.py end to end on the release's tiny video tokenizer and camera-motion videos, against independent
computations (skimage PSNR/SSIM per frame, I3D logits fed to scipy's sqrtm Fréchet distance); protocols; errors;
two ranks equal one process."""
import json

import numpy as np
import pytest
import scipy.linalg
import torch
import yaml
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from taming.cli import evaluation_video
from taming import load_tokenizer
from taming.data import VideoClips
from taming.data.demo import write_demo_videos
from taming.metrics.i3d import I3D_FILE, InceptionI3d, clips_to_uint8, preprocess, random_i3d_state
from taming.metrics.image import to_uint8
from helpers import torch_hub_dir, torchrun_two_ranks

VIDEO_MODEL = "src.Open_MAGVIT2.models.video_lfqgan.VQModel"


@pytest.fixture(scope="module")
def setup(reference_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("video_eval")
    expected = torch.load(reference_dir / "om2_video_tiny_expected.pt", weights_only=False)
    config = root / "release.yaml"
    config.write_text(yaml.safe_dump({"model": {"class_path": VIDEO_MODEL, "init_args": expected["config"]}}))
    for split, seed in (("train", 0), ("test", 1)):
        write_demo_videos(root / "ucf", split, length=4, size=40, frames=20, seed=seed,
                          photos=("astronaut", "coffee", "chelsea", "rocket"))
    hub = root / "torch_home" / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(random_i3d_state(11), hub / "checkpoints" / I3D_FILE)
    return {"root": root, "config": config, "ckpt": reference_dir / "om2_video_tiny.ckpt", "hub": hub}


def run(setup, tmp_path, *extra):
    argv = ["--ckpt_path", str(setup["ckpt"]), "--config_file", str(setup["config"]), "--data_root",
            str(setup["root"] / "ucf"), "--image_size", "32", "--batch_size", "3", "--num_workers", "0",
            "--device", "cpu", "--output", str(tmp_path / "out.json"), *extra]
    with torch_hub_dir(setup["hub"]):
        evaluation_video.main(argv)
    return json.loads((tmp_path / "out.json").read_text())


def frechet_scipy(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_video_evaluation_matches_independent_computation(setup, tmp_path):
    saved = run(setup, tmp_path, "--metrics", "rfvd", "psnr", "ssim", "usage")
    metrics, protocol = saved["metrics"], saved["protocol"]
    assert metrics["num_clips"] == 4 and metrics["num_frames"] == 4 * 17
    assert protocol["split"] == "test" and protocol["crop"] == "center" and protocol["truncate"] is False
    assert protocol["weights"] == "ema" and protocol["token_shape"] == [9, 8, 8]

    tokenizer = load_tokenizer(setup["ckpt"], config=str(setup["config"]))
    clips = VideoClips(str(setup["root"] / "ucf"), split="test", size=32, clip="center", crop="center")
    x = torch.stack([clips[i]["image"] for i in range(len(clips))])
    with torch.no_grad():
        quant, indices = tokenizer.encode(x)
        rec = tokenizer.decode(quant).clamp(-1, 1)
    real8, fake8 = clips_to_uint8(x, truncate=False).numpy(), clips_to_uint8(rec, truncate=False).numpy()
    assert np.array_equal(real8, to_uint8(x).movedim(1, -1).numpy())
    psnrs = [peak_signal_noise_ratio(r, f, data_range=255) for r, f in zip(real8.reshape(-1, 32, 32, 3),
                                                                             fake8.reshape(-1, 32, 32, 3))]
    ssims = [structural_similarity(r / 255.0, f / 255.0, data_range=1.0, channel_axis=-1)
             for r, f in zip(real8.reshape(-1, 32, 32, 3), fake8.reshape(-1, 32, 32, 3))]
    # (the script's batches of 3 may round a pixel differently from this batch of 4: ~1e-8 of the PSNR)
    assert metrics["psnr"] == pytest.approx(np.mean(psnrs), rel=1e-6)
    assert metrics["ssim"] == pytest.approx(np.mean(ssims), rel=1e-4)
    assert metrics["codebook_tokens"] == indices.numel()
    assert metrics["codebook_codes_used"] == len(torch.unique(indices))

    i3d = InceptionI3d()
    i3d.load_state_dict(random_i3d_state(11))
    with torch.no_grad():
        real_logits = i3d.eval()(preprocess(torch.from_numpy(real8))).double().numpy()
        fake_logits = i3d(preprocess(torch.from_numpy(fake8))).double().numpy()
    # 4 clips: a rank-deficient 400 x 400 covariance; the float64 eigen square root and scipy's sqrtm agree closely
    assert metrics["rfvd"] == pytest.approx(frechet_scipy(real_logits, fake_logits), rel=1e-4)


def test_om2_protocol_train_folder_truncation_and_duplicates(setup, tmp_path):
    saved = run(setup, tmp_path, "--protocol", "om2", "--metrics", "psnr", "usage", "--num_clips", "6")
    protocol = saved["protocol"]
    assert protocol["split"] == "train" and protocol["crop"] == "random" and protocol["truncate"] is True
    assert protocol["num_videos"] == 4 and protocol["clips_with_duplicates"] == 10_000
    assert saved["metrics"]["num_clips"] == 6  # the first 6 of the padded list: 4 videos + 2 seeded duplicates
    again = run(setup, tmp_path, "--protocol", "om2", "--metrics", "psnr", "--num_clips", "6")
    assert again["metrics"]["psnr"] == saved["metrics"]["psnr"]  # seeded crops: reproducible


def test_video_evaluation_errors(setup, tmp_path, reference_dir):
    with pytest.raises(SystemExit, match=f"(?s){I3D_FILE}.*--i3d_weights"):
        with torch_hub_dir(tmp_path / "empty_hub"):
            evaluation_video.main(["--ckpt_path", str(setup["ckpt"]), "--config_file", str(setup["config"]),
                                   "--demo", "--device", "cpu", "--image_size", "32", "--output",
                                   str(tmp_path / "x.json")])
    ddconfig = torch.load(reference_dir / "tiny_128style_expected.pt", weights_only=True)["ddconfig"]
    image_config = tmp_path / "image.yaml"
    image_config.write_text(yaml.safe_dump({"model": {"class_path": "taming.models.lfqgan.VQModel",
                                                      "init_args": {"embed_dim": 18, "ddconfig": ddconfig}}}))
    with pytest.raises(SystemExit, match="image tokenizer"):
        evaluation_video.main(["--ckpt_path", str(reference_dir / "tiny_128style.ckpt"), "--config_file",
                               str(image_config), "--demo", "--device", "cpu", "--metrics", "psnr", "--image_size",
                               "32", "--output", str(tmp_path / "x.json")])


def test_two_ranks_equal_one_process(setup, tmp_path):
    metrics = ["psnr", "ssim", "usage"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run(setup, tmp_path, "--metrics", *metrics, "--batch_size", "1")["metrics"]
    finally:
        torch.set_num_threads(threads)
    argv = ["--ckpt_path", str(setup["ckpt"]), "--config_file", str(setup["config"]), "--data_root",
            str(setup["root"] / "ucf"), "--image_size", "32", "--batch_size", "1", "--num_workers", "0", "--device",
            "cpu", "--output", str(tmp_path / "ddp.json"), "--metrics", *metrics]
    torchrun_two_ranks("evaluation_video.py", argv)
    saved = json.loads((tmp_path / "ddp.json").read_text())
    assert saved["protocol"]["world_size"] == 2
    for key in ("num_clips", "num_frames", "codebook_codes_used"):
        assert saved["metrics"][key] == single[key]
    for key in ("psnr", "ssim", "codebook_entropy_bits"):
        assert saved["metrics"][key] == pytest.approx(single[key], rel=1e-12), key


def test_reconstruct_writes_side_by_side_gifs_and_a_frame_grid(setup, tmp_path):
    from PIL import Image

    from taming.cli import reconstruct

    result = reconstruct.main(["--ckpt_path", str(setup["ckpt"]), "--config_file", str(setup["config"]),
                               "--data_root", str(setup["root"] / "ucf"), "--split", "test", "--image_size", "32",
                               "--num_workers", "0", "--device", "cpu", "--output_dir", str(tmp_path / "out"),
                               "--grid_images", "2"])
    assert result["written"] == 4
    gifs = sorted((tmp_path / "out").rglob("*.gif"))
    assert len(gifs) == 4
    with Image.open(gifs[0]) as gif:
        assert gif.n_frames == 17 and gif.size == (2 * 32 + 4, 32)
    with Image.open(tmp_path / "out" / "grid.png") as grid:
        assert grid.size == (8 * 32, 4 * 32)  # 8 frames; 2 clips x (original, reconstruction)


def test_generation_fvd_of_a_sample_file(setup, tmp_path):
    """gFVD of stored uint8 clips against the real ones: ~0 for the real clips themselves, scipy's value on I3D logits
    computed independently for other clips; a file of the wrong shape is refused."""
    clips = VideoClips(str(setup["root"] / "ucf"), split="test", size=32, sequence_length=9, clip="center",
                       crop="center")
    real = clips_to_uint8(torch.stack([clips[i]["image"] for i in range(len(clips))]), truncate=False).numpy()
    other = VideoClips(str(setup["root"] / "ucf"), split="train", size=32, sequence_length=9, clip="center",
                       crop="center")
    fake = clips_to_uint8(torch.stack([other[i]["image"] for i in range(len(other))]), truncate=False).numpy()
    argv = ["--data_root", str(setup["root"] / "ucf"), "--image_size", "32", "--batch_size", "4", "--num_workers", "0",
            "--device", "cpu", "--output", str(tmp_path / "g.json")]
    np.savez(tmp_path / "same.npz", arr_0=real, labels=np.zeros(len(real)))
    np.savez(tmp_path / "other.npz", arr_0=fake, labels=np.zeros(len(fake)))
    with torch_hub_dir(setup["hub"]):
        same = evaluation_video.main(["--generated", str(tmp_path / "same.npz"), *argv, "--num_frames", "9"])
        different = evaluation_video.main(["--generated", str(tmp_path / "other.npz"), *argv, "--num_frames", "9"])
        with pytest.raises(SystemExit, match="expected uint8 clips"):
            evaluation_video.main(["--generated", str(tmp_path / "other.npz"), *argv])  # 17 frames expected
    assert same["num_real"] == same["num_generated"] == 4 and abs(same["gfvd"]) < 1e-3
    i3d = InceptionI3d()
    i3d.load_state_dict(random_i3d_state(11))
    with torch.no_grad():
        a = i3d.eval()(preprocess(torch.from_numpy(real))).double().numpy()
        b = i3d(preprocess(torch.from_numpy(fake))).double().numpy()
    assert different["gfvd"] == pytest.approx(frechet_scipy(a, b), rel=1e-4)  # rank-3 covariances: sqrtm noise
    assert json.loads((tmp_path / "g.json").read_text())["protocol"]["split"] == "test"
