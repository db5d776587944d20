"""WebDataset-style tar shards: reading them as a map-style dataset (`ImageShards`) and writing them (`write_shards`).

A shard is a plain tar file; members sharing a key (the member path up to the first dot of its file name) form one
sample and their extensions name its fields: the image (`jpg`, `png`, ...), `cls` (the integer label as text),
`txt` (a caption) and `json` (metadata; the writer stores {"relpath", "width", "height"}). Shards made by other tools
(LAION / CC12M img2dataset output, the Open-MAGVIT2 pretraining data) read the same way.

Reading: every shard is indexed once (member offsets, labels and recorded sizes; a scan of the tar headers cached
next to the shard as `<shard>.index.json`, or under `index_cache_dir`), so any sample is one seek and one read. The
training order is shard-local and exact to resume: `epoch_order(seed, epoch)` shuffles the shards and the samples
inside each shard from (seed, epoch); `ResumableSampler` deals contiguous blocks of it to the ranks (each rank reads
its own shards) and skips what a checkpoint already consumed; augmentation draws from (seed, epoch, index). A
corrupt image is skipped and counted (batch["num_skipped"]); a truncated shard keeps its complete samples and is
counted; a missing shard is an error at start.
"""
import hashlib
import io
import json
import logging
import os
import re
import tarfile
from glob import glob
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..modules.component import register
from .loading import ImageTransform, sample_rng, split_key, to_rgb

log = logging.getLogger(__name__)

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "jpg.jpg", "jpeg.jpg", "bmp")  # the first present is the image
INDEX_VERSION = 1


# ------------------------------------------------------------------------------------------------ shard lists


