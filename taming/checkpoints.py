"""Reading checkpoints safely and loading state dicts strictly, with errors that list what does not match."""
import argparse
import contextlib
import hashlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Dict, Iterable, Iterator, Mapping, Union

import torch
from torch import nn

PathLike = Union[str, Path]


def read_checkpoint(path: PathLike, map_location="cpu", allow_unsafe_pickle: bool = False) -> dict:
    """torch.load(weights_only=True) of a checkpoint file, with clear errors.

    A missing, truncated or non-PyTorch file is named in the error. A file that needs a full unpickle is refused
    with an explanation of the opt-in. Training checkpoints of GigaTok and LlamaGen also pickle an
    `argparse.Namespace` under "args": that one class is allow-listed (it holds run options, never code), and
    the caller sees it as an ordinary attribute container.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}. Put the file there or pass the right path "
                                "(released weights go under models/ by default)")
    if not zipfile.is_zipfile(path):
        raise RuntimeError(f"could not read checkpoint {path}: not a PyTorch zip archive (truncated or corrupt download, "
                           "or a pre-1.6 legacy file: re-save it with torch.save)")
    try:
        if allow_unsafe_pickle:
            return torch.load(path, map_location=map_location, weights_only=False)
        with _namespace_allowed():
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise RuntimeError(
            f"{path} holds Python objects that the safe loader (torch.load(weights_only=True)) refuses: {err}\n"
            "Checkpoints are untrusted input: a full unpickle can run arbitrary code. If you trust this file, pass "
            "allow_unsafe_pickle=True (command line: --allow_unsafe_pickle)."
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise RuntimeError(f"could not read checkpoint {path}: {err}. Is it a complete PyTorch checkpoint file?") from None


def _namespace_allowed():
    """Allow argparse.Namespace in weights_only loads (a context manager from torch 2.5, a global list in 2.4)."""
    scoped = getattr(torch.serialization, "safe_globals", None)
    if scoped is not None:
        return scoped([argparse.Namespace])
    torch.serialization.add_safe_globals([argparse.Namespace])
    return contextlib.nullcontext()


def mismatch_report(missing: Iterable[str], unexpected: Iterable[str], mis_shaped: Iterable[str]) -> str:
    """Indented lines listing (at most 12 of) each kind of mismatch."""
    lines = []
    for title, keys in (("missing", list(missing)), ("unexpected", list(unexpected)), ("wrong shape", list(mis_shaped))):
        if keys:
            shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
            lines.append(f"  {title}: {shown}")
    return "\n".join(lines)


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str, hint: str = "",
                           optional_prefixes: Iterable[str] = ()) -> None:
    """module.load_state_dict(state_dict) with every missing, unexpected and wrong-shape key listed on failure.

    Keys of `module` under `optional_prefixes` may be absent (they keep their initial values).
    """
    expected = module.state_dict()
    optional = tuple(optional_prefixes)
    missing = [k for k in expected if k not in state_dict and not k.startswith(optional)]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
                  if k in state_dict and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or mis_shaped:
        raise RuntimeError(f"{what} does not match the architecture:\n{mismatch_report(missing, unexpected, mis_shaped)}"
                           + (f"\n{hint}" if hint else ""))
    module.load_state_dict(dict(state_dict), strict=not optional)


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """The entries under `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def rename_prefixes(state_dict: Mapping[str, torch.Tensor], mapping: Mapping[str, str]) -> Dict[str, torch.Tensor]:
    """Rename keys by their longest matching prefix in `mapping` (old prefix -> new prefix); others unchanged."""
    ordered = sorted(mapping, key=len, reverse=True)
    out = {}
    for key, value in state_dict.items():
        old = next((p for p in ordered if key.startswith(p)), None)
        out[mapping[old] + key[len(old):] if old is not None else key] = value
    return out


def file_sha256(path: PathLike) -> str:
    """Hex SHA-256 of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def read_hparams(path: PathLike) -> dict:
    """`hyper_parameters` of a Lightning checkpoint, read safely (weights_only) and memory-mapped, so its tensors
    are not loaded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise RuntimeError(f"could not read the hyper-parameters of checkpoint {path}: {err}") from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, Mapping) else None
    return dict(hparams) if isinstance(hparams, Mapping) else {}


@contextlib.contextmanager
def atomic_path(path: PathLike, unique: bool = False) -> Iterator[Path]:
    """A temporary name next to `path` to write to; renamed onto `path` when the block ends, deleted when it fails.
    Readers never see a partial file; a kill leaves only `.<name>.partial` (runs clean those up at start). `unique`
    adds the process id, for files that several processes may write at once (e.g. DDP ranks)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial" if unique else f".{path.name}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_atomic(obj, path: PathLike) -> Path:
    """torch.save through `atomic_path`: a crash never leaves a truncated file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
