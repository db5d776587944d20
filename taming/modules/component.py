"""Components: nn.Modules that remember how they were built, so a checkpoint can rebuild them.

A tokenizer or generator is assembled from components chosen in the YAML (`class_path` / `init_args`, the
LightningCLI convention). `Component` records the keyword arguments of the most-derived constructor that ran,
so `component_config(module)` returns the same `{"class_path", "init_args"}` mapping whether the module came
from a YAML file or from Python, and `instantiate(config)` builds it again.
"""
import functools
import importlib
import inspect
from typing import Any, Mapping, Union

from torch import nn


class Component(nn.Module):
    """Base class of every configurable module: records its constructor arguments in `init_args`.

    Arguments must be plain values (numbers, strings, lists, dicts) or other components; they are stored in
    checkpoints as a mapping and read back with `torch.load(weights_only=True)`.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
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
            object.__setattr__(self, "init_args", recorded)

        cls.__init__ = recording_init


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


def instantiate(config: Union[nn.Module, Mapping[str, Any]]) -> nn.Module:
    """A module given as such, or built from {"class_path": "pkg.mod.Class", "init_args": {...}}."""
    if isinstance(config, nn.Module):
        return config
    if not isinstance(config, Mapping) or "class_path" not in config:
        raise TypeError(f"expected a module or a mapping with class_path/init_args, got {config!r}")
    unknown = set(config) - {"class_path", "init_args"}
    if unknown:
        raise ValueError(f"unexpected keys {sorted(unknown)} next to class_path {config['class_path']!r}; "
                         "constructor arguments go under init_args")
    cls = import_class(config["class_path"])
    try:
        return cls(**dict(config.get("init_args") or {}))
    except TypeError as err:
        raise TypeError(f"cannot build {config['class_path']}: {err}") from None
