"""Reading config files: one YAML reader for the loaders, and shipped configs found by name from any folder.

A relative config path is taken from the current directory; when no file is there, a path naming one of the configs
shipped with this repository (`configs/imagenet_lfqgan_256_B.yaml`, `imagenet_lfqgan_256_B.yaml`,
`ar/demo_ar.yaml`) resolves to that file, so examples and scripts work from any folder.
"""
from pathlib import Path
from typing import Union

SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # (present in a source checkout / editable install)


def resolve_config_path(path: Union[str, Path]) -> Path:
    """`path` if it is a file; else the shipped config it names; else FileNotFoundError saying where it looked."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_absolute():
        parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
        shipped = SHIPPED_CONFIGS.joinpath(*parts) if parts else None
        if shipped is not None and shipped.is_file():
            return shipped
    raise FileNotFoundError(f"config file not found: {path} (relative paths are taken from the current directory "
                            f"{Path.cwd()}, then from the shipped configs in {SHIPPED_CONFIGS})")


def read_yaml(path: Union[str, Path]) -> dict:
    """The mapping in a YAML file (safe loader: plain data only), with errors naming the file."""
    import yaml

    path = resolve_config_path(path)
    with open(path) as f:
        try:
            loaded = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ValueError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"config file {path} does not hold a mapping")
    return loaded
