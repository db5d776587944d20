"""scripts/tokenize.py, decode_tokens.py and reconstruct.py on the reference tiny checkpoint."""
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

from scripts import decode_tokens, reconstruct
from scripts import tokenize as tokenize_script
from taming import load_tokenizer
from taming.data import DemoImages
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


def tokenize_args(tiny, out_dir, *extra):
    ckpt, config, _ = tiny
    return ["--ckpt_path", str(ckpt), "--config_file", str(config), "--demo", "--split", "val", "--num_images", "5",
            "--image_size", "64", "--batch_size", "2", "--shard_size", "2", "--num_workers", "0", "--device", "cpu",
            "--output_dir", str(out_dir), *extra]


@pytest.fixture(scope="module")
def token_dir(tiny, tmp_path_factory):
    """Run as a user would (`python scripts/tokenize.py`), which must not shadow the stdlib `tokenize`."""
    out = tmp_path_factory.mktemp("tokens")
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "scripts/tokenize.py", *tokenize_args(tiny, out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_tokenize_writes_manifest_and_shards(tiny, token_dir):
    _, _, tokenizer = tiny
    manifest = json.loads((token_dir / "manifest.json").read_text())
    assert manifest["shards"] == ["tokens_00000.pt", "tokens_00001.pt", "tokens_00002.pt"]
    assert manifest["bit_order"] == "msb" and manifest["codebook_bits"] == 18
    assert manifest["image_size"] == 64 and manifest["token_grid"] == [8, 8] and manifest["num_images"] == 5
    assert manifest["tokenizer"]["weights"] == "ema" and manifest["dataset"] == "demo"

    shards = [torch.load(token_dir / name, weights_only=True) for name in manifest["shards"]]
    indices = torch.cat([s["indices"] for s in shards])
    assert indices.dtype == torch.int32 and indices.shape == (5, 8, 8)
    assert torch.cat([s["index"] for s in shards]).tolist() == [0, 1, 2, 3, 4]
    assert torch.cat([s["class_label"] for s in shards]).tolist() == [-1] * 5
    demo = DemoImages("val", size=64)
    assert sum((s["relpath"] for s in shards), []) == [demo[i]["relpath"] for i in range(5)]
    images = torch.stack([demo[i]["image"] for i in range(5)])
    with torch.no_grad():
        expected = torch.cat([tokenizer.encode(chunk)[1] for chunk in images.split(2)])
    assert torch.equal(indices.long(), expected)


def test_tokenize_resumes_and_refuses_a_different_run(tiny, token_dir, tmp_path):
    out = tmp_path / "tokens"
    tokenize_script.main(tokenize_args(tiny, out))
    first = {p.name: p.read_bytes() for p in out.glob("tokens_*.pt")}
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("tokens_*.pt")}
    (out / "tokens_00001.pt").unlink()  # as if the run had been interrupted there
    tokenize_script.main(tokenize_args(tiny, out))
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("tokens_*.pt") if p.name != "tokens_00001.pt"} == {
        k: v for k, v in mtimes.items() if k != "tokens_00001.pt"}
    reloaded = [torch.load(out / "tokens_00001.pt", weights_only=True), torch.load(token_dir / "tokens_00001.pt", weights_only=True)]
    assert torch.equal(reloaded[0]["indices"], reloaded[1]["indices"]) and set(first) == {p.name for p in out.glob("tokens_*.pt")}
    with pytest.raises(SystemExit, match="different tokenization.*image_size"):
        tokenize_script.main(tokenize_args(tiny, out, "--image_size", "32"))


def test_decode_tokens_reproduces_reconstructions(tiny, token_dir, tmp_path):
    _, _, tokenizer = tiny
    # a sibling of scripts/tokenize.py, run as a user would: its `import tokenize` must get the standard library's
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
    with pytest.raises(SystemExit, match="manifest.json"):
        decode_tokens.main(["--tokens", str(tmp_path), "--output_dir", str(tmp_path / "x")])
    (token_dir / "tokens_00002.pt").rename(tmp_path / "moved.pt")
    try:
        with pytest.raises(SystemExit, match="1 shard\\(s\\) missing .*tokens_00002.pt"):
            decode_tokens.main(["--tokens", str(token_dir), "--output_dir", str(tmp_path / "x")])
    finally:
        (tmp_path / "moved.pt").rename(token_dir / "tokens_00002.pt")


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
