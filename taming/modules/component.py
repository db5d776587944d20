"""Components: nn.Modules that remember how they were built, so a checkpoint can rebuild them.

A tokenizer or generator is assembled from components chosen in the YAML (`class_path` / `init_args`, the
LightningCLI convention). `Component` records the keyword arguments of the most-derived constructor that ran,
so `component_config(module)` returns the same `{"class_path", "init_args"}` mapping whether the module came
from a YAML file or from Python, and `instantiate(config)` builds it again.

A file is data, never code. `instantiate` builds only the classes this package registers (every `Component`
defined under `taming.`, and the classes marked with `@register`); a class of the user's own is built only when
the user names it: `trusted_class_paths(["mypkg.MyEncoder"])` around the call (the tools' `--trust_class_path`,
the `trust_class_paths=` argument of the loaders, or main.py's own config files and command line).
"""
import contextlib
import functools
import importlib
import inspect
import threading
from typing import Any, Iterable, Mapping, Optional, Set, Union

from torch import nn


PACKAGE = "taming"
_REGISTERED: Set[type] = set()
_trust = threading.local()  # .paths: the class paths the user named; .source: the file being built from


def _in_package(module_name: str) -> bool:
    return module_name == PACKAGE or module_name.startswith(PACKAGE + ".")


def register(cls: type) -> type:
    """Class decorator: a class of this package that a file (checkpoint, manifest, released YAML) may name."""
    if not _in_package(cls.__module__):
        raise ValueError(f"register() is for classes of the {PACKAGE} package; trust a class of your own with "
                         f"trusted_class_paths([{class_path(cls)!r}]) instead")
    _REGISTERED.add(cls)
    return cls


@contextlib.contextmanager
def trusted_class_paths(paths: Iterable[str]):
    """Within the context, `instantiate` may also build the classes at these class paths (the user named them)."""
    previous = getattr(_trust, "paths", frozenset())
    _trust.paths = previous | frozenset(paths)
    try:
        yield
    finally:
        _trust.paths = previous


@contextlib.contextmanager
def reading(source: str):
    """Within the context, refused class paths are reported as read from `source` (a file's name)."""
    outer = getattr(_trust, "source", None)
    _trust.source = source
    try:
        yield
    finally:
        _trust.source = outer


class UntrustedClassError(ValueError):
    """A class path read from a file names something that is not a registered component of this package."""


def resolve_class(path: str, source: Optional[str] = None) -> type:
    """The class at `path` if this package registers it or the user trusts it; anything else is refused before
    anything outside this package is imported. `source` names the file the path was read from (for the error)."""
    if not isinstance(path, str):
        raise TypeError(f"class_path must be a string, got {type(path).__name__}")
    if path in getattr(_trust, "paths", ()):
        return import_class(path)
    if _in_package(path.rpartition(".")[0]):
        obj = import_class(path)  # imports only this package's own modules
        if isinstance(obj, type) and obj in _REGISTERED:
            return obj
    source = source or getattr(_trust, "source", None)
    where = f" read from {source}" if source else ""
    raise UntrustedClassError(
        f"refusing class_path {path!r}{where}: it is not a component registered by this package ({PACKAGE}.*), "
        "and a file may not choose code to run. If it is a class you wrote and trust, name it yourself: "
        f"--trust_class_path {path} (tools and main.py), trust_class_paths=[{path!r}] (load_tokenizer / "
        f"load_generator), or `with taming.trusted_class_paths([{path!r}]):` around the call")


class Component(nn.Module):
    """Base class of every configurable module: records its constructor arguments in `init_args`.

    Arguments must be plain values (numbers, strings, lists, dicts) or other components; they are stored in
    checkpoints as a mapping and read back with `torch.load(weights_only=True)`.

    `sizes`: named presets of constructor arguments (e.g. "GPT-B" -> dim, n_layer, n_head). A class with sizes
    takes a `size` argument and gives the preset's arguments the default None: `size` fills those left None,
    explicit values win (YAML `size: GPT-B`, Python `GPT(size="GPT-B", num_tokens=576)`). The recorded
    `init_args` hold the filled-in values and not the name, so checkpoints do not depend on the table.
    """

    sizes: Mapping[str, Mapping[str, Any]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if _in_package(cls.__module__):
            _REGISTERED.add(cls)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            if cls.sizes and "size" in signature.parameters:
                kw = _fill_size(cls, signature, kw)
            init(self, *args, **kw)
            # Runs after the base constructors returned, so the most-derived constructor's arguments win.
            bound = signature.bind(self, *args, **kw)
            bound.apply_defaults()
            recorded = {}
            for name, value in list(bound.arguments.items())[1:]:
                kind = signature.parameters[name].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    recorded.update(value)
                elif kind is not inspect.Parameter.VAR_POSITIONAL:
                    recorded[name] = value
            if cls.sizes:
                recorded.pop("size", None)  # its values are recorded themselves
            object.__setattr__(self, "init_args", recorded)

        cls.__init__ = recording_init


def _fill_size(cls: type, signature: inspect.Signature, kw: dict) -> dict:
    """kw with the arguments of its `size` preset (default: the signature's) filled in where None or absent."""
    size = kw.get("size", signature.parameters["size"].default)
    if size is None:
        return kw
    if size not in cls.sizes:
        raise ValueError(f"unknown size {size!r} for {class_path(cls)}; choose one of {sorted(cls.sizes)}")
    return {**kw, **{k: v for k, v in cls.sizes[size].items() if kw.get(k) is None}}


def class_path(obj_or_cls) -> str:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}.{cls.__qualname__}"


def _plain(value):
    """Components inside init_args become their configs; tuples become lists (YAML / JSON friendly)."""
    if isinstance(value, nn.Module):
        return component_config(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def component_config(module: nn.Module) -> dict:
    """{"class_path": ..., "init_args": {...}} that `instantiate` turns back into an equal module."""
    if not hasattr(module, "init_args"):
        raise TypeError(f"{class_path(module)} does not record its constructor arguments; derive it from "
                        "taming.modules.component.Component so that checkpoints can rebuild it")
    return {"class_path": class_path(module), "init_args": _plain(module.init_args)}


def import_class(path: str) -> type:
    module_name, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ImportError(f"cannot import class_path {path!r}: {err}") from None


def instantiate(config: Union[nn.Module, Mapping[str, Any]], source: Optional[str] = None) -> nn.Module:
    """A module given as such, or built from {"class_path": "pkg.mod.Class", "init_args": {...}} when the class
    is registered or trusted (see `resolve_class`; `source` names the file the mapping came from)."""
    if isinstance(config, nn.Module):
        return config
    if not isinstance(config, Mapping) or "class_path" not in config:
        raise TypeError(f"expected a module or a mapping with class_path/init_args, got {config!r}")
    unknown = set(config) - {"class_path", "init_args"}
    if unknown:
        raise ValueError(f"unexpected keys {sorted(unknown)} next to class_path {config['class_path']!r}; "
                         "constructor arguments go under init_args")
    cls = resolve_class(config["class_path"], source)
    with reading(source or getattr(_trust, "source", None)):  # nested components of the same file too
        try:
            return cls(**dict(config.get("init_args") or {}))
        except TypeError as err:
            raise TypeError(f"cannot build {config['class_path']}: {err}") from None
