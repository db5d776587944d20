"""taming.data: mode conversion, corrupt-file skipping, layouts and labels, crops, index cache, demo set, DataModule.
Images are small crops of skimage photographs written to tmp_path; oracles are numpy/PIL computations
written here independently of the package."""

import logging
import os
import warnings

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import taming.data.file_index as file_index
from taming.data import (DemoImages, ImageDataModule, ImageFolder, ImageList, ImageNet, collate_skip_none)
from taming.data.demo import PHOTOS, load_photo

LEVEL = 1 / 127.5  # one uint8 step in [-1, 1] units


def photo(h=32, w=32, top=120, left=180):
    """Real RGB uint8 patch of the astronaut photograph, subsampled by 2."""
    return np.ascontiguousarray(skimage.data.astronaut()[top:top + 2 * h:2, left:left + 2 * w:2])


def as_unit(rgb_uint8) -> torch.Tensor:
    """Oracle of the output convention: uint8 H x W x 3 -> float 3 x H x W, x / 127.5 - 1."""
    return torch.from_numpy(np.asarray(rgb_uint8, dtype=np.float64) / 127.5 - 1).permute(2, 0, 1).float()


def load_one(path, size=32):
    """The single image of a folder through the public dataset, square images at size -> no resize."""
    ds = ImageFolder(str(path.parent), size=size, index_cache_dir=str(path.parent.parent / "cache"))
    (item,) = [ds[i] for i in range(len(ds)) if ds[i]["relpath"] == path.name]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, size, size)
    assert item["image"].min() >= -1 and item["image"].max() <= 1 and item["class_label"] == -1
    return item["image"]


def write_images(folder, n, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(start, start + n):
        Image.fromarray(photo(top=100 + 8 * k)).save(folder / f"img{k}.png")


# ---------------------------------------------------------------- image modes -> RGB

def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "d" / "cmyk.jpg"
    path.parent.mkdir()
    Image.fromarray(photo()).convert("CMYK").save(path, quality=95)
    with Image.open(path) as img:
        assert img.mode == "CMYK"
        cmyk = np.asarray(img).astype(np.float64) / 255
    c, m, y, k = np.moveaxis(cmyk, -1, 0)
    rgb = np.stack([255 * (1 - c) * (1 - k), 255 * (1 - m) * (1 - k), 255 * (1 - y) * (1 - k)], -1)
    torch.testing.assert_close(load_one(path), as_unit(np.rint(rgb)), atol=LEVEL + 1e-6, rtol=0)


def test_rgba_png_composited_on_white(tmp_path):
    path = tmp_path / "d" / "rgba.png"
    path.parent.mkdir()
    rgb = photo()
    alpha = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))  # transparent left -> opaque right
    Image.fromarray(np.dstack([rgb, alpha])).save(path)
    a = alpha[..., None] / 255.0
    expected = rgb * a + 255 * (1 - a)
    out = load_one(path)
    torch.testing.assert_close(out, as_unit(np.rint(expected)), atol=LEVEL + 1e-6, rtol=0)
    assert torch.all(out[:, :, 0] == 1)  # fully transparent column is white, not black


