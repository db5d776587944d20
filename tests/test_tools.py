"""scripts/encode_tokens.py, decode_tokens.py and reconstruct.py on the reference tiny checkpoints."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from taming.cli import decode_tokens, encode_tokens, reconstruct
from taming import load_tokenizer
from taming.data import DemoImages
from taming.data.loading import TenCropTransform
from taming.data.tokens import TokenDataset, TokenFolder
from taming.metrics.image import to_uint8

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(reference_dir, tmp_path_factory):
    """(checkpoint, released-style YAML with its architecture, the tokenizer loaded independently)."""
    ddconfig = torch.load(reference_dir / "tiny_128style_expected.pt", weights_only=True)["ddconfig"]
    config = tmp_path_factory.mktemp("config") / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": {"init_args": {"embed_dim": 18, "ddconfig": ddconfig}}}))
    ckpt = reference_dir / "tiny_128style.ckpt"
    return ckpt, config, load_tokenizer(ckpt, config=str(config))


@pytest.fixture(scope="module")
def tiny_vq(reference_dir, tmp_path_factory):
    """LlamaGen's tiny VQ tokenizer (256 codes): (checkpoint, YAML of its ModelArgs fields, tokenizer)."""
    expected = torch.load(reference_dir / "llamagen_vq16_tiny_expected.pt", weights_only=True)
    config = tmp_path_factory.mktemp("vqconfig") / "vq.yaml"
    config.write_text(yaml.safe_dump({**expected["config"], "ch": expected["ch"]}))
    ckpt = reference_dir / "llamagen_vq16_tiny.pt"
    return ckpt, config, load_tokenizer(ckpt, config=str(config))


def encode_args(tokenizer_files, out_dir, *extra):
    ckpt, config, _ = tokenizer_files
    return ["--ckpt_path", str(ckpt), "--config_file", str(config), "--demo", "--split", "val", "--num_images", "5",
            "--image_size", "64", "--batch_size", "2", "--shard_size", "2", "--num_workers", "0", "--device", "cpu",
            "--output_dir", str(out_dir), *extra]


@pytest.fixture(scope="module")
def token_dir(tiny, tmp_path_factory):
    """Run as a user would (`python scripts/encode_tokens.py ...` from the repository)."""
    out = tmp_path_factory.mktemp("tokens")
    proc = subprocess.run([sys.executable, "scripts/encode_tokens.py", *encode_args(tiny, out)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": ""}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "5 image(s) encoded, 0 unreadable skipped, in 3 shard(s)" in proc.stdout
    return out


def test_encode_tokens_writes_manifest_and_shards(tiny, token_dir):
    _, _, tokenizer = tiny
    manifest = json.loads((token_dir / "manifest.json").read_text())
    assert manifest["format"] == "taming-tokens-v2" and manifest["complete"]
    assert manifest["quantizer"]["codebook_size"] == 2**18 and manifest["quantizer"]["bit_order"] == "msb"
    assert manifest["token_layout"] == "grid" and manifest["token_shape"] == [8, 8] and manifest["views"] == 1
    assert manifest["index_dtype"] == "int32" and manifest["image_size"] == 64 and manifest["dataset"] == "demo"
    assert [s["num_images"] for s in manifest["shards"]] == [2, 2, 1] and manifest["num_images"] == 5
    assert manifest["tokenizer"]["weights"] == "ema" and manifest["num_skipped"] == 0

    folder = TokenFolder(token_dir, verify="sha256")
    indices = np.concatenate([folder.indices(k) for k in range(folder.num_shards)])
    assert indices.dtype == np.int32 and indices.shape == (5, 1, 8, 8)
    assert isinstance(folder.indices(0), np.memmap)
    demo = DemoImages("val", size=64)
    assert sum((folder.relpaths(k) for k in range(3)), []) == [demo[i]["relpath"] for i in range(5)]
    images = torch.stack([demo[i]["image"] for i in range(5)])
    with torch.no_grad():
        expected = torch.cat([tokenizer.encode(chunk)[1] for chunk in images.split(2)])
    assert torch.equal(torch.from_numpy(indices[:, 0]).long(), expected)
    dataset = TokenDataset(token_dir)
    assert len(dataset) == 5 and torch.equal(dataset[3]["tokens"], expected[3])
    assert dataset[3]["class_label"] == demo[3]["class_label"]


def test_vq_tokens_are_compact_and_ten_crop_views(tiny_vq, tmp_path):
    out = tmp_path / "vq"
    manifest = encode_tokens.main(encode_args(tiny_vq, out, "--ten_crop", "--num_images", "3"))
    assert manifest["index_dtype"] == "uint8" and manifest["views"] == 10 and manifest["token_shape"] == [4, 4]
    assert "bit_order" not in manifest["quantizer"] and manifest["quantizer"]["codebook_size"] == 256
    folder = TokenFolder(out)
    indices = folder.indices(0)
    assert indices.dtype == np.uint8 and indices.shape == (2, 10, 4, 4)
    # view v of image i = the tokens of the v-th TenCrop view of that image
    demo = DemoImages("val", size=64)
    demo.transform = TenCropTransform(64, 1.1)
    with torch.no_grad():
        _, expected = tiny_vq[2].encode(demo[1]["image"])
    assert torch.equal(torch.from_numpy(indices[1].astype(np.int64)), expected)
    views = {TokenDataset(out, seed=0)[(1, epoch)]["tokens"].sum().item() for epoch in range(12)}
    assert len(views) > 1  # a random view per (seed, epoch, index)
    assert torch.equal(TokenDataset(out, view=4)[1]["tokens"], expected[4].long())


def test_encode_resumes_redoes_damaged_shards_and_refuses_a_different_run(tiny, token_dir, tmp_path):
    out = tmp_path / "tokens"
    encode_tokens.main(encode_args(tiny, out))
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("tokens_*.npy")}
    with open(out / "tokens_00001.npy", "r+b") as f:  # truncated, as if the disk had filled up
        f.truncate(100)
    (out / "tokens_00002.done.json").unlink()  # as if the run had been killed before the record was written
    with pytest.raises(ValueError, match="tokens_00001.*truncated"):
        TokenFolder(out)
    encode_tokens.main(encode_args(tiny, out))
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("tokens_*.npy")}
    assert after["tokens_00000.npy"] == mtimes["tokens_00000.npy"]  # intact: skipped
    assert after["tokens_00001.npy"] != mtimes["tokens_00001.npy"] and after["tokens_00002.npy"] != mtimes["tokens_00002.npy"]
    for name in after:
        assert (out / name).read_bytes() == (token_dir / name).read_bytes()
    with pytest.raises(SystemExit, match="different tokenization.*image_size"):
        encode_tokens.main(encode_args(tiny, out, "--image_size", "32"))
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(SystemExit, match="token manifest .* is corrupt"):
        encode_tokens.main(encode_args(tiny, out))
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit, match="is a file"):
        encode_tokens.main(encode_args(tiny, tmp_path / "afile"))


