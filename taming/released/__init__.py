"""Checkpoint families: one file each (this project's own, Open-MAGVIT2 image and video, LlamaGen, GigaTok, IBQ), each declaring how it
recognises a checkpoint and its architecture description, how it builds the components and how its weights
translate to ours. `load_tokenizer` asks the families in `tokenizer_families()` order; adding a family means adding
its file and one line there.

A tokenizer family is a module-level `TOKENIZER = TokenizerFamily(name, recognises, read)`:
- `recognises(source, checkpoint) -> bool`, where `source` is the architecture description (a mapping read from a
  YAML, a dict, the checkpoint's stored configs, or a preset name);
- `read(source, checkpoint, bit_order) -> TokenizerParts`: component configs (or modules) for `Tokenizer`, the state
  dict in our names, and where the tokenizer's keys live in it.

A generator family is `GENERATOR = GeneratorFamily(name, recognises, read, tokenizer)`: `recognises(checkpoint,
state_dict)`, `read(checkpoint, state_dict, config, ema, path) -> (model, weights in our names, whether EMA weights
were used)`, and where its checkpoints keep their tokenizer.
Released config fields translate to our constructor arguments by a table per family (`init_args`).
"""
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Optional

COMPONENTS = ("encoder", "quantizer", "decoder")


class TokenizerParts(NamedTuple):
    components: dict  # {"encoder", "quantizer", "decoder"}: component configs or modules
    state_dict: Mapping  # in our names
    prefix: str = ""  # of the tokenizer's keys in state_dict (Open-MAGVIT2 AR checkpoints: "first_stage_model.")
    notes: str = ""  # what was skipped
    optional: tuple = ()  # key prefixes that may be absent


class TokenizerFamily(NamedTuple):
    name: str
    recognises: Callable[[object, Mapping], bool]
    read: Callable[[object, Mapping, Optional[str]], TokenizerParts]


class GeneratorFamily(NamedTuple):
    name: str
    recognises: Callable[[Mapping, Mapping], bool]
    read: Callable[..., tuple]
    # where the tokenizer of its checkpoints is: "record" (hyper_parameters["tokenizer_source"]), "inside" (the
    # checkpoint holds it under first_stage_model.; the generator's config describes it) or "none"
    tokenizer: str = "none"


def generator_families() -> list:
    """The families in the order they are asked; LlamaGen's (bare or {"model": ...} state dicts) comes last."""
    from . import ibq, llamagen, open_magvit2, project

    return [project.GENERATOR, ibq.GENERATOR, open_magvit2.GENERATOR, llamagen.GENERATOR]


def generator_family(name: str) -> GeneratorFamily:
    """The generator family called `name` (a loaded generator's checkpoint_info["format"])."""
    return next(f for f in generator_families() if f.name == name)


def tokenizer_families() -> list:
    """The families in the order they are asked (the first that recognises a source reads it)."""
    from . import gigatok, ibq, llamagen, open_magvit2, open_magvit2_video, project

    return [llamagen.TOKENIZER, gigatok.TOKENIZER, project.TOKENIZER, ibq.TOKENIZER, open_magvit2_video.TOKENIZER,
            open_magvit2.TOKENIZER]


def no_bit_order(bit_order: Optional[str], family: str) -> None:
    if bit_order is not None:
        raise ValueError(f"bit_order applies to LFQ tokenizers only, not to {family} tokenizers")


def model_args(source: Mapping) -> Mapping:
    """The model's init_args of a LightningCLI YAML (or the mapping itself)."""
    model = source.get("model")
    if isinstance(model, Mapping) and "class_path" in model:
        return model.get("init_args") or {}
    return source


def need_config(config, path, family: str, example: str):
    """`config`, or an error saying that a released `family` checkpoint stores no architecture and what to pass."""
    if config is None:
        raise ValueError(f"{path} is a released {family} checkpoint, which stores no architecture; pass config= "
                         f"{example}")
    return config


def transformer_params(config, target: str, family: str) -> Mapping:
    """The transformer params of a released Net2NetTransformer AR config: a YAML path, the parsed YAML
    ({"model": {"class_path" / "target", "init_args" / "params": {"transformer_config": ...}}}), the model's
    arguments, the transformer config {"target", "params"} or the params themselves. A transformer target must end
    with `target` (the family's GPT class)."""
    from ..config_files import read_yaml

    if isinstance(config, (str, Path)):
        config = read_yaml(config)
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a YAML path or a dict, got {type(config).__name__}")
    if isinstance(config.get("model"), Mapping):
        model = config["model"]
        config = model.get("init_args") or model.get("params") or {}
    if "transformer_config" in config:
        config = config["transformer_config"] or {}
    if "target" in config or "class_path" in config:
        found = str(config.get("target") or config.get("class_path"))
        if not found.endswith(target):
            raise ValueError(f"transformer target {found!r} is not the {family} GPT (*.{target}); load other AR models "
                             "with their own family's config")
        config = config.get("params") or config.get("init_args") or {}
    return config


def init_args(fields: Mapping, family: dict) -> dict:
    """Constructor arguments from released config fields (translated names, checked values, family defaults)."""
    if not isinstance(fields, Mapping):
        raise TypeError(f"expected a dict of config fields, got {type(fields).__name__}")
    fields = dict(fields)
    known = set(family["names"]) | set(family["fixed"]) | set(family["ignored"]) | {"size", "n_kv_head",
                                                                                    "ffn_dim_multiplier"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; accepted: {sorted(known)}")
    missing = [k for k in family["required"] if k not in fields]
    if missing:
        raise ValueError(f"config is missing {missing} (the number of image tokens, e.g. 256 for a 16 x 16 grid)")
    for key, value in family["fixed"].items():
        if key in fields and fields[key] != value:
            raise ValueError(f"config {key}={fields[key]!r} is not supported (only {value!r})")
    args = dict(family["defaults"])
    size = fields.get("size")
    if size is not None:
        if size not in family["sizes"]:
            raise ValueError(f"unknown size {size!r} for this checkpoint; choose one of {sorted(family['sizes'])}")
        args.update(family["sizes"][size])
    args.update({family["names"][k]: v for k, v in fields.items() if k in family["names"]})
    n_kv_head = fields.get("n_kv_head")
    if n_kv_head is not None and n_kv_head != args.get("n_head"):
        raise ValueError(f"grouped-query attention (n_kv_head={n_kv_head} != n_head) is not supported")
    if fields.get("ffn_dim_multiplier") is not None:  # the references' rule: multiplier * int(8/3 dim), rounded up
        hidden = int(fields["ffn_dim_multiplier"] * int(2 * (4 * args["dim"]) / 3))
        multiple_of = args.get("multiple_of", 256)
        args["ffn_hidden"] = -(-hidden // multiple_of) * multiple_of
    return args
