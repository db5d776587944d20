"""`HybridVQGAN`: training of GigaTok's hybrid CNN-Transformer tokenizers (spec §1.10).

A `VQGAN` whose generator loss is `GigaTokLoss` and that, while the auxiliary warm-up runs (global_step <
loss.aux_loss_end, training only), also decodes the CNN encoder output with the CNN decoder alone (the "direct"
reconstruction) for the loss. Optimiser, schedules, clipping, EMA, non-finite handling, checkpoints (which
`taming.load_tokenizer` reads without a config) and validation with the EMA weights are VQGAN's; only the
defaults follow GigaTok: AdamW (0.9, 0.95), weight decay 1e-4 on every parameter (GigaTok's DDP path), lr 1e-4,
"cosine" = GigaTok's cosine_v2 (warm-up from lr/100, then half-cosine to min_learning_rate 1e-5), gradient norm
clipped at 10 per network, EMA off (decay 0.9999 when on).

Sharded training (FSDP, the XL-XXL recipe) goes through Lightning's FSDPStrategy (FULL_SHARD or SHARD_GRAD_OP;
`auto_wrap_policy` = the transformer layer classes; `use_orig_params`, Lightning's default). `configure_model` wraps
the encoder and the decoder as two FSDP roots (each with one unit per transformer layer), so Lightning does not wrap
the whole module: the protocol's backward runs inside `training_step`, which FSDP forbids inside a root's forward.
The quantizer and the loss module (discriminator, frozen LPIPS and teacher) stay whole on every rank, as GigaTok keeps
its discriminator data-parallel: the discriminator is frozen during the generator loss by switching requires_grad,
which sharded parameters do not allow, and the codebook-usage window holds code indices, which FSDP's bf16 buffer
cast would corrupt. Their gradients are averaged over the ranks after the backward pass (as DDP would), and each
network's gradient norm is summed over the shards of all ranks before clipping. Not under FSDP: EMA (its shadows hold
whole tensors) and the direct reconstruction (it calls the CNN decoder outside the decoder's FSDP forward; the XL-XXL
recipe has aux_loss_end 0).
"""
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp.wrap import wrap

from ..modules.component import component_config
from ..modules.losses import GigaTokLoss
from .vqgan import VQGAN, last_layer


