"""This project's tokenizer checkpoints and YAMLs: the architecture is stored as component configs
({"encoder", "quantizer", "decoder"}: class_path / init_args, checked by the registry of taming.modules.component),
the weights under `encoder.*`, `quantize.*`, `decoder.*` (Lightning checkpoints: in `state_dict`)."""
from typing import Mapping, Optional

from ..modules.component import resolve_class
from ..modules.quantizers import LFQ
from . import COMPONENTS, TokenizerFamily, TokenizerParts, model_args, no_bit_order


def recognises(source, checkpoint: Mapping) -> bool:
    return isinstance(source, Mapping) and set(COMPONENTS) <= set(model_args(source))


def read(source: Mapping, checkpoint: Mapping, bit_order: Optional[str]) -> TokenizerParts:
    args = model_args(source)
    configs = {name: dict(args[name]) for name in COMPONENTS}
    if bit_order is not None:
        if not issubclass(resolve_class(configs["quantizer"]["class_path"]), LFQ):
            no_bit_order(bit_order, configs["quantizer"]["class_path"])
        configs["quantizer"]["init_args"] = {**configs["quantizer"].get("init_args", {}), "bit_order": bit_order}
    return TokenizerParts(configs, checkpoint.get("state_dict", checkpoint))


TOKENIZER = TokenizerFamily("this project", recognises, read)
