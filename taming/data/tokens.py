"""Token folders: images encoded by a tokenizer, for training autoregressive models.

Layout of a folder written by `scripts/encode_tokens.py` (format "taming-tokens-v2"):
- `manifest.json`: the tokenizer (checkpoint, SHA-256, component configs, EMA or raw), the quantizer
  (`codebook_size`; `bits` and `bit_order` for LFQ only), `token_layout` ("grid" / "sequence"), `token_shape`,
  `index_dtype`, the image protocol (`image_size`, `crop`, `views`: 1, or 10 for LlamaGen's ten-crop), the dataset,
  and `shards`: per shard its image and skip counts and each file's size and SHA-256; `complete` when all are done.
- `tokens_NNNNN.npy`: indices, N x views x *token_shape in the smallest integer type holding the codebook
  (uint8 up to 256 codes, uint16 up to 65536, int32 above), memory-mapped when read;
- `tokens_NNNNN.json`: per image its class label (-1 = unknown), position in the dataset and relative path.
- `tokens_NNNNN.done.json`: written last, atomically: the shard's record (counts, file sizes, SHA-256); a rerun
  skips a shard only when this record exists and its files still match it.
Folders of the earlier format "taming-tokens-v1" (`tokens_NNNNN.pt`) are read too (loaded, not memory-mapped).
"""
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..checkpoints import atomic_path, file_sha256
from ..modules.component import register
from .loading import sample_rng, split_key

FORMAT = "taming-tokens-v2"
FORMATS_READ = (FORMAT, "taming-tokens-v1")
MANIFEST = "manifest.json"
VERIFY_MODES = ("none", "size", "stat", "sha256")


def index_dtype(codebook_size: int) -> np.dtype:
    """Smallest integer type that holds indices in [0, codebook_size)."""
    for dtype in (np.uint8, np.uint16, np.int32, np.int64):
        if codebook_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"codebook size {codebook_size} does not fit int64 indices")


def shard_stem(k: int) -> str:
    return f"tokens_{k:05d}"


def write_json_atomic(path: Path, data) -> None:
    """Write JSON through `atomic_path`: readers never see a partial file."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} {path} is corrupt ({err}); delete the folder, or this file, and rerun "
                         "scripts/encode_tokens.py") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} does not hold a JSON object; rerun scripts/encode_tokens.py")
    return data


def write_shard(folder: Path, k: int, indices: np.ndarray, labels: Sequence[int], positions: Sequence[int],
                relpaths: Sequence[str], num_skipped: int) -> dict:
    """Write shard k's files atomically and then its completion record; return the record."""
    stem = shard_stem(k)
    files = {f"{stem}.npy": None, f"{stem}.json": None}
    with atomic_path(folder / f"{stem}.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(indices))
    write_json_atomic(folder / f"{stem}.json", {"class_label": [int(v) for v in labels],
                                               "index": [int(v) for v in positions], "relpath": list(relpaths)})
    for name in files:
        stat = (folder / name).stat()
        files[name] = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_sha256(folder / name)}
    record = {"name": stem, "num_images": int(len(indices)), "num_skipped": int(num_skipped), "files": files,
              "index_range": _value_range(indices), "label_range": _value_range(labels)}
    write_json_atomic(folder / f"{stem}.done.json", record)
    return record


def _value_range(values) -> Optional[list]:
    """[min, max] of an array (memory-mapped ones too), None when it is empty."""
    array = np.asarray(values)
    return [int(array.min()), int(array.max())] if array.size else None


def check_shard(folder: Path, record: dict, verify: str = "sha256") -> Optional[str]:
    """None when the shard's files match their record, else what is wrong. `verify`: "size"; "stat" (size, and the
    SHA-256 of every file whose modification time is not the recorded one: a file replaced since it was written,
    e.g. a same-size shard of another tokenizer, is hashed and caught, an untouched one is not re-read); "sha256"
    (every file hashed)."""
    for name, expected in record["files"].items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        stat = path.stat()
        if stat.st_size != expected["bytes"]:
            return f"{name} has {stat.st_size} bytes, expected {expected['bytes']} (truncated or rewritten)"
        rehash = verify == "sha256" or (verify == "stat" and stat.st_mtime_ns != expected.get("mtime_ns"))
        if rehash and file_sha256(path) != expected["sha256"]:
            return f"{name} does not match its SHA-256 (damaged, or replaced by another file)"
    return None


def finished_shard(folder: Path, k: int, verify: str = "sha256") -> Optional[dict]:
    """Shard k's completion record if the shard is complete and intact, else None (it must be (re)written)."""
    done = folder / f"{shard_stem(k)}.done.json"
    if not done.is_file():
        return None
    try:
        record = read_json(done, "shard record")
    except ValueError:
        return None
    return record if check_shard(folder, record, verify) is None else None


