"""`VQGAN`: tokenizer training for any encoder / quantizer / decoder with the VQGAN objective.

One training step per batch: encoder -> quantizer -> decoder -> generator loss (D frozen) and discriminator loss
(on the detached reconstruction), one backward of their sum, one optimizer step with two parameter groups
("generator": encoder + quantizer + decoder, "discriminator"). This equals the references' G step followed by their
D step: the D loss does not depend on the G update (same reconstruction, D weights untouched by the G step) and the
two losses' gradients touch disjoint parameters, so the result is the same, with one DDP gradient reduction, no
wasted D gradients in the G backward, no `find_unused_parameters`, and `global_step` = accepted batches. The
discriminator's BatchNorm sees the references' forwards in their order (fake in the G loss, then real, then fake in
the D loss). Under `16-mixed` one GradScaler scales the summed loss: an overflow skips the G and the D update
together (the references, with two optimizers, may skip only one of them).

Checkpoints hold `encoder.*`, `quantize.*`, `decoder.*`, `loss.discriminator.*`, `loss.lecam.*`, the EMA shadows
`model_ema.*` (Open-MAGVIT2's names) and, under the top-level key `tokenizer`, the encoder / quantizer / decoder
component configs, so `taming.load_tokenizer(ckpt)` needs no config.
"""
import inspect
from typing import Optional

import torch
from lightning.pytorch.utilities import rank_zero_warn

from ..metrics.image import psnr, to_uint8
from ..modules.codec import check_components
from ..modules.component import component_config, instantiate, register
from ..modules.losses import VQLPIPSWithDiscriminator
from ..modules.losses.vqperceptual import frames
from ..tokenizer import TokenizerMixin
from .protocol import StepResult, TrainingProtocol

COMPONENT_ARGS = ("encoder", "quantizer", "decoder", "loss")


