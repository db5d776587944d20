"""Recursive image listing, built once with os.scandir and cached outside the dataset root."""

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

from ..checkpoints import atomic_path

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/taming/file_index`, else `~/.cache/taming/file_index`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "taming" / "file_index"


def _scan(directory: str, extensions: tuple) -> tuple:
    """(sorted relpaths with '/' separators, {relative dir: st_mtime_ns} of every directory visited).
    Follows symlinks (loops are visited once); skips hidden entries such as `.ready`."""
    files, dir_mtimes, seen = [], {}, set()
    stack = [""]
    while stack:
        rel = stack.pop()
        full = os.path.join(directory, rel)
        st = os.stat(full)
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        dir_mtimes[rel] = st.st_mtime_ns
        with os.scandir(full) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                relpath = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir():
                    stack.append(relpath)
                elif entry.name.lower().endswith(extensions):
                    if "\n" in entry.name:
                        log.warning("ignoring image with a newline in its name: %r", os.path.join(full, entry.name))
                    else:
                        files.append(relpath)
    files.sort()
    return files, dir_mtimes


def _read_cache(cache_file: Path, directory: str) -> Optional[list]:
    """The cached list if it exists and no scanned directory changed (added/removed/renamed entries change
    the mtime of their parent directory), else None."""
    try:
        with open(cache_file, encoding="utf-8", errors="surrogateescape", newline="\n") as f:
            header = json.loads(f.readline())
            if header.get("version") != _CACHE_VERSION or header.get("directory") != directory:
                return None
            for rel, mtime in header["dir_mtimes"].items():
                if os.stat(os.path.join(directory, rel)).st_mtime_ns != mtime:
                    return None
            return f.read().split("\n")[:-1]  # names may contain \r etc.; only \n separates
    except (OSError, ValueError, KeyError):
        return None


def _write_cache(cache_file: Path, directory: str, files: list, dir_mtimes: dict) -> None:
    header = {"version": _CACHE_VERSION, "directory": directory, "dir_mtimes": dir_mtimes}
    try:  # atomic, and a name per process: concurrent DDP ranks never read a half-written index
        with atomic_path(cache_file, unique=True) as tmp, \
                open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as f:
            f.write(json.dumps(header) + "\n")
            f.writelines(p + "\n" for p in files)
    except OSError as err:
        log.warning("could not write the image index cache %s (%s); the folder will be rescanned next time. "
                    "Point index_cache_dir at a writable folder to fix this.", cache_file, err)


def list_images(directory, extensions: Sequence[str] = IMAGE_EXTENSIONS, cache_dir=None,
                rebuild: bool = False) -> list:
    """Sorted paths (relative to `directory`, '/'-separated) of the files at any depth below `directory`
    whose suffix is in `extensions` (case-insensitive).

    The list is cached in `cache_dir` (default: `default_cache_dir()`; never inside the dataset root,
    which may be read-only) under a name keyed by the resolved directory and the extensions, with the
    mtime of every directory scanned. It is reused while those mtimes are unchanged (one stat per
    directory, e.g. 1,001 for ImageNet train) and rebuilt when they change or when `rebuild=True`.
    """
    directory = os.path.realpath(directory)
    extensions = tuple(sorted({e.lower() for e in extensions}))
    key = hashlib.sha1(json.dumps([directory, extensions]).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    cache_file = Path(cache_dir or default_cache_dir()) / f"{Path(directory).name}-{key}.txt"
    files = None if rebuild else _read_cache(cache_file, directory)
    if files is None:
        log.info("indexing images under %s", directory)
        files, dir_mtimes = _scan(directory, extensions)
        _write_cache(cache_file, directory, files, dir_mtimes)
        log.info("indexed %d images under %s (cached in %s)", len(files), directory, cache_file)
    return files
