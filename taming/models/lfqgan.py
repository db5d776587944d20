"""`VQModel`: the Open-MAGVIT2 LFQ-GAN tokenizer as a LightningModule (training, validation, checkpoints).

One training step per batch: encoder -> LFQ -> decoder -> generator loss (D frozen) and discriminator loss
(on the detached reconstruction), one backward of their sum, one Adam step with two parameter groups
("generator": encoder + decoder, "discriminator"). This is the reference's G step followed by its D step:
the D loss does not depend on the G update (same reconstruction, D weights untouched by the G step) and the
gradients of the two losses touch disjoint parameters, so the result is the same, with one DDP gradient
reduction, no wasted D gradients in the G backward, no `find_unused_parameters`, and `global_step` = batches
(more exactly: batches with an optimizer step; a batch skipped for a non-finite loss or for having no readable
image does not advance it). The discriminator's BatchNorm sees the same forwards in the same order as the
reference (fake in the G loss, then real, then fake in the D loss; train-mode batch statistics, running
statistics updated by each). Under `16-mixed` one GradScaler scales the summed loss: a gradient overflow skips
the G and the D update together (the reference, with two optimizers, may skip only one of them).

Validation/test run with the EMA weights (swapped in for the whole loop, not per batch). Checkpoints hold
`encoder.*`, `decoder.*`, `loss.discriminator.*`, `loss.lecam.*` and the EMA shadows `model_ema.*`
(reference names), and `hyper_parameters` with `ddconfig`, `embed_dim`, `n_embed`, `bit_order`, so
`taming.load_tokenizer(ckpt)` needs no config.
"""
import math
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from ..metrics.image import psnr, to_uint8
from ..modules.ema import LitEma
from ..modules.losses import LossConfig, VQLPIPSWithDiscriminator
from ..modules.quantizers import LFQ
from ..tokenizer import DDConfig, Tokenizer, TokenizerMixin

SCHEDULERS = ("constant", "linear-warmup", "linear-warmup_cosine-decay")