@register
class VQGAN(TokenizerMixin, TrainingProtocol):
    """Tokenizer training module. Under FSDP the encoder and the decoder are sharded (`fsdp_roots`); the quantizer
    and the loss module (discriminator, LPIPS, teacher) stay whole on every rank.

    encoder / quantizer / decoder: components as class_path/init_args (or modules), e.g.
        taming.modules.vqgan.Encoder + taming.modules.quantizers.VectorQuantizer + taming.modules.vqgan.Decoder.
    loss: a `VQLPIPSWithDiscriminator` (or subclass) as class_path/init_args; default: its defaults.
    channels_last, torch_compile (encoder, decoder, discriminator compiled in place: checkpoint names unchanged).
    Every optimisation option of `TrainingProtocol` (learning_rate, optimizer, betas, lr_schedule, ...).
    """

    fsdp_roots = ("encoder", "decoder")
    # hparams a resumed run may not change (main.py refuses, listing the differences); the rest the config overrides
    architecture_hparams = ("encoder", "decoder", "quantizer.class_path", "quantizer.init_args.dim",
                            "quantizer.init_args.codebook_size", "quantizer.init_args.bit_order",
                            "quantizer.init_args.l2_norm", "loss.class_path", "loss.init_args.discriminator")

    def __init__(self, encoder, quantizer, decoder, loss=None, image_key: str = "image", channels_last: bool = False,
                 torch_compile: bool = False, **protocol):
        super().__init__(**protocol)
        self.encoder = instantiate(encoder)
        self.quantize = instantiate(quantizer)
        self.decoder = instantiate(decoder)
        try:
            self.loss = instantiate(loss) if loss is not None else VQLPIPSWithDiscriminator()
        except TypeError as err:
            raise TypeError(f"bad loss config: {err}; see VQLPIPSWithDiscriminator's arguments") from None
        check_components(self.encoder, self.quantize, self.decoder)
        if getattr(self.loss, "gen_loss_weight", 0.0) is None:
            self.decoder.last_layer()  # the adaptive GAN weight needs it: a decoder without one fails here, at start
        self.image_key, self.channels_last, self.torch_compile = image_key, channels_last, torch_compile
        self._save_own_hyperparameters()
        self.init_ema()

    def _save_own_hyperparameters(self) -> None:
        """hparams = exactly the concrete class's constructor arguments (LightningCLI feeds them back when resuming
        with --ckpt_path), with components as their configs so that checkpoints stay plain data."""
        self.save_hyperparameters(ignore=list(COMPONENT_ARGS))
        params = inspect.signature(type(self).__init__).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            for key in [k for k in self.hparams if k not in params and not k.startswith("_")]:
                del self.hparams[key]
        modules = dict(zip(COMPONENT_ARGS, (self.encoder, self.quantize, self.decoder, self.loss)))
        self.hparams.update({name: component_config(m) for name, m in modules.items() if name in params})

    def adaptive_weight_layer(self) -> Optional[torch.Tensor]:
        """The decoder's output-layer weight when the loss computes VQGAN's adaptive GAN weight, else None."""
        return self.decoder.last_layer() if self.loss.gen_loss_weight is None else None

    def tokenizer_config(self) -> dict:
        """{"encoder", "quantizer", "decoder"} component configs: what `taming.load_tokenizer` rebuilds (read
        through FSDP wrappers)."""
        parts = {"encoder": self.encoder, "quantizer": self.quantize, "decoder": self.decoder}
        return {name: component_config(getattr(m, "module", m)) for name, m in parts.items()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["tokenizer"] = self.tokenizer_config()

    def configure_model(self) -> None:
        super().configure_model()
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        if self.torch_compile:  # in place: parameter names (and checkpoints) are unchanged
            for module in (self.encoder, self.decoder, self.loss.discriminator):
                module.compile()

    def param_groups(self):
        return [{"name": "generator", "params": [p for m in (self.encoder, self.quantize, self.decoder)
                                                 for p in m.parameters()]},
                {"name": "discriminator", "params": list(self.loss.discriminator.parameters())}]

    def get_input(self, batch) -> torch.Tensor:
        if not isinstance(batch, dict) or self.image_key not in batch:
            raise KeyError(f"expected batches as dicts with key {self.image_key!r} (taming.data datasets), "
                           f"got {type(batch).__name__}{' with keys ' + str(list(batch)) if isinstance(batch, dict) else ''}")
        x = batch[self.image_key]
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _count_skipped(self, batch, device) -> None:
        # unreadable images dropped by collate_skip_none, summed over the epoch and the ranks (a per-step value
        # would only be written every log_every_n_steps); torch.full on the device: no host sync, NCCL-reducible
        self.log("train/skipped_images", torch.full((), float(batch.get("num_skipped", 0)), device=device),
                 on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True, batch_size=1)

    def training_loss(self, batch, batch_idx) -> Optional[StepResult]:
        x = self.get_input(batch)
        self._count_skipped(batch, x.device)
        if x.shape[0] == 0:
            if self.trainer.world_size > 1:
                raise RuntimeError("a whole batch of unreadable images on one rank; remove the corrupt files "
                                   "(their count is logged as train/skipped_images)")
            rank_zero_warn(f"batch {batch_idx}: every image was unreadable; batch skipped")
            return None
        out = self.autoencode(x, return_features=self.loss.needs_features)
        g_loss, logs = self.generator_loss(x, out)
        d_loss, d_logs, lecam_state = self.loss.discriminator_loss(x, out.reconstruction.detach(), self.global_step)
        logs.update(d_logs)
        logs.update(self.code_statistics(out.quantizer))
        on_accept = None if lecam_state is None else (lambda: self.loss.lecam.commit(*lecam_state))
        return StepResult(g_loss + d_loss, logs, x.shape[0], on_accept)

    def generator_loss(self, x: torch.Tensor, out, split: str = "train"):
        """The loss module's generator objective for this forward pass (subclasses add their own terms)."""
        return self.loss.generator_loss(x, out.reconstruction, out.quantizer, self.global_step,
                                        last_layer=self.adaptive_weight_layer(), split=split)

    def code_statistics(self, quant) -> dict:
        """Share of distinct codes among the batch's tokens (no host sync) and, for bit quantizers (LFQ), the
        fraction of +1 codes per latent channel (bit balance)."""
        flat = quant.indices.flatten().sort().values
        distinct = 1 + (flat[1:] != flat[:-1]).sum()
        stats = {"train/batch_distinct_codes": distinct.float() / flat.numel()}
        if self.quantize.bits:
            bit_means = (quant.quantized.detach() > 0).float().flatten(2).mean(dim=(0, 2))
            stats.update({f"train/bit_balance/{c:02d}": m for c, m in enumerate(bit_means)})
        return stats

    # ------------------------------------------------------------------------------------------- evaluation
    def validation_step(self, batch, batch_idx):
        return self._evaluate(batch, self.eval_split)

    def test_step(self, batch, batch_idx):
        return self._evaluate(batch, "test")

    def _evaluate(self, batch, split: str):
        """EMA weights, quantizer in eval mode (no entropy), reconstruction clamped to [-1, 1]; LeCam untouched."""
        x = self.get_input(batch)
        if x.shape[0] == 0:
            return None
        out = self.autoencode(x, return_features=self.loss.needs_features)
        out = out._replace(reconstruction=out.reconstruction.clamp(-1, 1))
        _, logs = self.generator_loss(x, out, split=split)
        _, d_logs, _ = self.loss.discriminator_loss(x, out.reconstruction, self.global_step, update_lecam=False,
                                                    split=split)
        logs.update(d_logs)
        logs[f"{split}/psnr"] = psnr(to_uint8(frames(x)), to_uint8(frames(out.reconstruction))).mean().float()
        self.log_dict(logs, batch_size=x.shape[0], sync_dist=True)
        return out.reconstruction
