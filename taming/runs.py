"""Start-of-run checks for training runs (main.py): which class paths the user named, what a resumed checkpoint may
not change, and output folders that can be written before any step is spent."""
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Sequence, Set, Tuple

from .config_files import read_yaml

_MISSING = object()
DOTTED_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


class CheckError(Exception):
    """A problem found before training starts; main.py prints its message in one line, without a traceback."""


# --------------------------------------------------------------------------------------------- trusted classes


def _class_paths(value: Any, found: Set[str]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key == "class_path" and isinstance(item, str):
                found.add(item)
            else:
                _class_paths(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _class_paths(item, found)


def _yaml_value(text: str):
    """A command-line value parsed as YAML / JSON, or None when it is not."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def user_class_paths(argv: Sequence[str]) -> Set[str]:
    """Every class path named in the command line: in --config files (and other YAML files given as values), in
    `--...class_path X` options and in JSON / YAML values. These, and only these, are the user's own choices."""
    found: Set[str] = set()
    args = list(argv)
    for i, arg in enumerate(args):
        key, eq, value = arg.partition("=")
        if not eq:
            key, value = (args[i - 1] if i else ""), arg
        if not isinstance(value, str) or (value.startswith("--") and not eq):
            continue
        if key.startswith("--") and DOTTED_NAME.match(value) and not value.endswith((".yaml", ".yml", ".json")):
            found.add(value)  # e.g. --model.init_args.encoder.class_path pkg.Enc or the shorthand --model pkg.Model
        if value.endswith((".yaml", ".yml", ".json")) and Path(value).is_file():
            try:
                _class_paths(read_yaml(value), found)
            except ValueError:
                pass  # not a mapping or not YAML: LightningCLI reports it
        elif value.lstrip().startswith(("{", "[")):
            _class_paths(_yaml_value(value), found)
    return found


# --------------------------------------------------------------------------------------------- resuming


def _get(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


def _flatten(tree: Any, prefix: str = "") -> dict:
    if isinstance(tree, Mapping) and tree:
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def architecture_differences(model, stored: Mapping) -> Tuple[List[str], List[str]]:
    """(architecture differences, other differences) between the model built from the config and a checkpoint's
    hyper-parameters, as "key: checkpoint value -> config value" lines. What is architecture is declared by the
    model class (`architecture_hparams`, dotted keys); `derived_hparams` (filled in by the run) are not compared. An
    architecture key the checkpoint does not have (an option added to the code since the run started) is a note."""
    ours = dict(getattr(model, "hparams", {}) or {})
    derived = tuple(getattr(model, "derived_hparams", ()))
    fixed, changed = [], []
    for key in getattr(model, "architecture_hparams", ()):
        old, new = _get(stored, key), _get(ours, key)
        if old is _MISSING:
            continue
        old, new = _flatten(old), _flatten(new)
        for sub in sorted(set(old) | set(new)):
            a, b = old.get(sub, _MISSING), new.get(sub, _MISSING)
            if a != b:
                line = f"{key + ('.' + sub if sub else '')}: {_show(a)} -> {_show(b)}"
                if a is _MISSING:  # an option added to the code since the run started: noted, not refused
                    changed.append(line)
                else:
                    fixed.append(f"  {line}")
    flat_old, flat_new = _flatten(stored), _flatten(ours)
    skipped = tuple(getattr(model, "architecture_hparams", ())) + derived
    for key in sorted(set(flat_old) | set(flat_new)):
        if key.startswith("_") or any(key == a or key.startswith(a + ".") for a in skipped):
            continue
        a, b = flat_old.get(key, _MISSING), flat_new.get(key, _MISSING)
        if a != b:
            changed.append(f"{key}: {_show(a)} -> {_show(b)}")
    return fixed, changed


def _show(value) -> str:
    return "(unset)" if value is _MISSING else repr(value)


# --------------------------------------------------------------------------------------------- output folders


def check_writable(folder, what: str) -> Path:
    """Create `folder` if needed and prove that a file can be written in it; CheckError naming it otherwise."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test_"):
            pass
    except OSError as err:
        raise CheckError(f"{what} {folder} is not writable ({err.strerror or err}); choose another folder or fix "
                         "its permissions") from None
    return folder


def output_dirs(trainer) -> Iterable[Tuple[str, Path]]:
    """(description, folder) of everything a fit writes: checkpoint callbacks, exports and loggers."""
    for callback in trainer.callbacks:
        dirpath = str(getattr(callback, "dirpath_template", None) or getattr(callback, "dirpath", None) or "")
        if "{" in dirpath:  # named after the logger's version: the folder that holds it exists before the run
            dirpath = str(Path(dirpath.split("{")[0] + "x").parent)
        if dirpath:
            yield f"checkpoint folder of {type(callback).__name__}", Path(dirpath)
        path = getattr(callback, "path", None)
        if isinstance(path, Path):
            yield f"output folder of {type(callback).__name__}", path.parent
    for logger in trainer.loggers:
        root = getattr(logger, "root_dir", None) or getattr(logger, "save_dir", None)
        if root:
            yield f"log folder of {type(logger).__name__}", Path(root)
    yield "trainer.default_root_dir", Path(trainer.default_root_dir)


def check_output_dirs(trainer) -> None:
    """Every output folder of a fit is writable (checked before the first step, not at the first save)."""
    for what, folder in output_dirs(trainer):
        check_writable(folder, what)


def remove_partials(folder: Path) -> List[Path]:
    """Delete the `.<name>.partial` files (or folders) that a save killed mid-write left behind."""
    import shutil

    removed = []
    for path in Path(folder).glob(".*.partial"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        removed.append(path)
    return removed
