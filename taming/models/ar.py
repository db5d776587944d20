"""`ClassConditionalAR`: Stage II, a class-conditional autoregressive generator trained on a frozen tokenizer's indices.

Data, one of:
- token folders (`taming.data.tokens.TokenDataset`: batches {"tokens": B x *token_shape int64, "class_label": B}),
  written by scripts/encode_tokens.py (LlamaGen's way; ten-crop folders give one random view per sample);
- images tokenized on the fly (`tokenizer`; Open-MAGVIT2's and GigaTok's way): batches of taming.data image datasets,
  encoded every step in float32 under no_grad by a frozen tokenizer in eval mode. The tokenizer is not a submodule: it
  stays out of checkpoints, the optimizer, DDP / FSDP and the EMA.
At setup the token folders of the datamodule are checked against the generator (codebook size, tokens per image,
the 2-D RoPE grid, LSB-first indices for factorized models), and `hparams["tokenizer_source"]` records the tokenizer
that made the tokens (the manifest's entry, or the online tokenizer's checkpoint, SHA-256 and config), so sampling
decodes without being told (`load_recorded_tokenizer`).

Optimisation (`TrainingProtocol`): AdamW with weight decay on parameters of >= 2 dimensions only (matrices and
embeddings; norm weights get none); the gradient norm is clipped over all parameters together, as LlamaGen and
Open-MAGVIT2 do. The random draws of a step (dropouts, class dropout) come from (seed, global_step, rank): a resumed
run repeats the uninterrupted run's masks whatever else consumed random numbers in between.

Checkpoints hold `generator.*`, the EMA shadows `model_ema.generator*` and `hparams["generator"]` (the generator's
component config), so `taming.generator.load_generator(ckpt)` needs no config; `export_weights` (or the
`GeneratorExport` callback; `taming.generator.export_weights`) writes a copy without optimizer state that it loads too.
"""
import contextlib
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn

from ..data.tokens import TokenDataset
from ..modules.component import component_config, instantiate, register
from ..modules.transformer import ARGenerator
from ..provenance import check_tokens_match, check_value_ranges, folder_record, tokenizer_record
from ..tokenizer import load_tokenizer
from .protocol import StepResult, TrainingProtocol

TOKENIZER_KEYS = ("ckpt_path", "config", "ema", "bit_order")  # the online tokenizer: load_tokenizer's arguments


# --------------------------------------------------------------------------------------- the training module


