"""WebDataset-style shards: the writer and the reader round-trip real photographs (labels, captions, sizes), damaged
data is skipped and counted, missing shards fail at start, the filters count what they drop, the order is
shard-local and deterministic, and a 2-rank x 2-worker run killed mid-epoch resumes to the uninterrupted run."""
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import yaml
from PIL import Image

from taming.data import ImageShards, ResumableSampler, collate_skip_none, write_shards
from taming.data.shards import expand_braces, list_shards, scan_shard

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photo_files(folder: Path, n: int, sizes=((60, 48),)) -> list:
    """n crops of the bundled photographs (PNG and JPEG alternately), (path, label = photograph index)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        label = i % len(PHOTOS)
        photo = getattr(skimage.data, PHOTOS[label])()
        width, height = sizes[i % len(sizes)]
        top, left = rng.integers(0, photo.shape[0] - 200), rng.integers(0, photo.shape[1] - 200)
        image = Image.fromarray(photo[top:top + 200, left:left + 200]).resize((width, height), Image.BICUBIC)
        path = folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}"
        image.save(path)
        items.append((str(path), label))
    return items


def test_brace_patterns_and_missing_shards(tmp_path):
    assert expand_braces("a-{008..011}.tar") == ["a-008.tar", "a-009.tar", "a-010.tar", "a-011.tar"]
    assert expand_braces("{x,y}/{1..2}.tar") == ["x/1.tar", "x/2.tar", "y/1.tar", "y/2.tar"]
    for name in ("s-0.tar", "s-1.tar"):
        (tmp_path / name).write_bytes(b"")
    assert list_shards(str(tmp_path / "s-{0..1}.tar")) == [str(tmp_path / "s-0.tar"), str(tmp_path / "s-1.tar")]
    assert list_shards(str(tmp_path)) == list_shards(str(tmp_path / "*.tar"))
    with pytest.raises(FileNotFoundError, match=r"1 shard\(s\) not found.*s-2.tar"):
        list_shards(str(tmp_path / "s-{0..2}.tar"))
    with pytest.raises(FileNotFoundError, match="not found"):
        ImageShards(str(tmp_path / "nothing-{0..3}.tar"))


def test_writer_and_reader_round_trip(tmp_path):
    items = photo_files(tmp_path / "photos", 10)
    captions = [f"crop {i} of {PHOTOS[i % 4]}" for i in range(10)]
    manifest = write_shards(items, tmp_path / "shards", samples_per_shard=4, captions=captions)
    assert [s["samples"] for s in manifest["shards"]] == [4, 4, 2] and manifest["skipped"] == 0
    with tarfile.open(tmp_path / "shards" / "shard-000000.tar") as tar:
        names = tar.getnames()
        assert names[:4] == ["000000000.jpg", "000000000.cls", "000000000.txt", "000000000.json"]
        assert tar.extractfile("000000001.txt").read().decode() == captions[1]
        assert tar.extractfile("000000001.png").read() == Path(items[1][0]).read_bytes()  # byte for byte
    data = ImageShards(str(tmp_path / "shards" / "shard-{000000..000002}.tar"), size=32)
    assert len(data) == 10 and data.counts["truncated_shards"] == 0
    for i, (path, label) in enumerate(items):
        item = data[i]
        assert item["class_label"] == label and item["relpath"].endswith(f"/{i:09d}")
        with Image.open(path) as img:
            expected = data.transform(img.convert("RGB"))
        torch.testing.assert_close(item["image"], expected, rtol=0, atol=0)
    assert (tmp_path / "shards" / "shard-000000.tar.index.json").is_file()
    # a rerun keeps the finished shards (same file, not rewritten)
    before = os.stat(tmp_path / "shards" / "shard-000001.tar").st_mtime_ns
    write_shards(items, tmp_path / "shards", samples_per_shard=4, captions=captions)
    assert os.stat(tmp_path / "shards" / "shard-000001.tar").st_mtime_ns == before


def _foreign_shard(path: Path, members: list) -> None:
    """A tar as other tools write them (no .json sizes), members (name, bytes)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_damaged_data_is_skipped_and_counted(tmp_path):
    items = photo_files(tmp_path / "photos", 6)
    good = [(f"{i:04d}.{Path(p).suffix[1:]}", Path(p).read_bytes()) for i, (p, _) in enumerate(items)]
    shard = tmp_path / "a.tar"
    _foreign_shard(shard, good[:2] + [("0100.jpg", b"not a jpeg"), ("0101.txt", b"caption without image")] + good[2:])
    data = ImageShards(str(shard), size=32)
    assert len(data) == 7 and data.counts["samples_without_image"] == 1
    batch = collate_skip_none([data[i] for i in range(len(data))])
    assert batch["num_skipped"] == 1 and batch["image"].shape == (6, 3, 32, 32)
    with pytest.raises(RuntimeError, match=r"cannot read image .*/a\.tar/0100"):
        ImageShards(str(shard), size=32, strict=True)[2]

    raw = shard.read_bytes()
    cut = tmp_path / "cut.tar"
    offset = scan_shard(str(shard))["samples"][4][2]  # inside the 5th sample's image bytes
    cut.write_bytes(raw[:offset + 100])
    data = ImageShards([str(cut)], size=32)
    assert data.counts["truncated_shards"] == 1 and len(data) == 4  # the complete samples before the cut


