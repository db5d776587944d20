"""This project's tokenizer checkpoints and YAMLs: the architecture is stored as component configs
({"encoder", "quantizer", "decoder"}: class_path / init_args, checked by the registry of taming.modules.component),
the weights under `encoder.*`, `quantize.*`, `decoder.*` (Lightning checkpoints: in `state_dict`). Generators
(taming.models.ar.ClassConditionalAR checkpoints and their weights-only copies): `hyper_parameters["generator"]`
= its component config, weights `generator.*`, EMA shadows `model_ema.<"generator." + name without dots>`."""
from typing import Mapping, Optional

from ..checkpoints import strip_prefix
from ..modules.component import instantiate, resolve_class
from ..modules.ema import EMA_PREFIX, with_shadows
from ..modules.quantizers import LFQ
from ..modules.transformer import ARGenerator
from . import COMPONENTS, GeneratorFamily, TokenizerFamily, TokenizerParts, model_args, no_bit_order



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


def _recognises_generator(ckpt: Mapping, state: Mapping) -> bool:
    hparams = ckpt.get("hyper_parameters")
    return (isinstance(hparams, Mapping) and "generator" in hparams) or any(k.startswith("generator.") for k in state)


def _read_generator(ckpt: Mapping, state: Mapping, config, ema: Optional[bool], path):
    """(model, weights, used_ema) for this project's Lightning checkpoints."""
    if config is None:
        spec = (ckpt.get("hyper_parameters") or {}).get("generator")
        if spec is None:
            raise ValueError(f"{path} holds generator.* weights but no hyper_parameters['generator']; pass config= "
                             "the generator's {'class_path': ..., 'init_args': {...}}")
        source = f"hyper_parameters['generator'] of {path}"
    elif isinstance(config, Mapping) and "class_path" in config:
        spec, source = config, None
    else:
        raise TypeError("this project's checkpoints carry their architecture: pass config=None, or a "
                        "{'class_path': ..., 'init_args': {...}} mapping to override it")
    if not isinstance(spec, Mapping) or "class_path" not in spec:
        raise ValueError(f"the generator config of {path} is not a {{'class_path', 'init_args'}} mapping: {spec!r}")
    cls = resolve_class(spec["class_path"], source)
    if not issubclass(cls, ARGenerator):
        raise ValueError(f"{spec['class_path']} is not a generator class (a subclass of ARGenerator)")
    model = instantiate(spec, source)
    has_ema = any(k.startswith(EMA_PREFIX + "generator") for k in state)
    if ema and not has_ema:
        raise ValueError(f"ema=True but {path} has no {EMA_PREFIX}generator* shadows; load the raw weights with "
                         "ema=False")
    use_ema = has_ema if ema is None else bool(ema)
    raw = strip_prefix(state, "generator.")
    return (model, with_shadows(model, raw, state, "generator."), True) if use_ema else (model, raw, False)


GENERATOR = GeneratorFamily("project", _recognises_generator, _read_generator, tokenizer="record")