def test_decode_tokens_reproduces_reconstructions(tiny, token_dir, tmp_path):
    _, _, tokenizer = tiny
    proc = subprocess.run([sys.executable, "scripts/decode_tokens.py", "--tokens", str(token_dir), "--output_dir",
                           str(tmp_path / "decoded"), "--num_images", "3", "--device", "cpu", "--batch_size", "2"],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": ""}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    demo = DemoImages("val", size=64)
    written = sorted(tmp_path.glob("decoded/**/*.png"))
    assert len(written) == 3
    for i in range(3):
        item = demo[i]
        with torch.no_grad():
            expected = to_uint8(tokenizer(item["image"][None]))[0].permute(1, 2, 0).numpy()
        png = np.asarray(Image.open(tmp_path / "decoded" / f"{item['relpath']}.png")).astype(int)
        # another process and batch size: float rounding may move a value across a uint8 rounding boundary
        assert np.abs(png - expected).max() <= 1 and (png != expected).mean() < 1e-3
    with pytest.raises(SystemExit, match="manifest.json.* not found"):
        decode_tokens.main(["--tokens", str(tmp_path), "--output_dir", str(tmp_path / "x")])


def test_earlier_token_format_is_read(tmp_path):
    """Folders of the previous release (taming-tokens-v1: torch .pt shards) still load."""
    indices = torch.randint(0, 2**18, (3, 4, 4), dtype=torch.int32)
    torch.save({"indices": indices, "class_label": torch.tensor([1, 2, -1]), "relpath": ["a", "b", "c"],
                "index": torch.arange(3), "num_skipped": 0}, tmp_path / "tokens_00000.pt")
    (tmp_path / "manifest.json").write_text(json.dumps({
        "format": "taming-tokens-v1", "shards": ["tokens_00000.pt"], "codebook_bits": 18, "bit_order": "lsb",
        "token_grid": [4, 4], "num_images": 3}))
    dataset = TokenDataset(tmp_path)
    assert dataset.folder.codebook_size == 2**18 and dataset.folder.bit_order == "lsb"
    assert torch.equal(dataset[1]["tokens"], indices[1].long()) and dataset[1]["class_label"] == 2


@pytest.fixture(scope="module")
def odd_photos(tmp_path_factory):
    """PNGs whose sides are not multiples of 8 (the tiny model's factor)."""
    folder = tmp_path_factory.mktemp("odd")
    for name, size in (("astronaut", (77, 50)), ("coffee", (45, 61))):
        Image.fromarray(getattr(skimage.data, name)()).resize(size, Image.BICUBIC).save(folder / f"{name}.png")
    return folder


@pytest.mark.parametrize("policy", ["pad", "crop"])
def test_reconstruct_native_sizes(tiny, odd_photos, tmp_path, policy):
    ckpt, config, tokenizer = tiny
    out = tmp_path / "recon"
    reconstruct.main(["--ckpt_path", str(ckpt), "--config_file", str(config), "--data_root", str(odd_photos),
                      "--image_size", "0", "--size_policy", policy, "--output_dir", str(out), "--num_workers", "0",
                      "--device", "cpu"])
    photo = np.asarray(Image.open(odd_photos / "astronaut.png"))  # 50 x 77
    x = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    if policy == "pad":  # reflect-pad to 56 x 80, reconstruct, crop back to 50 x 77
        with torch.no_grad():
            expected = tokenizer(F.pad(x, (0, 3, 0, 6), mode="reflect"))[..., :50, :77]
        expected_original = photo
    else:  # center crop to 48 x 72
        x = x[..., 1:49, 2:74]
        with torch.no_grad():
            expected = tokenizer(x)
        expected_original = photo[1:49, 2:74]
    recon = np.asarray(Image.open(out / "reconstruction" / "astronaut.png"))
    np.testing.assert_array_equal(recon, to_uint8(expected)[0].permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(np.asarray(Image.open(out / "original" / "astronaut.png")), expected_original)
    grid = Image.open(out / "grid.png")
    assert grid.height == 2 * 256 + 4


def test_reconstruct_fixed_size_not_divisible(tiny, odd_photos, tmp_path):
    ckpt, config, _ = tiny
    out = tmp_path / "recon"
    reconstruct.main(["--ckpt_path", str(ckpt), "--config_file", str(config), "--data_root", str(odd_photos),
                      "--image_size", "60", "--output_dir", str(out), "--num_workers", "0", "--device", "cpu",
                      "--grid_height", "60"])
    assert Image.open(out / "reconstruction" / "coffee.png").size == (60, 60)
    assert Image.open(out / "grid.png").size == (2 * 60 + 4, 2 * 60 + 4)
    no_grid = tmp_path / "no_grid"
    reconstruct.main(["--ckpt_path", str(ckpt), "--config_file", str(config), "--data_root", str(odd_photos),
                      "--image_size", "32", "--output_dir", str(no_grid), "--num_workers", "0", "--device", "cpu",
                      "--num_images", "1", "--grid_images", "0"])
    assert len(list(no_grid.glob("reconstruction/*.png"))) == 1 and not (no_grid / "grid.png").exists()


def test_reconstruct_keeps_inputs_that_differ_only_by_extension(tiny, tmp_path):
    ckpt, config, _ = tiny
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(skimage.data.astronaut()).resize((64, 64)).save(photos / "a.png")
    Image.fromarray(skimage.data.coffee()).resize((64, 64)).save(photos / "a.jpg")
    out = tmp_path / "recon"
    reconstruct.main(["--ckpt_path", str(ckpt), "--config_file", str(config), "--data_root", str(photos),
                      "--image_size", "64", "--output_dir", str(out), "--num_workers", "0", "--device", "cpu"])
    written = sorted(p.name for p in (out / "original").iterdir())
    assert len(written) == 2 and "a.png" in written and ({"a.jpg.png", "a.png.png"} & set(written))
    originals = [np.asarray(Image.open(out / "original" / name)) for name in written]
    assert not np.array_equal(originals[0], originals[1])  # neither overwrote the other


def test_reconstruct_refuses_images_over_the_memory_budget_and_goes_on(tiny, odd_photos, tmp_path, capsys):
    """A large photograph over the budget is reported with the size that fits; the small one is still done."""
    ckpt, config, tokenizer = tiny
    from taming.inference import largest_square, peak_memory_bytes

    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(skimage.data.astronaut()).resize((256, 256)).save(folder / "big.png")
    Image.fromarray(skimage.data.coffee()).resize((64, 48)).save(folder / "small.png")
    budget_gb = 1.5 * peak_memory_bytes(tokenizer, 64, 64) / 2**30  # fits 64 x 64, not 256 x 256
    result = reconstruct.main(["--ckpt_path", str(ckpt), "--config_file", str(config), "--data_root", str(folder),
                               "--image_size", "0", "--max_memory_gb", str(budget_gb), "--output_dir",
                               str(tmp_path / "out"), "--device", "cpu", "--num_workers", "0"])
    out = capsys.readouterr().out
    side = largest_square(tokenizer, int(budget_gb * 2**30))
    assert 64 <= side < 256 and "skipping big.png: 256x256 px needs" in out and f"{side}x{side}" in out
    assert result == {"written": 1, "skipped": {"unreadable": 0, "too small": 0, "over the memory budget": 1, "failed": 0}}
    assert "skipped: 1 over the memory budget" in out and (tmp_path / "out" / "reconstruction" / "small.png").is_file()
    # with tiling it is done, as 64 x 64 tiles
    result = reconstruct.main(["--ckpt_path", str(ckpt), "--config_file", str(config), "--data_root", str(folder),
                               "--image_size", "0", "--max_memory_gb", str(budget_gb), "--oversize", "tile",
                               "--tile", "64", "--tile_overlap", "16", "--output_dir", str(tmp_path / "tiled"),
                               "--device", "cpu", "--num_workers", "0"])
    assert result["written"] == 2


def test_reconstruct_reports_an_out_of_memory_image_and_goes_on(tiny, odd_photos, tmp_path, monkeypatch, capsys):
    ckpt, config, _ = tiny
    from taming.tokenizer import Tokenizer

    forward = Tokenizer.forward

    def fails_on_wide_images(self, x):
        if x.shape[-1] > 64 and x.device.type != "meta":  # (the meta-device memory estimate passes)
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return forward(self, x)

    monkeypatch.setattr(Tokenizer, "forward", fails_on_wide_images)
    result = reconstruct.main(["--ckpt_path", str(ckpt), "--config_file", str(config), "--data_root", str(odd_photos),
                               "--image_size", "0", "--output_dir", str(tmp_path / "out"), "--device", "cpu",
                               "--num_workers", "0"])
    assert result["written"] == 1 and result["skipped"]["failed"] == 1  # astronaut 77 px wide fails, coffee is done
    assert "failed astronaut.png: out of memory" in capsys.readouterr().out


def test_tiles_blend_to_a_partition_of_unity(tiny):
    from taming.inference import reconstruct_tiled

    x = torch.rand(2, 3, 96, 160)
    identity = reconstruct_tiled(lambda t: t, x, tile=64, overlap=24)
    torch.testing.assert_close(identity, x, rtol=0, atol=1e-6)  # weights sum to one everywhere
    _, _, tokenizer = tiny
    image = x[:1, :, :64, :64] * 2 - 1
    with torch.no_grad():  # one tile covering the image = the whole-image reconstruction
        torch.testing.assert_close(reconstruct_tiled(tokenizer, image, 64, 0), tokenizer(image))


def test_blended_tiles_leave_no_seams():
    """Tiles of a CNN tokenizer each get their own normalisation statistics: hard tiling shows steps at the tile
    borders. Stand-in with exactly that property: a per-tile normalisation of a real photograph. With blended overlaps
    the steps at every border are as in the whole-image pass; without overlap they are 4x larger."""
    from conftest import photo_batch
    from taming.inference import reconstruct_tiled

    def per_tile_norm(t):
        return (t - t.mean((1, 2, 3), keepdim=True)) / t.std((1, 2, 3), keepdim=True) * 0.5

    def step(img, borders):  # mean |difference| across the given column and row borders
        return torch.stack([(img[..., :, b] - img[..., :, b - 1]).abs().mean()
                            + (img[..., b, :] - img[..., b - 1, :]).abs().mean() for b in borders]).mean().item()

    x = photo_batch(192)[:2]
    whole = per_tile_norm(x)
    hard = reconstruct_tiled(per_tile_norm, x, tile=64, overlap=0)
    blended = reconstruct_tiled(per_tile_norm, x, tile=64, overlap=32)
    assert step(hard, [64, 128]) > 3 * step(whole, [64, 128])  # seams where tiles meet
    borders = list(range(32, 192, 32))  # every start and end of a blended tile
    assert step(blended, borders) < 1.25 * step(whole, borders)


@pytest.mark.parametrize("config", ["demo_vq.yaml", "gigatok/demo_hybrid.yaml"])
def test_benchmark_train_runs_any_tokenizer_config(config, capsys):
    """One real step of a VQ and a hybrid tokenizer config; the tokenizer FLOPs equal 3 x a forward counted here."""
    from torch.utils.flop_counter import FlopCounterMode

    from scripts import benchmark_train
    from taming.modules.component import instantiate

    path = Path(__file__).resolve().parents[1] / "configs" / config
    benchmark_train.main(["--config", str(path), "--batch_size", "2", "--steps", "1", "--warmup", "0",
                          "--no_pretrained", "--precision", "32"])
    out = capsys.readouterr().out
    assert "pretrained-weight terms off" in out and "images/s" in out
    reported = float(out.split("tokenizer 3 x fwd = ")[1].split(" GFLOP")[0])
    cfg = yaml.safe_load(path.read_text())
    model = instantiate(cfg["model"])
    size = cfg["data"]["init_args"]["train"]["init_args"]["size"]
    with FlopCounterMode(display=False) as counter:
        model.autoencode(torch.zeros(1, 3, size, size))
    assert reported == pytest.approx(3 * counter.get_total_flops() / 1e9, abs=0.05)