def test_filters_count_what_they_drop(tmp_path):
    sizes = ((60, 48), (20, 20), (90, 30))  # fine, too small, too elongated
    items = photo_files(tmp_path / "photos", 6, sizes=sizes)
    write_shards(items, tmp_path / "shards", samples_per_shard=6)
    data = ImageShards(str(tmp_path / "shards"), size=16, min_size=24, max_aspect_ratio=2.0)
    assert len(data) == 2 and data.counts["filtered_small"] == 2 and data.counts["filtered_aspect"] == 2
    # shards without recorded sizes: the filter applies when the image is read (a skipped item)
    _foreign_shard(tmp_path / "foreign.tar", [(f"{i}.{Path(p).suffix[1:]}", Path(p).read_bytes())
                                              for i, (p, _) in enumerate(items)])
    data = ImageShards(str(tmp_path / "foreign.tar"), size=16, min_size=24, max_aspect_ratio=2.0)
    assert len(data) == 6
    assert sum(data[i] is None for i in range(6)) == 4


def test_order_is_shard_local_deterministic_and_split_into_blocks(tmp_path):
    items = photo_files(tmp_path / "photos", 20)
    write_shards(items, tmp_path / "shards", samples_per_shard=5)
    data = ImageShards(str(tmp_path / "shards"), size=16)
    order = data.epoch_order(0, 3)
    assert order == data.epoch_order(0, 3) != data.epoch_order(0, 4) and sorted(order) == list(range(20))
    assert [len({data.shard[i] for i in order[k:k + 5]}) for k in range(0, 20, 5)] == [1] * 4  # one shard at a time
    ranks = [list(ResumableSampler(data, num_replicas=2, rank=r, seed=0)) for r in range(2)]
    assert [i for r in ranks for i, _ in r] == data.epoch_order(0, 0)  # contiguous blocks: each rank its shards


def _fit(root: Path, run: str, *extra: str, kill_at=None) -> subprocess.CompletedProcess:
    callbacks = [{"class_path": "taming.callbacks.PeriodicCheckpoint",
                  "init_args": {"dirpath": str(root / run), "every_n_train_steps": 3}}]
    if kill_at is not None:
        callbacks.append({"class_path": "callbacks_for_tests.KillAtStep", "init_args": {"step": kill_at}})
    overlay = {
        "trainer": {"max_steps": 8, "limit_val_batches": 0, "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "callbacks": callbacks, "strategy": "ddp", "devices": 2,
                    "accelerator": "cpu"},
        "data": {"init_args": {"batch_size": 2, "num_workers": 2, "validation": None, "train": {
            "class_path": "taming.data.ImageShards",
            "init_args": {"shards": str(root / "shards" / "shard-{000000..000003}.tar"), "size": 32,
                          "random_crop": True, "hflip": True}}}},
    }
    (root / f"{run}.yaml").write_text(yaml.safe_dump(overlay))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "main.py"), "fit", "--config", str(REPO / "configs" / "demo.yaml"),
                           "--config", str(root / f"{run}.yaml"), *extra], cwd=root, env=env, capture_output=True,
                          text=True, timeout=900)


def test_two_ranks_two_workers_sigkill_resume_equals_straight_run(tmp_path):
    """DDP over gloo, 2 ranks x 2 DataLoader workers, 4 shards of 8 crops of real photographs (batch 2 per rank:
    8 steps per epoch), random crops and flips; killed by SIGKILL at step 5 (the last checkpoint is step 3's),
    resumed: the weights, EMA and optimizer state equal the straight 8-step run's bit for bit."""
    photos = photo_files(tmp_path / "photos", 32, sizes=((48, 40), (40, 48)))
    write_shards(photos, tmp_path / "shards", samples_per_shard=8)
    straight = _fit(tmp_path, "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _fit(tmp_path, "killed", kill_at=5)
    assert killed.returncode == -9, killed.stderr[-3000:]
    saved = torch.load(tmp_path / "killed" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3 and saved["ImageDataModule"] == {"epoch": 0, "batches": 3}
    resumed = _fit(tmp_path, "killed", "--ckpt_path", str(tmp_path / "killed" / "last.ckpt"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / "straight" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 8
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=0, msg=key)
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], rtol=0, atol=0)
    assert json.loads((tmp_path / "shards" / "shards.json").read_text())["samples"] == 32
