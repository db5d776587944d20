"""Checkpoint families: one file each (this project's own, Open-MAGVIT2, LlamaGen, GigaTok), each declaring how it
recognises a checkpoint and its architecture description, how it builds the components and how its weights
translate to ours. `load_tokenizer` asks the families in `tokenizer_families()` order; adding a family means adding
its file and one line there.

A tokenizer family is a module-level `TOKENIZER = TokenizerFamily(name, recognises, read)`:
- `recognises(source, checkpoint) -> bool`, where `source` is the architecture description (a mapping read from a
  YAML, a dict, the checkpoint's stored configs, or a preset name);
- `read(source, checkpoint, bit_order) -> TokenizerParts`: component configs (or modules) for `Tokenizer`, the state
  dict in our names, and where the tokenizer's keys live in it.
"""
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


def tokenizer_families() -> list:
    """The families in the order they are asked (the first that recognises a source reads it)."""
    from . import gigatok, llamagen, open_magvit2, project

    return [llamagen.TOKENIZER, gigatok.TOKENIZER, project.TOKENIZER, open_magvit2.TOKENIZER]


def no_bit_order(bit_order: Optional[str], family: str) -> None:
    if bit_order is not None:
        raise ValueError(f"bit_order applies to LFQ tokenizers only, not to {family} tokenizers")


def model_args(source: Mapping) -> Mapping:
    """The model's init_args of a LightningCLI YAML (or the mapping itself)."""
    model = source.get("model")
    if isinstance(model, Mapping) and "class_path" in model:
        return model.get("init_args") or {}
    return source