def expand_braces(pattern: str) -> List[str]:
    """WebDataset brace patterns: "a-{000..012}.tar" (zero-padded ranges), "{x,y}" (alternatives), nested."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[:match.start()], match[1], pattern[match.end():]
    span = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if span:
        lo, hi = int(span[1]), int(span[2])
        if hi < lo:
            raise ValueError(f"empty range {{{body}}} in shard pattern {pattern!r}")
        width = len(span[1]) if span[1].startswith("0") else 0
        options = [str(i).zfill(width) for i in range(lo, hi + 1)]
    else:
        options = body.split(",")
    return [out for option in options for out in expand_braces(head + option + tail)]


def list_shards(shards: Union[str, Sequence[str]]) -> List[str]:
    """Shard paths from patterns: brace ranges, globs (`*`), folders (their *.tar) or files; a pattern that names
    no existing file is an error listing what is missing."""
    patterns = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    if not patterns:
        raise ValueError("no shards given; pass a path, a folder or a pattern like data/shards/train-{000000..000099}.tar")
    found, missing = [], []
    for pattern in patterns:
        for path in expand_braces(os.path.expanduser(str(pattern))):
            if any(c in path for c in "*?["):
                matches = sorted(glob(path))
                found.extend(matches) if matches else missing.append(path)
            elif os.path.isdir(path):
                matches = sorted(glob(os.path.join(path, "*.tar")))
                found.extend(matches) if matches else missing.append(f"{path}/*.tar")
            elif os.path.isfile(path):
                found.append(path)
            else:
                missing.append(path)
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) not found: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return found


# ------------------------------------------------------------------------------------------------ indexing


def _key_and_field(name: str) -> Tuple[str, str]:
    folder, _, base = name.rpartition("/")
    stem, _, field = base.partition(".")
    return (folder + "/" + stem if folder else stem), field.lower()


def scan_shard(path: str) -> dict:
    """{"samples": [[key, image field, offset, size, label, width, height], ...], "truncated": bool,
    "no_image": n}: one pass over the tar headers, reading only the small members (cls, json)."""
    samples: Dict[str, dict] = {}
    order: List[str] = []
    truncated = False
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, field = _key_and_field(member.name)
                if key not in samples:
                    samples[key] = {}
                    order.append(key)
                entry = samples[key]
                if field in IMAGE_FIELDS:
                    entry.setdefault("image", (field, member.offset_data, member.size))
                elif field == "cls":
                    text = tar.extractfile(member).read().decode("utf-8", "replace").strip()
                    entry["label"] = int(text) if text.lstrip("-").isdigit() else -1
                elif field == "json" and member.size < 65536:
                    try:
                        meta = json.loads(tar.extractfile(member).read())
                        entry["size"] = (int(meta["width"]), int(meta["height"]))
                    except (ValueError, KeyError, TypeError):
                        pass
    except (tarfile.ReadError, EOFError, OSError) as err:  # a truncated or damaged tar: keep what was complete
        truncated = True
        log.warning("shard %s is damaged after %d samples (%s: %s); the rest is skipped", path, len(order),
                    type(err).__name__, err)
    out, no_image = [], 0
    file_size = os.path.getsize(path)
    for key in order:
        entry = samples[key]
        if "image" not in entry:
            no_image += 1
            continue
        field, offset, size = entry["image"]
        if offset + size > file_size:  # cut off by the truncation
            truncated = True
            continue
        width, height = entry.get("size", (0, 0))
        out.append([key, field, offset, size, entry.get("label", -1), width, height])
    return {"samples": out, "truncated": truncated, "no_image": no_image}


def shard_index(path: str, cache_dir: Optional[str] = None) -> dict:
    """`scan_shard(path)`, cached in `<shard>.index.json` (or `cache_dir`) and reused while the shard's size and
    modification time are unchanged; an unwritable cache location only costs the rescan."""
    stat = os.stat(path)
    stamp = {"version": INDEX_VERSION, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:10]
    cache = Path(cache_dir) / f"{Path(path).name}.{digest}.index.json" if cache_dir else Path(path + ".index.json")
    try:
        cached = json.loads(cache.read_text())
        if cached.get("stamp") == stamp:
            return cached
    except (OSError, ValueError):
        pass
    index = {"stamp": stamp, **scan_shard(path)}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.partial")
        tmp.write_text(json.dumps(index))
        os.replace(tmp, cache)
    except OSError:
        pass
    return index


# ------------------------------------------------------------------------------------------------ dataset


@register
class ImageShards(Dataset):
    """Images from WebDataset-style tar shards (module docstring).

    shards: a path, folder or pattern, or a list of them ("data/laion/{00000..01999}.tar", "data/cc12m/*.tar").
    size / random_crop / hflip / resize_range: as `ImageTransform` (shorter side to `size`, crop, flip).
    min_size: drop images whose shorter side is below it (pixels); max_aspect_ratio: drop images whose longer /
        shorter side exceeds it. Applied when indexing where the shard records sizes (this project's writer),
        otherwise after reading the image header; every drop is counted (`counts`, batch["num_skipped"]).
    strict: raise on an unreadable image instead of skipping it.
    Items: {"image", "class_label" (the `cls` field, -1 without), "relpath": "<shard path>/<key>"}.
    """

    def __init__(self, shards: Union[str, Sequence[str]], size: int = 256, random_crop: bool = False,
                 hflip: bool = False, resize_range: Optional[Sequence[int]] = None, min_size: int = 0,
                 max_aspect_ratio: Optional[float] = None, strict: bool = False, seed: int = 0,
                 index_cache_dir: Optional[str] = None):
        if min_size < 0 or (max_aspect_ratio is not None and max_aspect_ratio < 1):
            raise ValueError(f"need min_size >= 0 and max_aspect_ratio >= 1 (or null), got {min_size} and "
                             f"{max_aspect_ratio}")
        self.paths = list_shards(shards)
        self.transform = ImageTransform(size, random_crop, hflip, resize_range)
        self.min_size, self.max_aspect_ratio, self.strict, self.seed = min_size, max_aspect_ratio, strict, seed
        self.counts = {"shards": len(self.paths), "truncated_shards": 0, "samples_without_image": 0,
                       "filtered_small": 0, "filtered_aspect": 0}
        columns = {name: [] for name in ("shard", "offset", "size", "label")}
        self.keys: List[str] = []
        starts = [0]
        for shard, path in enumerate(self.paths):
            index = shard_index(path, index_cache_dir)
            self.counts["truncated_shards"] += bool(index["truncated"])
            self.counts["samples_without_image"] += index["no_image"]
            for key, _, offset, nbytes, label, width, height in index["samples"]:
                if width and height and self._filtered(width, height, count=True):
                    continue
                columns["shard"].append(shard)
                columns["offset"].append(offset)
                columns["size"].append(nbytes)
                columns["label"].append(label)
                self.keys.append(key)
            starts.append(len(self.keys))
        if not self.keys:
            raise ValueError(f"no usable samples in {len(self.paths)} shard(s) ({self.counts}); an image member "
                             f"needs one of the extensions {IMAGE_FIELDS}")
        # numpy arrays, not lists of Python objects: DataLoader workers share them without copy-on-access
        self.shard = np.asarray(columns["shard"], dtype=np.int32)
        self.offset = np.asarray(columns["offset"], dtype=np.int64)
        self.nbytes = np.asarray(columns["size"], dtype=np.int64)
        self.labels = np.asarray(columns["label"], dtype=np.int64)
        self.keys = np.array([k.encode("utf-8", "surrogateescape") for k in self.keys], dtype=np.bytes_)
        self.starts = np.asarray(starts, dtype=np.int64)  # sample range of shard s: starts[s] .. starts[s + 1]
        self._files: Dict[int, object] = {}
        self._pid = None
        log.info("ImageShards: %d samples in %d shards %s", len(self.keys), len(self.paths), self.counts)

    def _filtered(self, width: int, height: int, count: bool = False) -> bool:
        reason = None
        if min(width, height) < self.min_size:
            reason = "filtered_small"
        elif self.max_aspect_ratio is not None and max(width, height) > self.max_aspect_ratio * min(width, height):
            reason = "filtered_aspect"
        if reason and count:
            self.counts[reason] += 1
        return reason is not None

    def __len__(self) -> int:
        return len(self.keys)

    def epoch_order(self, seed: int, epoch: int) -> List[int]:
        """The epoch's sample order: shards in a random order, each shard's samples in a random order, both from
        (seed, epoch); consecutive samples come from one shard (sequential reading, little seeking)."""
        rng = np.random.default_rng([seed, epoch])
        order = []
        for shard in rng.permutation(len(self.paths)):
            start, stop = self.starts[shard], self.starts[shard + 1]
            order.extend((start + rng.permutation(stop - start)).tolist())
        return order

    def _file(self, shard: int):
        if self._pid != os.getpid():  # a DataLoader worker: open its own handles
            self._files, self._pid = {}, os.getpid()
        handle = self._files.get(shard)
        if handle is None:
            if len(self._files) >= 64:
                self._files.pop(next(iter(self._files))).close()
            handle = self._files[shard] = open(self.paths[shard], "rb")
        return handle

    def read_bytes(self, i: int) -> bytes:
        handle = self._file(int(self.shard[i]))
        handle.seek(int(self.offset[i]))
        data = handle.read(int(self.nbytes[i]))
        if len(data) != self.nbytes[i]:
            raise OSError(f"shard ends after {len(data)} of {self.nbytes[i]} bytes")
        return data

    def __getitem__(self, key) -> Optional[dict]:
        i = split_key(key)
        relpath = f"{self.paths[self.shard[i]]}/{self.keys[i].decode('utf-8', 'surrogateescape')}"
        try:
            image = Image.open(io.BytesIO(self.read_bytes(i)))
            if self._filtered(*image.size):
                return None
            image = to_rgb(image)
            image = (self.transform(image, sample_rng(key, self.seed)) if self.transform.random
                     else self.transform(image))
        except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
            if self.strict:
                raise RuntimeError(f"cannot read image {relpath}: {type(err).__name__}: {err} "
                                   "(set strict=False to skip unreadable images)") from err
            log.warning("skipping unreadable image %s (%s: %s)", relpath, type(err).__name__, err)
            return None
        return {"image": image, "class_label": int(self.labels[i]), "relpath": relpath}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_files"], state["_pid"] = {}, None  # open files stay in their process
        return state


# ------------------------------------------------------------------------------------------------ writing


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def write_shards(items, output_dir: Union[str, Path], samples_per_shard: int = 1000, prefix: str = "shard",
                 captions: Optional[Sequence[Optional[str]]] = None) -> dict:
    """Write (path, label) items (image files, stored byte for byte) into `<output_dir>/<prefix>-NNNNNN.tar`.

    Each sample: `<key>.<ext>` (the file's own bytes and format), `<key>.cls` (label, when >= 0), `<key>.txt`
    (the caption, when given), `<key>.json` ({"relpath", "width", "height"}). Unreadable files are skipped and
    counted. Shards are written to a temporary name and renamed, then indexed; a rerun keeps the shards that are
    complete (listed in `shards.json` with their sample counts) and writes the rest. Returns the manifest.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "shards.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    done = {s["name"]: s for s in old.get("shards", []) if (out / s["name"]).is_file()}
    items = list(items)
    shards, skipped = [], []
    for number, start in enumerate(range(0, len(items), samples_per_shard)):
        name = f"{prefix}-{number:06d}.tar"
        if name in done and done[name]["first_item"] == start:
            shards.append(done[name])
            skipped.extend(done[name].get("skipped", []))
            continue
        tmp = out / f".{name}.partial"
        count, bad = 0, []
        with tarfile.open(tmp, "w") as tar:
            for i in range(start, min(start + samples_per_shard, len(items))):
                path, label = items[i]
                try:
                    data = Path(path).read_bytes()
                    with Image.open(io.BytesIO(data)) as image:
                        image.verify()
                    with Image.open(io.BytesIO(data)) as image:
                        width, height, fmt = image.width, image.height, (image.format or "").lower()
                except Exception as err:  # missing or undecodable: skipped and counted
                    bad.append(f"{path}: {type(err).__name__}")
                    continue
                ext = {"jpeg": "jpg", "mpo": "jpg"}.get(fmt, fmt) or Path(path).suffix.lstrip(".").lower()
                key = f"{i:09d}"
                _tar_add(tar, f"{key}.{ext}", data)
                if label is not None and label >= 0:
                    _tar_add(tar, f"{key}.cls", str(int(label)).encode())
                if captions is not None and captions[i]:
                    _tar_add(tar, f"{key}.txt", captions[i].encode("utf-8"))
                _tar_add(tar, f"{key}.json", json.dumps({"relpath": str(path), "width": width,
                                                         "height": height}).encode())
                count += 1
        os.replace(tmp, out / name)
        shard_index(str(out / name))
        shards.append({"name": name, "first_item": start, "samples": count, "skipped": bad})
        skipped.extend(bad)
        _write_manifest(manifest_path, shards, skipped)  # after every shard: a rerun keeps what is done
    return _write_manifest(manifest_path, shards, skipped)


def _write_manifest(path: Path, shards: list, skipped: list) -> dict:
    manifest = {"shards": shards, "samples": sum(s["samples"] for s in shards), "skipped": len(skipped)}
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)
    return manifest