class VQModel(TokenizerMixin, L.LightningModule):
    """Open-MAGVIT2 LFQ-GAN tokenizer training module.

    ddconfig: encoder/decoder architecture (`ch`, `ch_mult`, `num_res_blocks`, `z_channels`, `adaptive_gn`...).
    lossconfig: keyword arguments of `taming.modules.losses.VQLPIPSWithDiscriminator`.
    embed_dim / n_embed: LFQ bits per token and codebook size (= 2**embed_dim). bit_order: "msb" (v1) / "lsb" (v2).
    scheduler_type: "constant", "linear-warmup", "linear-warmup_cosine-decay" (`warmup_epochs`,
        `min_learning_rate`); `lr_drop_epoch`/`lr_drop_rate`: LR x rate from each listed epoch on (v2 recipe).
    gradient_clip_val: max grad norm, applied to the generator and discriminator separately (None = off).
    max_nonfinite_steps: a non-finite loss skips the batch; this many in a row save a checkpoint and stop.
    Speed: channels_last, torch_compile (encoder, decoder, discriminator), tf32, fused_adam.
    """

    def __init__(self, ddconfig: DDConfig, lossconfig: Optional[LossConfig] = None, embed_dim: int = 18, n_embed: int = 262144,
                 bit_order: str = "msb", sample_minimization_weight: float = 1.0,
                 batch_maximization_weight: float = 1.0, entropy_temperature: float = 0.01,
                 codebook_entropy_mode: str = "exact", entropy_sync: bool = False,
                 learning_rate: float = 1e-4, betas: Sequence[float] = (0.5, 0.9),
                 scheduler_type: str = "constant", warmup_epochs: float = 1.0, min_learning_rate: float = 0.0,
                 lr_drop_epoch: Optional[Sequence[int]] = None, lr_drop_rate: float = 0.1,
                 gradient_clip_val: Optional[float] = None, use_ema: bool = True, ema_decay: float = 0.999,
                 max_nonfinite_steps: int = 20, image_key: str = "image", channels_last: bool = False,
                 torch_compile: bool = False, tf32: bool = False, fused_adam: bool = False):
        super().__init__()
        if scheduler_type not in SCHEDULERS:
            raise ValueError(f"scheduler_type must be one of {SCHEDULERS}, got {scheduler_type!r}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        arch = Tokenizer(ddconfig, embed_dim=embed_dim, bit_order=bit_order)  # validates ddconfig / embed_dim
        self.encoder, self.decoder = arch.encoder, arch.decoder
        self.quantize = LFQ(dim=embed_dim, codebook_size=n_embed, bit_order=bit_order,
                            sample_minimization_weight=sample_minimization_weight,
                            batch_maximization_weight=batch_maximization_weight,
                            entropy_temperature=entropy_temperature, entropy_sync=entropy_sync,
                            codebook_entropy_mode=codebook_entropy_mode)
        try:
            self.loss = VQLPIPSWithDiscriminator(**(lossconfig or {}))
        except TypeError as err:
            raise TypeError(f"bad model.init_args.lossconfig: {err}; see VQLPIPSWithDiscriminator's arguments") from None
        self.model_ema = LitEma(self, decay=ema_decay) if use_ema else None
        if use_ema:  # identical on every rank (same updates of the same weights): keep DDP from re-broadcasting it
            self._ddp_params_and_buffers_to_ignore = [f"model_ema.{name}" for name in self.model_ema._buffers]
        self.nonfinite_streak = 0
        self._ema_swapped = False

    # ------------------------------------------------------------------------------------------- setup
    def configure_model(self) -> None:
        hp = self.hparams
        if hp.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if hp.channels_last:
            self.to(memory_format=torch.channels_last)
        if hp.torch_compile:  # in place: parameter names (and checkpoints) are unchanged
            for module in (self.encoder, self.decoder, self.loss.discriminator):
                module.compile()

    def configure_optimizers(self):
        hp = self.hparams
        groups = [
            {"name": "generator", "params": [p for m in (self.encoder, self.decoder, self.quantize)
                                             for p in m.parameters() if p.requires_grad]},
            {"name": "discriminator", "params": list(self.loss.discriminator.parameters())},
        ]
        if hp.fused_adam and hp.gradient_clip_val and self.trainer.precision == "16-mixed":
            raise ValueError("gradient_clip_val with fused_adam under precision 16-mixed would clip loss-scaled "
                             "gradients (the fused Adam unscales inside its step, after clipping): set fused_adam "
                             "false, gradient_clip_val null, or use precision bf16-mixed / 32")
        kwargs = {"fused": True} if hp.fused_adam else {}
        return torch.optim.Adam(groups, lr=hp.learning_rate, betas=tuple(hp.betas), weight_decay=0.0, **kwargs)

    def on_train_start(self) -> None:
        # Fresh run: take the weights DDP just broadcast from rank 0 (ranks may have been seeded differently).
        if self.model_ema is not None and int(self.model_ema.num_updates) == 0:
            self.model_ema.reset(self)

    # ------------------------------------------------------------------------------------------- training
    def get_input(self, batch) -> torch.Tensor:
        if not isinstance(batch, dict) or self.hparams.image_key not in batch:
            raise KeyError(f"expected batches as dicts with key {self.hparams.image_key!r} (taming.data datasets), "
                           f"got {type(batch).__name__}{' with keys ' + str(list(batch)) if isinstance(batch, dict) else ''}")
        x = batch[self.hparams.image_key]
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    def lr_factor(self) -> float:
        """LR multiplier at the current step s (global_step) and epoch: warm-up (s + 1) / W for s < W, with
        W = warmup_epochs x batches per epoch; then 1 ("linear-warmup"), or for "linear-warmup_cosine-decay"
        f + (1 - f) (1 + cos(pi p)) / 2 with p = (s - W) / (total - W) and f = min_learning_rate / learning_rate
        (the reference uses max(f, (1 + cos(pi p)) / 2) and s / W, i.e. LR 0 on the first step); times
        lr_drop_rate ** (number of lr_drop_epoch entries <= current epoch), i.e. the drop listed as e applies
        from epoch e on, as the reference's "at the end of epoch e - 1"."""
        hp, step = self.hparams, self.global_step
        factor = 1.0
        if hp.scheduler_type != "constant":
            warmup = max(1, int(hp.warmup_epochs * self.trainer.num_training_batches))
            if step < warmup:
                factor = (step + 1) / warmup
            elif hp.scheduler_type == "linear-warmup_cosine-decay":
                total = max(warmup + 1, int(self.trainer.estimated_stepping_batches))
                progress = min(1.0, (step - warmup) / (total - warmup))
                floor = hp.min_learning_rate / hp.learning_rate
                factor = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        drops = sum(self.current_epoch >= e for e in (hp.lr_drop_epoch or []))
        return factor * hp.lr_drop_rate**drops

    def training_step(self, batch, batch_idx):
        x = self.get_input(batch)
        # unreadable images dropped by collate_skip_none, summed over the epoch and the ranks (a per-step value
        # would only be written every log_every_n_steps); torch.full on the device: no host sync, NCCL-reducible
        self.log("train/skipped_images", torch.full((), float(batch.get("num_skipped", 0)), device=x.device),
                 on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True, batch_size=1)
        if x.shape[0] == 0:
            if self.trainer.world_size > 1:
                raise RuntimeError("a whole batch of unreadable images on one rank; remove the corrupt files "
                                   "(their count is logged as train/skipped_images)")
            rank_zero_warn(f"batch {batch_idx}: every image was unreadable; batch skipped")
            return None
        opt = self.optimizers()
        d_buffers = [b.clone() for b in self.loss.discriminator.buffers()]  # BatchNorm stats, restored on a skip
        z = self.encoder(x)
        quant, entropy_aux, indices, breakdown = self.quantize(z, return_loss_breakdown=True)
        xrec = self.decoder(quant)
        g_loss, logs = self.loss.generator_loss(x, xrec, entropy_aux, breakdown.commitment, self.global_step,
                                                last_layer=self.decoder.conv_out.weight)
        d_loss, d_logs, lecam_state = self.loss.discriminator_loss(x, xrec.detach(), self.global_step)
        logs.update(d_logs)
        total = g_loss + d_loss
        bad = self.trainer.strategy.reduce((~torch.isfinite(total.detach())).float(), reduce_op="sum")
        if bad.item() > 0:
            with torch.no_grad():
                for buffer, saved in zip(self.loss.discriminator.buffers(), d_buffers):
                    buffer.copy_(saved)
            return self._skip_nonfinite(logs)
        self.nonfinite_streak = 0
        lr_factor = self.lr_factor()
        for group in opt.param_groups:
            group["lr"] = self.hparams.learning_rate * lr_factor
        opt.zero_grad(set_to_none=True)
        self.manual_backward(total)
        opt.step()
        if lecam_state is not None:
            self.loss.lecam.commit(*lecam_state)
        if self.model_ema is not None:
            self.model_ema.update(self)
        logs.update(self._code_statistics(quant, indices, breakdown))
        logs["train/lr"] = torch.full((), self.hparams.learning_rate * lr_factor, device=x.device)
        self.log_dict(logs, batch_size=x.shape[0])
        self.log("loss", g_loss.detach(), prog_bar=True, logger=False, batch_size=x.shape[0])
        return None

    def on_before_optimizer_step(self, optimizer) -> None:
        """Runs after AMP unscaling: clip the generator and discriminator gradient norms separately."""
        clip = self.hparams.gradient_clip_val
        if clip:
            for group in optimizer.param_groups:
                norm = torch.nn.utils.clip_grad_norm_(group["params"], clip)
                self.log(f"train/grad_norm_{group['name']}", norm)

    def _code_statistics(self, quant: torch.Tensor, indices: torch.Tensor, breakdown) -> dict:
        """Codebook usage of the batch (distinct codes / tokens, no host sync), bit balance (fraction of +1 codes
        per latent channel), entropies."""
        flat = indices.flatten().sort().values
        distinct = 1 + (flat[1:] != flat[:-1]).sum()
        bit_means = (quant.detach() > 0).float().mean(dim=(0, 2, 3))
        stats = {"train/per_sample_entropy": breakdown.per_sample_entropy.detach(),
                 "train/codebook_entropy": breakdown.codebook_entropy.detach(),
                 "train/codebook_usage": distinct.float() / flat.numel()}
        stats.update({f"train/bit_balance/{c:02d}": m for c, m in enumerate(bit_means)})
        return stats

    def _skip_nonfinite(self, logs: dict):
        self.nonfinite_streak += 1
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in logs.items() if not torch.isfinite(v).all())
        rank_zero_warn(f"non-finite loss at step {self.global_step}: batch skipped ({self.nonfinite_streak} in a row; "
                       f"non-finite terms: {terms or 'n/a on this rank'})")
        self.log("train/nonfinite_streak", float(self.nonfinite_streak))
        if self.nonfinite_streak >= self.hparams.max_nonfinite_steps:
            ckpt_dir = getattr(self.trainer.checkpoint_callback, "dirpath", None) or self.trainer.default_root_dir
            path = Path(ckpt_dir) / f"nonfinite-stop-step{self.global_step}.ckpt"
            self.trainer.save_checkpoint(path)
            raise RuntimeError(
                f"{self.nonfinite_streak} consecutive non-finite losses (max_nonfinite_steps) at step "
                f"{self.global_step}; the last good state (the skipped batches changed nothing) is saved at {path}. "
                "Try a lower learning_rate, gradient_clip_val, or precision bf16-mixed / 32.")
        return None

    # ------------------------------------------------------------------------------------------- evaluation
    def _use_ema(self, on: bool) -> None:
        if self.model_ema is not None and self._ema_swapped != on:
            self.model_ema.swap(self)
            self._ema_swapped = on

    def on_validation_epoch_start(self) -> None:
        self._use_ema(True)

    def on_validation_epoch_end(self) -> None:
        self._use_ema(False)

    def on_test_epoch_start(self) -> None:
        self._use_ema(True)

    def on_test_epoch_end(self) -> None:
        self._use_ema(False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._ema_swapped:
            raise RuntimeError("checkpoint requested while the EMA weights are swapped in (during validation)")

    def validation_step(self, batch, batch_idx):
        return self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._evaluate(batch, "test")

    def _evaluate(self, batch, split: str):
        """EMA weights, quantizer in eval mode (no entropy), reconstruction clamped to [-1, 1]; LeCam untouched."""
        x = self.get_input(batch)
        if x.shape[0] == 0:
            return None
        quant, entropy_aux, indices, breakdown = self.quantize(self.encoder(x), return_loss_breakdown=True)
        xrec = self.decoder(quant).clamp(-1, 1)
        _, logs = self.loss.generator_loss(x, xrec, entropy_aux, breakdown.commitment, self.global_step, split=split)
        _, d_logs, _ = self.loss.discriminator_loss(x, xrec, self.global_step, update_lecam=False, split=split)
        logs.update(d_logs)
        logs[f"{split}/psnr"] = psnr(to_uint8(x), to_uint8(xrec)).mean().float()
        self.log_dict(logs, batch_size=x.shape[0], sync_dist=True)
        return xrec
