"""End-to-end evaluation.py on the reference tiny checkpoint and real photographs, against independent
computations (skimage, the lpips and pytorch-fid packages loading the same weight files their own way)."""
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from taming.cli import evaluation
from scripts.benchmark_eval import write_random_weights
from taming import load_tokenizer
from taming.data import ImageFolder
from taming.metrics.fid import InceptionFeatures
from taming.metrics.image import to_uint8, to_uint8_truncated
from helpers import torch_hub_dir, torchrun_two_ranks

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle", "camera")


@pytest.fixture(scope="module")
def pretrained_hub(tmp_path_factory):
    """Torch hub dir with random weights in the real formats (Inception for pytorch-fid and torch-fidelity,
    torchvision VGG16 and AlexNet), as `scripts/benchmark_eval.py --random_weights` writes them."""
    hub = tmp_path_factory.mktemp("torch_home") / "hub"  # TORCH_HOME for subprocesses: <home>/hub/checkpoints
    torch.manual_seed(0)
    write_random_weights(hub)
    with torch_hub_dir(hub):
        yield hub


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """PNG files of scikit-image photographs at their own (non-square) sizes, downscaled by 4."""
    import skimage.data

    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        arr = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
        img = Image.fromarray(arr).convert("RGB")
        img.resize((img.width // 4, img.height // 4), Image.BICUBIC).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def tiny_config(reference_dir, tmp_path_factory):
    """A released-style training YAML holding the tiny checkpoint's architecture."""
    ddconfig = torch.load(reference_dir / "tiny_128style_expected.pt", weights_only=True)["ddconfig"]
    path = tmp_path_factory.mktemp("config") / "tiny_128style.yaml"
    path.write_text(yaml.safe_dump({"model": {"class_path": "taming.models.lfqgan.VQModel",
                                              "init_args": {"embed_dim": 18, "ddconfig": ddconfig}}}))
    return path


def run(tmp_path, reference_dir, tiny_config, data_root, *extra):
    argv = ["--ckpt_path", str(reference_dir / "tiny_128style.ckpt"), "--config_file", str(tiny_config),
            "--data_root", str(data_root), "--image_size", "64", "--batch_size", "4", "--num_workers", "0",
            "--device", "cpu", "--output", str(tmp_path / "out.json"), *extra]
    return evaluation.main(argv)


@pytest.mark.filterwarnings("ignore::UserWarning")  # lpips' own loading passes torchvision's deprecated flag
def test_evaluation_end_to_end(pretrained_hub, photo_folder, tiny_config, reference_dir, tmp_path):
    import lpips
    from pytorch_fid.inception import InceptionV3

    results = run(tmp_path, reference_dir, tiny_config, photo_folder, "--ref_stats", str(tmp_path / "stats"))
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["metrics"] == results
    expected_keys = {"num_images", "rfid", "psnr", "psnr_batch_legacy", "ssim", "lpips_alex", "lpips_vgg",
                     "codebook_usage", "codebook_codes_used", "codebook_tokens", "codebook_entropy_bits",
                     "codebook_perplexity", "codebook_bit_balance"}
    assert set(results) == expected_keys
    assert all(math.isfinite(v) for k, v in results.items() if k != "codebook_bit_balance")
    protocol = saved["protocol"]
    assert protocol["weights"] == "ema" and protocol["image_size"] == 64 and protocol["num_images"] == len(PHOTOS)
    assert protocol["fid_extractor"] == "pytorch-fid" and len(protocol["checkpoint_sha256"]) == 64

    # independent computation: same images and tokenizer, metrics from skimage / lpips / pytorch-fid
    dataset = ImageFolder(str(photo_folder), size=64)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    tokenizer = load_tokenizer(reference_dir / "tiny_128style.ckpt", config=str(tiny_config))
    with torch.no_grad():
        batches = [tokenizer.encode(chunk) for chunk in images.split(4)]
        recon = torch.cat([tokenizer.decode(q) for q, _ in batches]).clamp(-1, 1)
    indices = torch.cat([i for _, i in batches])

    def hwc(x):
        return x.permute(1, 2, 0).numpy().astype(np.float64) / 255.0

    real8, fake8 = to_uint8(images), to_uint8(recon)
    psnrs = [peak_signal_noise_ratio(hwc(r), hwc(f), data_range=1.0) for r, f in zip(real8, fake8)]
    ssims = [structural_similarity(hwc(r), hwc(f), data_range=1.0, channel_axis=-1) for r, f in zip(real8, fake8)]
    assert results["psnr"] == pytest.approx(np.mean(psnrs), rel=1e-6)
    assert results["ssim"] == pytest.approx(np.mean(ssims), rel=1e-6)
    real_t = to_uint8_truncated(images).permute(0, 2, 3, 1).numpy().astype(np.float32) / 255.0
    fake_t = to_uint8_truncated(recon).permute(0, 2, 3, 1).numpy().astype(np.float32) / 255.0
    legacy = np.mean([peak_signal_noise_ratio(real_t[i:i + 4], fake_t[i:i + 4]) for i in range(0, len(images), 4)])
    assert results["psnr_batch_legacy"] == pytest.approx(legacy, rel=1e-5)

    counts = Counter(indices.flatten().tolist())
    n_tokens = indices.numel()
    assert results["codebook_codes_used"] == len(counts) and results["codebook_tokens"] == n_tokens
    assert results["codebook_usage"] == len(counts) / 2**18
    entropy = -sum(c / n_tokens * math.log2(c / n_tokens) for c in counts.values())
    assert results["codebook_entropy_bits"] == pytest.approx(entropy, rel=1e-9)

    for net in ("alex", "vgg"):  # lpips' own trunk loading (torchvision from the hub cache), no download
        model = lpips.LPIPS(net=net, verbose=False).eval()
        with torch.no_grad():
            assert results[f"lpips_{net}"] == pytest.approx(model(images, recon).mean().item(), rel=1e-4)

    inception = InceptionV3([3]).eval()  # pytorch-fid's own loading from the hub cache
    with torch.no_grad():
        real_f = inception((images + 1) / 2)[0].flatten(1).double().numpy()
        fake_f = inception((recon + 1) / 2)[0].flatten(1).double().numpy()
    # n < 2048: tr((S1 S2)^1/2) = nuclear norm of A B^T / (n - 1) (A, B centred features)
    a, b = real_f - real_f.mean(0), fake_f - fake_f.mean(0)
    n = len(a)
    fid = (np.sum((real_f.mean(0) - fake_f.mean(0)) ** 2) + (a**2).sum() / (n - 1) + (b**2).sum() / (n - 1)
           - 2 * np.linalg.svd(a @ b.T, compute_uv=False).sum() / (n - 1))
    assert results["rfid"] == pytest.approx(fid, rel=1e-4)

    # the real-image statistics were saved and are reused: same rFID without recomputing them
    stats_files = list((tmp_path / "stats").glob("fid_stats_pytorch-fid_64px_6_*.pt"))
    assert len(stats_files) == 1
    again = run(tmp_path, reference_dir, tiny_config, photo_folder, "--ref_stats", str(tmp_path / "stats"),
                "--metrics", "rfid")
    assert again["rfid"] == pytest.approx(results["rfid"], rel=1e-9)
    assert json.loads((tmp_path / "out.json").read_text())["protocol"]["fid_real_stats"] == str(stats_files[0])
    stats_files[0].write_bytes(stats_files[0].read_bytes()[:1000])  # e.g. a copy cut short
    with pytest.raises(SystemExit, match="cannot read real-image statistics .*delete it"):
        run(tmp_path, reference_dir, tiny_config, photo_folder, "--ref_stats", str(tmp_path / "stats"), "--metrics", "rfid")


def test_evaluation_raw_weights_and_other_resolution(pretrained_hub, photo_folder, tiny_config, reference_dir, tmp_path):
    """--no_ema and a test resolution unlike the training one (tokens 12 x 12 at 96 px)."""
    results = run(tmp_path, reference_dir, tiny_config, photo_folder, "--no_ema", "--image_size", "96",
                  "--metrics", "psnr", "usage", "--num_images", "3")
    protocol = json.loads((tmp_path / "out.json").read_text())["protocol"]
    assert protocol["weights"] == "raw" and protocol["tokens_per_image"] == 144 and results["num_images"] == 3
    assert results["codebook_tokens"] == 3 * 144 and "rfid" not in results


def test_missing_weight_file_is_reported_before_work(photo_folder, tiny_config, reference_dir, tmp_path):
    with torch_hub_dir(tmp_path / "empty_hub"):
        with pytest.raises(SystemExit) as err:
            run(tmp_path, reference_dir, tiny_config, photo_folder)
    message = str(err.value)
    for expected in ("pt_inception-2015-12-05-6726825d.pth", "vgg16-397923af.pth", "alexnet-owt-7be5be79.pth",
                     "--inception_weights", "--lpips_vgg_weights", str(tmp_path / "empty_hub" / "checkpoints"),
                     "--metrics psnr ssim usage"):  # and the metrics that need no weights
        assert expected in message
    with pytest.raises(SystemExit, match="--inception_weights"):
        run(tmp_path, reference_dir, tiny_config, photo_folder, "--metrics", "rfid",
            "--inception_weights", str(tmp_path / "nope.pth"))
    damaged = tmp_path / "damaged.pth"  # an interrupted copy
    damaged.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(SystemExit, match="cannot load the metric networks' weights .*damaged.pth"):
        run(tmp_path, reference_dir, tiny_config, photo_folder, "--metrics", "rfid", "--inception_weights", str(damaged))


def test_vq_tokenizer_and_default_output_next_to_the_checkpoint(photo_folder, reference_dir, tmp_path):
    """LlamaGen's VQ (256 codes, no bits): usage over its codebook, no bit balance; the JSON lands in
    <checkpoint folder>/evaluation/ when no --output is given."""
    expected = torch.load(reference_dir / "llamagen_vq16_tiny_expected.pt", weights_only=True)
    (tmp_path / "run").mkdir()
    ckpt = tmp_path / "run" / "last.ckpt"
    ckpt.write_bytes((reference_dir / "llamagen_vq16_tiny.pt").read_bytes())
    config = tmp_path / "vq.yaml"
    config.write_text(yaml.safe_dump({**expected["config"], "ch": expected["ch"]}))
    results = evaluation.main(["--ckpt_path", str(ckpt), "--config_file", str(config), "--data_root", str(photo_folder),
                               "--image_size", "64", "--num_workers", "0", "--device", "cpu",
                               "--metrics", "psnr", "usage"])
    saved = json.loads((tmp_path / "run" / "evaluation" / f"last_{photo_folder.name}_64px.json").read_text())
    assert saved["metrics"] == results and "codebook_bit_balance" not in results
    tokenizer = load_tokenizer(ckpt, config=str(config))
    dataset = ImageFolder(str(photo_folder), size=64)
    with torch.no_grad():
        indices = tokenizer.encode(torch.stack([dataset[i]["image"] for i in range(len(dataset))]))[1]
    assert results["codebook_usage"] == len(indices.unique()) / 256 and results["codebook_tokens"] == indices.numel()


def test_bad_inputs_give_clear_errors(pretrained_hub, photo_folder, tiny_config, reference_dir, tmp_path):
    truncated = tmp_path / "truncated.ckpt"  # an interrupted download / copy
    truncated.write_bytes((reference_dir / "tiny_128style.ckpt").read_bytes()[:5000])
    with pytest.raises(SystemExit, match="could not read checkpoint .*truncated.ckpt"):
        evaluation.main(["--ckpt_path", str(truncated), "--config_file", str(tiny_config), "--data_root",
                         str(photo_folder), "--metrics", "psnr", "--device", "cpu"])
    empty = tmp_path / "no_images"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(SystemExit, match="no images found"):
        run(tmp_path, reference_dir, tiny_config, empty, "--metrics", "psnr")
    imagenet_like = tmp_path / "imagenet"  # has a train split, but not the default --split val
    (imagenet_like / "train" / "n01").mkdir(parents=True)
    Image.open(next(photo_folder.glob("*.png"))).save(imagenet_like / "train" / "n01" / "a.png")
    with pytest.raises(SystemExit, match="--split val not found .*\\['train'\\]"):
        run(tmp_path, reference_dir, tiny_config, imagenet_like, "--metrics", "psnr")
    with pytest.raises(SystemExit, match="multiple of the tokenizer's downsampling factor 8"):
        run(tmp_path, reference_dir, tiny_config, photo_folder, "--metrics", "psnr", "--image_size", "60")


def test_torchrun_two_ranks_equals_one_process(pretrained_hub, photo_folder, tiny_config, reference_dir, tmp_path):
    """`torchrun --nproc_per_node 2` on CPU (gloo): each rank evaluates a shard; the reduced metrics are those of
    one process (Inception statistics are reduced like these sums; see also test_metrics)."""
    metrics = ["psnr", "ssim", "lpips_alex", "usage"]
    # batch size 1 and one thread everywhere: each image goes through the same float computations
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run(tmp_path, reference_dir, tiny_config, photo_folder, "--metrics", *metrics, "--batch_size", "1")
    finally:
        torch.set_num_threads(threads)
    argv = ["--ckpt_path", str(reference_dir / "tiny_128style.ckpt"), "--config_file", str(tiny_config),
            "--data_root", str(photo_folder), "--image_size", "64", "--batch_size", "1", "--num_workers", "0",
            "--device", "cpu", "--output", str(tmp_path / "ddp.json"), "--metrics", *metrics]
    torchrun_two_ranks("evaluation.py", argv, TORCH_HOME=str(pretrained_hub.parent))
    saved = json.loads((tmp_path / "ddp.json").read_text())
    assert saved["protocol"]["world_size"] == 2
    sharded = saved["metrics"]
    assert sharded["num_images"] == single["num_images"] == len(PHOTOS)
    for key in ("psnr", "ssim", "lpips_alex", "psnr_batch_legacy", "codebook_entropy_bits"):
        assert sharded[key] == pytest.approx(single[key], rel=1e-12), key
    assert sharded["codebook_codes_used"] == single["codebook_codes_used"]
    assert sharded["codebook_bit_balance"] == single["codebook_bit_balance"]


def test_torch_fidelity_extractor_reads_the_same_format(pretrained_hub, sample_images):
    """The TF-matching extractor gets uint8 (rounded) images, as torch-fidelity expects."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    ours = InceptionFeatures("torch-fidelity")
    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(
        pretrained_hub / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"))
    x = sample_images[:2]
    with torch.no_grad():
        features = ours(x)
        assert features.shape == (2, 2048) and torch.isfinite(features).all()
        assert torch.equal(features, theirs(to_uint8(x))[0])


def test_adm_protocol_sets_crop_and_extractor_together(photo_folder, reference_dir, tmp_path):
    """--protocol adm evaluates ADM's center_crop_arr crops (checked against PSNRs computed from that crop) and
    records the crop and the torch-fidelity extractor in the JSON; om2 keeps the bilinear crop and pytorch-fid."""
    from taming.data.loading import adm_center_crop
    from taming.metrics.image import psnr, to_uint8

    expected = torch.load(reference_dir / "llamagen_vq16_tiny_expected.pt", weights_only=True)
    config = tmp_path / "vq.yaml"
    config.write_text(yaml.safe_dump({**expected["config"], "ch": expected["ch"]}))
    ckpt = reference_dir / "llamagen_vq16_tiny.pt"
    common = ["--ckpt_path", str(ckpt), "--config_file", str(config), "--data_root", str(photo_folder),
              "--image_size", "32", "--num_workers", "0", "--device", "cpu", "--metrics", "psnr"]
    results = {p: evaluation.main([*common, "--protocol", p, "--output", str(tmp_path / f"{p}.json")])
               for p in ("om2", "adm")}
    saved = json.loads((tmp_path / "adm.json").read_text())["protocol"]
    assert saved["protocol"] == "adm" and saved["fid_extractor"] == "torch-fidelity" and "center_crop_arr" in saved["crop"]
    assert json.loads((tmp_path / "om2.json").read_text())["protocol"]["fid_extractor"] == "pytorch-fid"
    tokenizer = load_tokenizer(ckpt, config=str(config))
    paths = sorted(p for p in photo_folder.rglob("*") if p.is_file())
    images = torch.stack([torch.from_numpy(np.asarray(adm_center_crop(Image.open(p).convert("RGB"), 32)).copy())
                          .permute(2, 0, 1) for p in paths]).float() / 127.5 - 1
    with torch.no_grad():
        ours = psnr(to_uint8(images), to_uint8(tokenizer(images).clamp(-1, 1))).mean().item()
    assert results["adm"]["psnr"] == pytest.approx(ours, abs=1e-4)
    assert results["adm"]["psnr"] != pytest.approx(results["om2"]["psnr"], abs=1e-3)


def test_original_resolution_evaluation(photo_folder, tiny_config, reference_dir, tmp_path):
    """--image_size 0: each photograph at its own (non-square, non-multiple) size, zero-padded as the release, cropped
    back; PSNR equals a direct computation; the protocol says so; an over-budget image is skipped and counted."""
    from taming import load_tokenizer
    from taming.data import ImageFolder
    from taming.data.loading import to_tensor
    from taming.metrics.image import psnr, to_uint8

    results = run(tmp_path, reference_dir, tiny_config, photo_folder, "--image_size", "0", "--metrics", "psnr",
                  "usage")
    protocol = json.loads((tmp_path / "out.json").read_text())["protocol"]
    assert protocol["image_size"] == "original" and protocol["crop"].startswith("none")
    assert protocol["num_skipped_over_memory_budget"] == 0 and protocol["batch_size"] == 4

    tokenizer = load_tokenizer(reference_dir / "tiny_128style.ckpt", config=str(tiny_config))
    dataset = ImageFolder(str(photo_folder), index_cache_dir=str(tmp_path / "index"))
    dataset.transform = to_tensor
    values, padded_any, f = [], False, tokenizer.downsample_factor
    for i in range(len(dataset)):
        x = dataset[i]["image"][None]
        h, w = x.shape[-2:]
        padded_any |= bool(h % f or w % f)
        ph, pw = -h % f, -w % f
        padded = torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        with torch.no_grad():
            recon = tokenizer(padded)[..., ph // 2:ph // 2 + h, pw // 2:pw // 2 + w].clamp(-1, 1)
        values.append(psnr(to_uint8(x), to_uint8(recon)).item())
    assert padded_any and results["num_images"] == len(values)
    assert results["psnr"] == pytest.approx(sum(values) / len(values), abs=1e-4)

    with pytest.raises(ValueError, match="no images were evaluated"):  # every image over a tiny budget
        run(tmp_path, reference_dir, tiny_config, photo_folder, "--image_size", "0", "--metrics", "psnr",
            "--max_memory_gb", "1e-6")


def test_evaluation_reads_tar_shards(photo_folder, tiny_config, reference_dir, tmp_path):
    """--shards: the same photographs written into tar shards give the folder's metrics; the protocol names them."""
    from taming.data import write_shards

    items = [(str(p), -1) for p in sorted(photo_folder.glob("*.png"))]
    write_shards(items, tmp_path / "shards", samples_per_shard=4)
    argv = ["--ckpt_path", str(reference_dir / "tiny_128style.ckpt"), "--config_file", str(tiny_config),
            "--image_size", "64", "--batch_size", "4", "--num_workers", "0", "--device", "cpu", "--metrics", "psnr",
            "ssim", "usage"]
    folder = evaluation.main([*argv, "--data_root", str(photo_folder), "--output", str(tmp_path / "folder.json")])
    shards = evaluation.main([*argv, "--shards", str(tmp_path / "shards" / "shard-{000000..000001}.tar"),
                              "--output", str(tmp_path / "shards.json")])
    assert shards["num_images"] == folder["num_images"] == len(items)
    for key in ("psnr", "ssim", "codebook_usage"):
        assert shards[key] == pytest.approx(folder[key], rel=1e-9), key
    protocol = json.loads((tmp_path / "shards.json").read_text())["protocol"]
    assert protocol["dataset"] == "shards" and protocol["num_shards"] == 2