class HybridVQGAN(VQGAN):
    """Training module of a HybridEncoder / VectorQuantizer / HybridDecoder tokenizer (1-D or 2-D tokens).

    encoder, quantizer, decoder: components as class_path/init_args (see configs/gigatok/). loss: a GigaTokLoss as
    class_path/init_args (default: GigaTokLoss(), which needs the LPIPS VGG16 and DINOv2 ViT-B/14 weight files).
    With semantic regularisation the decoder's projection must match the teacher: distill_dim = teacher width and
    the decoder's g x g grid = the teacher's 16 x 16 patch grid. Other keyword arguments: VQGAN's and
    TrainingProtocol's (warmup_steps, use_ema, ...).
    """

    def __init__(self, encoder, quantizer, decoder, loss=None, learning_rate: float = 1e-4, optimizer: str = "adamw",
                 betas: Sequence[float] = (0.9, 0.95), weight_decay: float = 1e-4, lr_schedule: str = "cosine",
                 warmup_start: Optional[float] = 0.01, min_learning_rate: float = 1e-5,
                 gradient_clip_val: Optional[float] = 10.0, ema_decay: float = 0.9999, **kwargs):
        super().__init__(encoder, quantizer, decoder, loss=GigaTokLoss() if loss is None else loss,
                         learning_rate=learning_rate, optimizer=optimizer, betas=betas, weight_decay=weight_decay,
                         lr_schedule=lr_schedule, warmup_start=warmup_start, min_learning_rate=min_learning_rate,
                         gradient_clip_val=gradient_clip_val, ema_decay=ema_decay, **kwargs)
        if not isinstance(self.loss, GigaTokLoss):
            raise TypeError(f"HybridVQGAN needs a taming.modules.losses.GigaTokLoss, got {type(self.loss).__name__}; "
                            "set model.init_args.loss.class_path: taming.modules.losses.GigaTokLoss")
        if self.loss.teacher is not None:
            self._check_student(self.loss.teacher)
        self._replicated = set()  # ids of the parameters FSDP leaves whole (see setup)

    def _check_student(self, teacher) -> None:
        transformer = self.decoder.transformer
        mlp = getattr(transformer, "distill_mlp", None)
        tokens, width = transformer.grid_size ** 2, None if mlp is None else mlp[-1].out_features
        if (tokens, width) != (teacher.num_tokens, teacher.embed_dim):
            side = int(teacher.num_tokens ** 0.5)
            raise ValueError(f"semantic regularisation aligns the decoder's projection ({tokens} grid tokens of width "
                             f"{width or 'none, distill_depth unset'}) with {teacher.arch} patch tokens "
                             f"({teacher.num_tokens} x {teacher.embed_dim}); set the decoder's distill_depth (GigaTok "
                             f"3), distill_dim {teacher.embed_dim} and a {side} x {side} grid (image_size / "
                             "2^(len(ch_mult) - 1)), or semantic_weight 0")

    # ----------------------------------------------------------------------------------------- FSDP
    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy) and self.loss.teacher is None and self.decoder.transformer.distill_depth:
            raise ValueError("the decoder's semantic projection (distill_depth) gets no gradient with semantic_weight 0, "
                             "and DDP refuses unused parameters: set the decoder's distill_depth null or the loss's "
                             "semantic_weight > 0")
        if not isinstance(strategy, FSDPStrategy):
            return
        if self.model_ema is not None:
            raise ValueError("use_ema is not supported with FSDP (the EMA shadows hold whole tensors, FSDP shards the "
                             "parameters); set model.init_args.use_ema false")
        if strategy.sharding_strategy.name not in ("FULL_SHARD", "SHARD_GRAD_OP"):
            raise ValueError(f"sharding_strategy {strategy.sharding_strategy.name} is not supported (the gradient "
                             "norms are reduced over all ranks); use FULL_SHARD or SHARD_GRAD_OP")
        if self.loss.use_direct_rec_loss and self.loss.aux_loss_end > 0:
            raise ValueError("the direct reconstruction is not supported with FSDP; set loss aux_loss_end 0 (as "
                             "GigaTok's XL-XXL recipe) or use_direct_rec_loss false")
        self.quantize.to(strategy.root_device)  # not FSDP's: FSDPStrategy moves nothing else
        self.loss.to(strategy.root_device)
        self._replicated = {id(p) for m in (self.quantize, self.loss) for p in m.parameters()}

    def configure_model(self) -> None:
        super().configure_model()
        if isinstance(self.trainer.strategy, FSDPStrategy) and not isinstance(self.encoder, FSDP):
            self.encoder, self.decoder = wrap(self.encoder), wrap(self.decoder)  # the strategy's FSDP settings

    def tokenizer_config(self) -> dict:
        """VQGAN's, read through the FSDP wrappers."""
        parts = {"encoder": self.encoder, "quantizer": self.quantize, "decoder": self.decoder}
        return {name: component_config(m.module if isinstance(m, FSDP) else m) for name, m in parts.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Under FSDP, resuming a sharded checkpoint loads every optimizer state as a ShardedTensor (the loader cannot
        tell whole parameters from sharded ones): gather those of the whole modules back into plain tensors."""
        super().on_load_checkpoint(checkpoint)
        if not self._replicated:
            return
        from torch.distributed._shard.sharded_tensor import ShardedTensor

        optimizer = self.trainer.strategy.optimizers[0]
        for p in (p for group in optimizer.param_groups for p in group["params"] if id(p) in self._replicated):
            state = optimizer.state.get(p, {})
            for key, value in sorted(state.items()):
                if isinstance(value, ShardedTensor):
                    full = torch.empty(value.size(), dtype=p.dtype, device=p.device)
                    value.gather(0, full if self.global_rank == 0 else None)
                    dist.broadcast(full, 0)
                    state[key] = full

    def on_after_backward(self) -> None:
        """Under FSDP, as DDP does for the whole (unsharded) quantizer and loss module: average their gradients over
        the ranks and give every rank rank 0's buffers (BatchNorm statistics, codebook-usage window)."""
        if self._replicated and self.trainer.world_size > 1:
            modules = (self.quantize, self.loss)
            for p in (p for m in modules for p in m.parameters() if p.grad is not None):
                dist.all_reduce(p.grad)
                p.grad.div_(self.trainer.world_size)
            for buffer in (b for m in modules for b in m.buffers()):
                dist.broadcast(buffer, 0)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Clip each network's gradient norm; under FSDP the norm of the sharded part is summed over the ranks."""
        clip = self.optim["clip"]
        if not (self._replicated and clip):
            return super().on_before_optimizer_step(optimizer)
        for group in optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            sharded_sq = self._sum_squares([p.grad for p in params if id(p) not in self._replicated])
            if self.trainer.world_size > 1:
                dist.all_reduce(sharded_sq)
            norm = (sharded_sq + self._sum_squares([p.grad for p in params if id(p) in self._replicated])).sqrt()
            torch._foreach_mul_([p.grad for p in params], (clip / (norm + 1e-6)).clamp(max=1.0))
            self.log(f"train/grad_norm_{group['name']}", norm)

    def _sum_squares(self, grads) -> torch.Tensor:
        zero = torch.zeros((), device=self.trainer.strategy.root_device)  # (self.device is not FSDP's device)
        return torch.stack([zero] + [g.float().square().sum() for g in grads]).sum()

    def generator_loss(self, x, out, split: str = "train"):
        """GigaTokLoss's objective; in training during the warm-up also on the direct reconstruction."""
        direct = None
        if split == "train" and self.loss.use_direct_rec_loss and self.loss.aux_active(self.global_step):
            direct = self.decoder.decode_cnn_features(out.features["cnn"])
        return self.loss.generator_loss(x, out.reconstruction, out.quantizer, self.global_step,
                                        last_layer=last_layer(self.decoder), split=split, features=out.features,
                                        direct_reconstruction=direct)