@register
class ClassConditionalAR(TrainingProtocol):
    """Class-conditional AR training module.

    generator: a `taming.modules.transformer` generator (GPT, FactorizedGPT) as class_path/init_args, or a module.
    tokenizer: None (token folders), or online tokenization with `load_tokenizer`'s arguments {ckpt_path, config
        (YAML path, preset name or dict; not needed for this project's checkpoints), ema, bit_order}.
    tokenizer_source: the record of the tokenizer that made the tokens; filled in at setup (see the module
        docstring) and given back by `load_from_checkpoint`. Set by hand only to name the tokenizer of a token
        folder whose manifest has none.
    seed: seeds the random draws of each step together with the step and the rank.
    torch_compile: compile the generator in place (parameter names, and so checkpoints, unchanged).
    Every optimisation option of `TrainingProtocol`; the defaults are LlamaGen's (AdamW (0.9, 0.95), weight decay
    0.05, constant LR 1e-4, gradient clipping 1.0, no EMA).
    """

    fsdp_roots = ("generator",)  # FSDP shards the generator (one unit per block of the strategy's auto_wrap_policy)
    clip_jointly = True  # one gradient norm over all parameters, as LlamaGen and Open-MAGVIT2
    architecture_hparams = ("generator",)  # what a resumed run may not change (main.py); the rest the config overrides
    derived_hparams = ("tokenizer_source",)  # filled in at setup from the data

    def __init__(self, generator: ARGenerator, tokenizer: Optional[dict] = None,
                 tokenizer_source: Optional[dict] = None, seed: int = 0, torch_compile: bool = False,
                 learning_rate: float = 1e-4, optimizer: str = "adamw", betas: Sequence[float] = (0.9, 0.95),
                 weight_decay: float = 0.05, gradient_clip_val: Optional[float] = 1.0, use_ema: bool = False,
                 **protocol):
        super().__init__(learning_rate=learning_rate, optimizer=optimizer, betas=betas, weight_decay=weight_decay,
                         gradient_clip_val=gradient_clip_val, use_ema=use_ema, **protocol)
        self.generator = instantiate(generator)
        if not isinstance(self.generator, ARGenerator):
            raise TypeError(f"generator must be an AR generator (taming.modules.transformer GPT or FactorizedGPT), got "
                            f"{type(self.generator).__name__}")
        self.seed, self.torch_compile = seed, torch_compile
        # which parameters decay, decided on the unwrapped shapes (FSDP later flattens the parameters it shards)
        self._decayed = {id(p) for p in self.generator.parameters() if p.dim() >= 2}
        self.save_hyperparameters(ignore=["generator"])
        self.hparams["generator"] = component_config(self.generator)
        # nn.Module would register the frozen tokenizer as a submodule (state dict, optimizer, DDP, EMA): bypass it
        object.__setattr__(self, "tokenizer", None)
        if tokenizer is not None:
            self._set_online_tokenizer(tokenizer)
        self.init_ema()

    def _set_online_tokenizer(self, args) -> None:
        if not isinstance(args, Mapping) or "ckpt_path" not in args or set(args) - set(TOKENIZER_KEYS):
            raise ValueError(f"tokenizer must be a mapping with ckpt_path and optionally config, ema, bit_order "
                             f"(load_tokenizer's arguments), got {args!r}")
        tokenizer = load_tokenizer(**args)
        quantizer = tokenizer.quantize
        check_tokens_match(self.generator, quantizer.codebook_size, getattr(quantizer, "bit_order", None),
                           f"tokenizer {args['ckpt_path']}")
        object.__setattr__(self, "tokenizer", tokenizer)
        self._record_source(tokenizer_record(tokenizer, args["ckpt_path"], args.get("config")))

    def _record_source(self, record: dict) -> None:
        """Keep the first record (the training data's); later ones must name the same checkpoint (SHA-256)."""
        known = self.hparams.get("tokenizer_source")
        if not known:
            self.hparams["tokenizer_source"] = record
        elif known.get("checkpoint_sha256") != record["checkpoint_sha256"]:
            raise ValueError(f"the tokens come from tokenizer {record['checkpoint']} but tokenizer_source names "
                             f"{known.get('checkpoint')} (another SHA-256); use data of one tokenizer")

    # ----------------------------------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        super().setup(stage)
        datasets = getattr(self.trainer.datamodule, "datasets", None) or {}
        for split, dataset in datasets.items():
            if isinstance(dataset, TokenDataset):
                folder = dataset.folder
                where = f"{split} token folder {folder.folder}"
                check_tokens_match(self.generator, folder.codebook_size, folder.bit_order, where, folder.token_shape)
                check_value_ranges(self.generator, folder.value_ranges(), where)
                if "tokenizer" in folder.manifest:
                    self._record_source(folder_record(folder))

    def configure_model(self) -> None:
        super().configure_model()
        if self.torch_compile:
            self.generator.compile()

    def param_groups(self):
        params = [p for p in self.generator.parameters() if p.requires_grad]
        return [{"name": "decay", "params": [p for p in params if id(p) in self._decayed]},
                {"name": "no_decay", "params": [p for p in params if id(p) not in self._decayed], "weight_decay": 0.0}]

    # ----------------------------------------------------------------------------------------- steps
    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """Images B x 3 x H x W in [-1, 1] -> indices with the online tokenizer (float32, autocast off)."""
        if next(self.tokenizer.parameters()).device != images.device:
            self.tokenizer.to(images.device)
        with torch.autocast(images.device.type, enabled=False):
            return self.tokenizer.encode(images.float())[1]

    def get_input(self, batch) -> Optional[tuple]:
        """(tokens B x *token_shape, labels (B,)) of a batch of token-folder items or of images (tokenized here);
        None for a batch without a readable image."""
        if not isinstance(batch, Mapping) or "class_label" not in batch or not {"tokens", "image"} & set(batch):
            keys = list(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise KeyError(f"expected batches {{'tokens' or 'image', 'class_label'}} (taming.data.tokens.TokenDataset "
                           f"or taming.data image datasets), got {keys}")
        labels = batch["class_label"]
        if labels.numel() == 0:
            if self.trainer.world_size > 1:
                raise RuntimeError("a whole batch of unreadable images on one rank; remove the corrupt files")
            rank_zero_warn("a batch without any readable image was skipped")
            return None
        low, high = torch.aminmax(labels)
        if low < 0 or high >= self.generator.num_classes:
            raise ValueError(f"class labels must be in [0, {self.generator.num_classes}), got values in "
                             f"[{int(low)}, {int(high)}]; -1 marks an unlabelled image (use an ImageNet-style folder "
                             "or an ImageList with labels), and the generator's num_classes must cover the data")
        if "tokens" in batch:
            return batch["tokens"], labels
        if self.tokenizer is None:
            raise ValueError("batches of images need online tokenization: set model.init_args.tokenizer "
                             "{ckpt_path, config}, or train on a token folder (scripts/encode_tokens.py)")
        return self.tokenize(batch["image"]), labels

    @contextlib.contextmanager
    def step_rng(self, device: torch.device):
        """Draw this step's random numbers (dropouts, class dropout) from (seed, global_step, rank); the global RNG
        state is restored afterwards."""
        seed = int(np.random.SeedSequence([self.seed, self.global_step, self.global_rank]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            yield

    def training_loss(self, batch, batch_idx: int) -> Optional[StepResult]:
        inputs = self.get_input(batch)
        if inputs is None:
            return None
        tokens, labels = inputs
        with self.step_rng(tokens.device):  # the forward of the (possibly FSDP-wrapped) generator itself
            loss, terms = self.generator.loss_from_logits(self.generator(tokens, labels), tokens)
        return StepResult(loss, {f"train/{k}": v for k, v in terms.items()}, labels.shape[0])

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, self.eval_split)

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def _evaluate(self, batch, split: str) -> None:
        """Teacher-forced loss and accuracy in eval mode (no dropout, true labels), averaged over the images."""
        inputs = self.get_input(batch)
        if inputs is not None:
            _, terms = self.generator.loss_from_logits(self.generator(*inputs), inputs[0])
            self.log_dict({f"{split}/{k}": v for k, v in terms.items()}, batch_size=inputs[1].shape[0], sync_dist=True)