class TokenFolder:
    """A token folder's manifest and shards (read-only). `verify` (see `check_shard`): "stat" (default: sizes, and
    SHA-256 of the files modified since they were written), "size", "sha256" or "none".

    `indices(k)` is shard k's array, memory-mapped (format v2); `labels(k)` its class labels.
    """

    def __init__(self, path, verify: str = "stat"):
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        path = Path(path)
        self.folder = path.parent if path.is_file() else path
        if not self.folder.is_dir():
            raise FileNotFoundError(f"token folder {self.folder} not found; write one with scripts/encode_tokens.py")
        self.manifest = read_json(self.folder / MANIFEST, "token manifest")
        fmt = self.manifest.get("format")
        if fmt not in FORMATS_READ:
            raise ValueError(f"{self.folder / MANIFEST} has format {fmt!r}; expected one of {FORMATS_READ}")
        self.version = 1 if fmt == "taming-tokens-v1" else 2
        if self.version == 2 and not self.manifest.get("complete"):
            raise ValueError(f"{self.folder} is not complete (an interrupted tokenization): rerun "
                             "scripts/encode_tokens.py with the same arguments to finish it")
        names = self.manifest["shards"] if self.version == 1 else [s["name"] for s in self.manifest["shards"]]
        self.shard_names: List[str] = [Path(n).stem for n in names]
        if path.is_file():  # one shard of the folder
            self.shard_names = [path.name.split(".")[0]]
        if self.version == 2 and verify != "none":
            records = {s["name"]: s for s in self.manifest["shards"]}
            for name in self.shard_names:
                problem = check_shard(self.folder, records[name], verify)
                if problem:
                    raise ValueError(f"token shard {name} in {self.folder}: {problem}; rerun scripts/encode_tokens.py "
                                     "with the same arguments to rewrite it")
        self._cache: Dict[str, dict] = {}

    @property
    def num_shards(self) -> int:
        return len(self.shard_names)

    @property
    def views(self) -> int:
        return int(self.manifest.get("views", 1))

    @property
    def codebook_size(self) -> int:
        if self.version == 1:
            return 2 ** int(self.manifest["codebook_bits"])
        return int(self.manifest["quantizer"]["codebook_size"])

    @property
    def token_shape(self) -> tuple:
        return tuple(self.manifest["token_shape" if self.version == 2 else "token_grid"])

    @property
    def bit_order(self) -> Optional[str]:
        return self.manifest.get("bit_order") if self.version == 1 else self.manifest["quantizer"].get("bit_order")

    def _shard(self, k: int) -> dict:
        """{"indices": array N x views x *token_shape, "class_label", "index", "relpath"} of shard k."""
        name = self.shard_names[k]
        if name not in self._cache:
            if self.version == 1:
                shard = torch.load(self.folder / f"{name}.pt", map_location="cpu", weights_only=True)
                meta = {key: shard[key] for key in ("class_label", "index", "relpath")}
                meta["indices"] = shard["indices"].numpy()[:, None]
            else:
                meta = read_json(self.folder / f"{name}.json", "token shard metadata")
                meta["indices"] = np.load(self.folder / f"{name}.npy", mmap_mode="r")
            meta["class_label"] = np.asarray(meta["class_label"], dtype=np.int64)
            self._cache[name] = meta
        return self._cache[name]

    def shard_sizes(self) -> List[int]:
        if self.version == 2:
            records = {s["name"]: s for s in self.manifest["shards"]}
            return [records[n]["num_images"] for n in self.shard_names]
        return [len(self._shard(k)["relpath"]) for k in range(self.num_shards)]

    def value_ranges(self) -> Dict[str, Optional[tuple]]:
        """{"index": (min, max), "label": (min, max)} over the folder's shards, from their records (computed from
        the data for folders written before the records held them); None for an empty folder."""
        records = {s["name"]: s for s in self.manifest["shards"]} if self.version == 2 else {}
        ranges = {"index": [], "label": []}
        for k, name in enumerate(self.shard_names):
            record = records.get(name, {})
            for key, read in (("index", self.indices), ("label", self.labels)):
                found = record[f"{key}_range"] if f"{key}_range" in record else _value_range(read(k))
                if found is not None:
                    ranges[key].append(found)
        return {key: (min(r[0] for r in found), max(r[1] for r in found)) if found else None
                for key, found in ranges.items()}

    def indices(self, k: int) -> np.ndarray:
        return self._shard(k)["indices"]

    def labels(self, k: int) -> np.ndarray:
        return self._shard(k)["class_label"]

    def relpaths(self, k: int) -> List[str]:
        return list(self._shard(k)["relpath"])

    def __getstate__(self):  # DataLoader workers re-open the memory maps themselves
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state


@register
class TokenDataset(Dataset):
    """Items {"tokens": int64 *token_shape, "class_label": int} of a token folder, memory-mapped.

    For ten-crop folders (views > 1) each access picks one view: from (seed, epoch, index) when the sampler yields
    (index, epoch) keys (`ResumableSampler`), so resumed runs see the same views; `view` fixes one instead.
    """

    def __init__(self, path, verify: str = "stat", view: Optional[int] = None, seed: int = 0):
        self.folder = TokenFolder(path, verify)
        if sum(self.folder.shard_sizes()) == 0:
            raise ValueError(f"token folder {self.folder.folder} holds no token sequences (every image was "
                             "unreadable, or none was given); check the data given to scripts/encode_tokens.py")
        if view is not None and not 0 <= view < self.folder.views:
            raise ValueError(f"view must be in [0, {self.folder.views}) for {path}, got {view}")
        self.view, self.seed = view, seed
        self.offsets = np.cumsum([0] + self.folder.shard_sizes())

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key) -> dict:
        i = split_key(key)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} token sequences")
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        row = i - int(self.offsets[k])
        views = self.folder.views
        view = self.view if self.view is not None else (int(sample_rng(key, self.seed).integers(views)) if views > 1 else 0)
        tokens = torch.from_numpy(np.asarray(self.folder.indices(k)[row, view]).astype(np.int64))
        return {"tokens": tokens, "class_label": int(self.folder.labels(k)[row])}