def test_palette_with_transparency_and_la(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    pal = Image.fromarray(photo()).quantize(16)
    pal.info["transparency"] = 0
    pal.save(folder / "p.png", transparency=0)
    index = np.asarray(pal)
    lut = np.asarray(pal.getpalette()[:48]).reshape(16, 3)
    expected_p = np.where((index == 0)[..., None], 255, lut[index])
    torch.testing.assert_close(load_one(folder / "p.png"), as_unit(expected_p), atol=1e-6, rtol=0)

    gray = photo()[..., 1]
    alpha = np.full_like(gray, 128)
    Image.fromarray(np.dstack([gray, alpha]), mode="LA").save(folder / "la.png")
    expected_la = np.repeat((gray * (128 / 255) + 255 * (127 / 255))[..., None], 3, axis=2)
    torch.testing.assert_close(load_one(folder / "la.png"), as_unit(np.rint(expected_la)), atol=LEVEL + 1e-6, rtol=0)


def test_grayscale_png(tmp_path):
    path = tmp_path / "d" / "gray.png"
    path.parent.mkdir()
    gray = np.ascontiguousarray(skimage.data.camera()[100:164:2, 200:264:2])
    Image.fromarray(gray).save(path)
    torch.testing.assert_close(load_one(path), as_unit(np.repeat(gray[..., None], 3, axis=2)), atol=1e-6, rtol=0)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "d" / "gray16.png"
    path.parent.mkdir()
    gray = skimage.data.camera()[100:164:2, 200:264:2].astype(np.int64)
    rng = np.random.default_rng(0)
    v16 = np.clip(gray * 257 + rng.integers(-128, 129, gray.shape), 0, 65535).astype(np.uint16)
    Image.fromarray(v16).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # really a 16-bit file
    expected8 = np.rint(v16 / 257.0)
    assert np.abs(expected8 - gray).max() <= 1 and gray.min() < 100  # clipping would give 255 almost everywhere
    torch.testing.assert_close(load_one(path), as_unit(np.repeat(expected8[..., None], 3, axis=2)), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- corrupt files

@pytest.fixture
def folder_with_corrupt(tmp_path):
    """6 good PNGs, one truncated JPEG, one garbage .jpg in a nested folder."""
    root = tmp_path / "imgs"
    write_images(root, 4)
    write_images(root / "nested" / "deeper", 2, start=4)
    Image.fromarray(photo()).save(tmp_path / "good.jpg", quality=90)
    data = (tmp_path / "good.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "nested" / "garbage.jpg").write_bytes(b"this is not a JPEG" * 20)
    return root


def test_corrupt_images_skipped_logged_and_strict(folder_with_corrupt, tmp_path, caplog):
    ds = ImageFolder(str(folder_with_corrupt), size=32, index_cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 8
    with caplog.at_level(logging.WARNING):
        items = [ds[i] for i in range(len(ds))]
    bad = sorted(ds.relpaths[i].decode() for i, item in enumerate(items) if item is None)
    assert bad == ["nested/garbage.jpg", "truncated.jpg"]
    for name in bad:
        assert any(str(folder_with_corrupt / name) in r.getMessage() for r in caplog.records)
    batch = collate_skip_none(items)
    assert batch["num_skipped"] == 2 and batch["image"].shape == (6, 3, 32, 32) and len(batch["relpath"]) == 6

    strict = ImageFolder(str(folder_with_corrupt), size=32, strict=True, index_cache_dir=str(tmp_path / "cache"))
    i = int(np.flatnonzero(strict.relpaths == b"truncated.jpg")[0])
    with pytest.raises(RuntimeError, match="truncated.jpg"):
        strict[i]


def test_collate_all_bad_batch():
    batch = collate_skip_none([None, None, None])
    assert batch["num_skipped"] == 3 and batch["image"].shape[0] == 0 and batch["relpath"] == []


# ---------------------------------------------------------------- layouts, labels, start-up errors

def test_missing_root_and_empty_split_fail_at_construction(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(FileNotFoundError, match=str(missing)) as err:
        ImageNet(str(missing), split="train")
    assert "<wnid>" in str(err.value)
    (tmp_path / "inet" / "val").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "inet" / "train")):
        ImageNet(str(tmp_path / "inet"), split="train")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "inet" / "val")) as err:
        ImageNet(str(tmp_path / "inet"), split="val", index_cache_dir=str(tmp_path / "cache"))
    assert "no images" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty")):
        ImageFolder(str(tmp_path / "empty"), index_cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="list.txt"):
        ImageList(str(tmp_path / "list.txt"))


def test_imagenet_labels_are_sorted_wnid_order(tmp_path):
    root = tmp_path / "inet"
    wnids = ["n04000001", "n01440764", "n02000000"]  # deliberately not in sorted order on disk
    for k, wnid in enumerate(wnids):
        write_images(root / "val" / wnid, 2, start=2 * k)
        Image.fromarray(photo()).save(root / "val" / wnid / f"{wnid}_9.JPEG")
    ds = ImageNet(str(root), split="val", size=32, index_cache_dir=str(tmp_path / "cache"))
    assert ds.classes == sorted(wnids) and len(ds) == 9
    for i in range(len(ds)):
        item = ds[i]
        assert item["class_label"] == sorted(wnids).index(item["relpath"].split("/")[0])
    assert not ds.transform.random_crop  # val -> center crop by default

    (root / "train").mkdir()
    Image.fromarray(photo()).save(root / "train" / "loose.JPEG")
    with pytest.raises(ValueError, match="synset folders"):
        ImageNet(str(root), split="train", index_cache_dir=str(tmp_path / "cache"))


def test_image_list_relative_absolute_and_labels(tmp_path):
    write_images(tmp_path / "a", 2)
    (tmp_path / "list.txt").write_text(f"# comment\na/img0.png 7\n\n{tmp_path / 'a' / 'img1.png'}\n")
    ds = ImageList(str(tmp_path / "list.txt"), size=32)
    assert [ds[i]["class_label"] for i in range(2)] == [7, -1]
    torch.testing.assert_close(ds[0]["image"], as_unit(photo(top=100)), atol=1e-6, rtol=0)
    torch.testing.assert_close(ds[1]["image"], as_unit(photo(top=108)), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- crops

def test_val_center_crop_and_train_random_crop_match_hand_crops(tmp_path):
    rgb = photo(h=48, w=64)
    folder = tmp_path / "one"
    folder.mkdir()
    Image.fromarray(rgb).save(folder / "x.png")
    resized = np.asarray(Image.fromarray(rgb).resize((42, 32), Image.BILINEAR))  # 48x64 -> shorter side 32
    windows = [as_unit(resized[:, j:j + 32]) for j in range(42 - 32 + 1)]

    val = ImageFolder(str(folder), size=32, random_crop=False, index_cache_dir=str(tmp_path / "cache"))
    torch.testing.assert_close(val[0]["image"], windows[5], atol=1e-6, rtol=0)  # round((42 - 32) / 2) = 5

    torch.manual_seed(0)
    train = ImageFolder(str(folder), size=32, random_crop=True, hflip=True, index_cache_dir=str(tmp_path / "cache"))
    offsets, flips = set(), set()
    for _ in range(30):
        out = train[0]["image"]
        matches = [(j, f) for j, w in enumerate(windows) for f in (False, True)
                   if torch.allclose(out, w.flip(-1) if f else w, atol=1e-6)]
        assert matches, "training crop is not a window of the resized image"
        offsets.add(matches[0][0])
        flips.add(matches[0][1])
    assert len(offsets) > 3 and flips == {False, True}


# ---------------------------------------------------------------- index cache

def test_index_cache_reused_invalidated_and_outside_root(tmp_path, monkeypatch):
    root, cache = tmp_path / "imgs", tmp_path / "cache"
    write_images(root / "sub", 3)
    before = sorted(p for p in root.rglob("*"))
    calls = []
    real_scandir = os.scandir
    monkeypatch.setattr(file_index.os, "scandir", lambda p: calls.append(p) or real_scandir(p))

    first = ImageFolder(str(root), size=32, index_cache_dir=str(cache))
    assert len(first) == 3 and len(calls) == 2  # root and sub
    assert sorted(p for p in root.rglob("*")) == before and len(list(cache.iterdir())) == 1

    calls.clear()
    second = ImageFolder(str(root), size=32, index_cache_dir=str(cache))
    assert calls == [] and list(second.relpaths) == list(first.relpaths)

    write_images(root / "sub", 1, start=3)  # new file in a nested folder changes that folder's mtime
    third = ImageFolder(str(root), size=32, index_cache_dir=str(cache))
    assert len(calls) == 2 and len(third) == 4

    calls.clear()
    ImageFolder(str(root), size=32, index_cache_dir=str(cache), rebuild_index=True)
    assert len(calls) == 2


# ---------------------------------------------------------------- demo dataset

def test_demo_images_disjoint_and_deterministic():
    train, val = DemoImages("train", size=32, length=24), DemoImages("val", size=32)
    assert len(val) == 32
    def regions(ds):  # (photo, first column, last column + 1) of every crop, from its relpath
        out = []
        for i in range(len(ds)):
            name, rest = ds[i]["relpath"].split("/")
            _, _, x, side = rest.split("_")
            out.append((name, int(x[1:]), int(x[1:]) + int(side[1:])))
        return out

    boundary = {name: round(load_photo(name).shape[1] * 0.75) for name in PHOTOS}
    assert all(end <= boundary[name] for name, _, end in regions(train))  # left three quarters
    assert all(start >= boundary[name] for name, start, _ in regions(val))  # the held-out quarter
    assert len({r[0] for r in regions(train)}) > 5 and len({r[0] for r in regions(val)}) > 5
    again = DemoImages("train", size=32, length=24)
    other_seed = DemoImages("train", size=32, length=24, seed=1)
    for i in range(len(train)):
        item = train[i]
        assert item["image"].shape == (3, 32, 32) and -1 <= item["image"].min() < item["image"].max() <= 1
        assert torch.equal(item["image"], again[i]["image"]) and item["relpath"] == again[i]["relpath"]
    assert any(not torch.equal(train[i]["image"], other_seed[i]["image"]) for i in range(len(train)))
    val_images = torch.stack([val[i]["image"] for i in range(len(val))])
    assert not any(torch.equal(train[i]["image"], v) for i in range(len(train)) for v in val_images)


# ---------------------------------------------------------------- DataModule

@pytest.mark.parametrize("num_workers", [0, 2])
def test_datamodule_skips_and_counts_through_dataloader(folder_with_corrupt, tmp_path, num_workers):
    ds = ImageFolder(str(folder_with_corrupt), size=32, index_cache_dir=str(tmp_path / "cache"))
    dm = ImageDataModule(train=ds, validation=ds, batch_size=3, num_workers=num_workers)
    for loader, shuffled in ((dm.train_dataloader(), True), (dm.val_dataloader(), False)):
        batches = list(loader)
        assert sum(b["num_skipped"] for b in batches) == 2
        assert sum(b["image"].shape[0] for b in batches) == 6
        relpaths = [p for b in batches for p in b["relpath"]]
        assert len(set(relpaths)) == 6 and (shuffled or relpaths == sorted(relpaths))
    assert loader.persistent_workers == (num_workers > 0)
    with pytest.raises(ValueError, match="test"):
        dm.test_dataloader()
    assert ImageDataModule(train=ds, num_workers=0).val_dataloader() == []


def test_datamodule_from_class_path_config():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(ImageDataModule, "data")
    cfg = parser.parse_object({"data": {
        "batch_size": 4, "num_workers": 0,
        "train": {"class_path": "taming.data.DemoImages", "init_args": {"size": 32, "length": 8}},
        "validation": {"class_path": "taming.data.DemoImages", "init_args": {"split": "val", "size": 32}}}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        dm = parser.instantiate_classes(cfg).data
    assert isinstance(dm.datasets["train"], DemoImages) and len(dm.datasets["train"]) == 8
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["num_skipped"] == 0


def test_uint8_to_unit_range_is_bit_exact_with_the_reference():
    from taming.data.loading import to_tensor

    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    img = Image.fromarray(np.stack([values] * 3, axis=-1))
    reference = (values.astype(np.float64) / 127.5 - 1.0).astype(np.float32)  # the reference's numpy arithmetic
    assert np.array_equal(to_tensor(img)[0].numpy(), reference)


def test_resumable_sampler_against_distributed_sampler():
    """Each rank's order is DistributedSampler's (a permutation of (seed, epoch)); resuming skips exactly the samples
    consumed, moves to the next epoch when all were, and sets the epoch before any iterator exists."""
    from torch.utils.data import DistributedSampler

    from taming.data.sampler import ResumableSampler
    data = list(range(21))
    for rank in range(2):
        reference = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=3)
        reference.set_epoch(4)
        order = list(reference)
        sampler = ResumableSampler(data, num_replicas=2, rank=rank, seed=3)
        sampler.resume(4, 6)
        assert list(sampler) == [(i, 4) for i in order[6:]]  # no set_epoch call: Lightning's restart order
        sampler.set_epoch(5)
        reference.set_epoch(5)
        assert [i for i, _ in sampler] == list(reference)  # later epochs are whole
        sampler = ResumableSampler(data, num_replicas=2, rank=rank, seed=3)
        sampler.resume(4, len(order))  # checkpoint after the epoch's last batch
        assert sampler.epoch == 5 and [i for i, _ in sampler] == list(reference)
