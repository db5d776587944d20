"""The optimisation protocol shared by every training module (tokenizers and AR generators).

A subclass says what to optimise (`param_groups`) and how to compute the loss of a batch (`training_loss`); this
class does the rest, identically for all of them, under manual optimisation:

1. snapshot the persistent buffers (BatchNorm statistics, codebook usage windows, ...);
2. `training_loss(batch)` -> StepResult(loss, logs, batch_size, on_accept);
3. non-finite consensus: every rank learns whether any rank's loss is NaN/Inf (one all-reduce, one host sync per
   step); if so the batch is skipped on all ranks, the buffers are restored and nothing else changes; after
   `max_nonfinite_steps` in a row the last good state is saved and the run stops with a message;
4. learning rate of this step (`schedules.lr_factor`, epoch drops), zero_grad, one backward, gradient clipping per
   parameter group (after AMP unscaling), one optimizer step, `on_accept()` (e.g. commit the LeCam averages), the
   weight EMA update, logging.

`global_step` counts accepted batches. Validation and test run with the EMA weights (swapped in for the whole loop).

Sharded training (FSDP, Lightning's FSDPStrategy): a subclass names the submodules to shard in `fsdp_roots`;
`configure_model` wraps each as its own FSDP root (one unit per layer class of the strategy's `auto_wrap_policy`),
so that Lightning does not wrap the whole module: the protocol's backward runs inside `training_step`, which FSDP
forbids inside a root's forward. The other children (a quantizer, a discriminator and its frozen LPIPS / teacher)
stay whole on every rank: after the backward their gradients are averaged over the ranks and rank 0's buffers
broadcast, as DDP does. Gradient norms are summed over the shards of all ranks before clipping, and optimizer
states that a sharded checkpoint restores as ShardedTensors for the whole children are gathered back. Not supported
with FSDP: EMA (its shadows hold whole tensors) and HYBRID_SHARD (the norms are reduced over all ranks).
"""
import math
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn

from ..modules.ema import LitEma
from .optimization import OPTIMIZERS, Optimization


class StepResult(NamedTuple):
    loss: torch.Tensor  # scalar to backpropagate
    logs: dict  # name -> detached scalar tensor
    batch_size: int
    on_accept: Optional[Callable[[], None]] = None  # runs after the optimizer step of an accepted batch


class TrainingProtocol(L.LightningModule):
    """Base LightningModule. Class attributes: `fsdp_roots` (names of the submodules FSDP shards, empty = no FSDP)
    and `clip_jointly` (one gradient norm over all parameter groups instead of one per group).

    Optimisation settings (every one a YAML key of the subclasses, collected into `self.optim`, a checked
    `taming.models.optimization.Optimization`):

    learning_rate, optimizer ("adam" | "adamw"), betas, weight_decay (per group, see `param_groups`), fused_optimizer;
    lr_schedule (see taming.models.schedules), warmup_steps + warmup_epochs (added), warmup_start, min_learning_rate
    (end of the decay), decay_fraction (wsd), hold_fraction (hold-linear), lr_drop_epoch / lr_drop_step /
    lr_drop_rate (LR x rate from each listed epoch, and each listed optimizer step, on); gradient_clip_val (max norm
    per parameter group, None = off); tf32. Also use_ema / ema_decay and max_nonfinite_steps.
    """

    def __init__(self, learning_rate: float = 1e-4, optimizer: str = "adam", betas: Sequence[float] = (0.9, 0.999),
                 weight_decay: float = 0.0, fused_optimizer: bool = False, lr_schedule: str = "constant",
                 warmup_steps: int = 0, warmup_epochs: float = 0.0, warmup_start: Optional[float] = None,
                 min_learning_rate: float = 0.0, decay_fraction: float = 0.2, hold_fraction: float = 0.05,
                 lr_drop_epoch: Optional[Sequence[int]] = None, lr_drop_rate: float = 0.1,
                 lr_drop_step: Optional[Sequence[int]] = None, gradient_clip_val: Optional[float] = None,
                 use_ema: bool = False, ema_decay: float = 0.999, max_nonfinite_steps: int = 20, tf32: bool = False):
        super().__init__()
        if max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {max_nonfinite_steps}")
        self.automatic_optimization = False
        self.optim = Optimization(  # the flat YAML keys as one typed, checked object
            learning_rate=learning_rate, optimizer=optimizer, betas=betas, weight_decay=weight_decay,
            fused=fused_optimizer, schedule=lr_schedule, warmup_steps=warmup_steps, warmup_epochs=warmup_epochs,
            warmup_start=warmup_start, min_learning_rate=min_learning_rate, decay_fraction=decay_fraction,
            hold_fraction=hold_fraction, lr_drop_epoch=lr_drop_epoch, lr_drop_step=lr_drop_step,
            lr_drop_rate=lr_drop_rate, clip=gradient_clip_val, tf32=tf32)
        self.use_ema, self.ema_decay, self.max_nonfinite_steps = use_ema, ema_decay, max_nonfinite_steps
        self.model_ema = None
        self.nonfinite_streak = 0
        self._epoch_batches = [0, 0]  # batches of this training epoch: seen, and that gave a loss (on_train_epoch_end)
        self._tf32_before = None  # the TF32 flags before `tf32` switched them on (restored in teardown)
        self._ema_swapped = False
        self._replicated: Optional[set] = None  # under FSDP: ids of the parameters left whole on every rank

    fsdp_roots: Tuple[str, ...] = ()
    clip_jointly: bool = False
    architecture_hparams: Tuple[str, ...] = ()  # dotted hparams keys a resumed run may not change (main.py)
    derived_hparams: Tuple[str, ...] = ()  # hparams the run fills in itself (not settings: never compared)

    # ----------------------------------------------------------------------------------------- subclass API
    def param_groups(self) -> List[dict]:
        """[{"name": str, "params": [...], optional "weight_decay": float}, ...]"""
        raise NotImplementedError

    def training_loss(self, batch, batch_idx: int) -> Optional[StepResult]:
        """Forward pass and loss of one batch; None skips the batch (e.g. no readable image in it)."""
        raise NotImplementedError

    def init_ema(self) -> None:
        """Call at the end of the subclass constructor: EMA shadows of every trainable parameter of the module,
        named as Open-MAGVIT2's `model_ema.<name without dots>`, left out of DDP's buffer broadcast (identical on
        every rank: the same updates of the same weights)."""
        if self.use_ema:
            self.model_ema = LitEma(self, decay=self.ema_decay)
            # DDP reads this attribute (its only way to leave buffers out of the broadcast; no public API exists)
            self._ddp_params_and_buffers_to_ignore = [f"model_ema.{name}" for name in self.model_ema._buffers]

    # ----------------------------------------------------------------------------------------- FSDP
    @property
    def sharded(self) -> bool:
        return isinstance(getattr(self._trainer, "strategy", None), FSDPStrategy)

    def setup(self, stage: str) -> None:
        if not self.sharded:
            return
        strategy = self.trainer.strategy
        if not self.fsdp_roots:
            raise ValueError(f"{type(self).__name__} does not support FSDP; use strategy ddp")
        if self.model_ema is not None:
            raise ValueError("use_ema is not supported with FSDP (the EMA shadows hold whole tensors, FSDP shards the "
                             "parameters); set model.init_args.use_ema false")
        if strategy.sharding_strategy.name not in ("FULL_SHARD", "SHARD_GRAD_OP"):
            raise ValueError(f"sharding_strategy {strategy.sharding_strategy.name} is not supported (the gradient "
                             "norms are reduced over all ranks); use FULL_SHARD or SHARD_GRAD_OP")
        whole = [m for name, m in self.named_children() if name not in self.fsdp_roots and name != "model_ema"]
        for module in whole:
            module.to(strategy.root_device)  # FSDPStrategy moves only what FSDP wraps
        self._replicated = {id(p) for m in whole for p in m.parameters()}

    def configure_model(self) -> None:
        if self.optim.tf32 and self._tf32_before is None:  # process-wide flags: restored in teardown
            self._tf32_before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if self.sharded:
            from torch.distributed.fsdp import FullyShardedDataParallel
            from torch.distributed.fsdp.wrap import wrap

            for name in self.fsdp_roots:
                if not isinstance(getattr(self, name), FullyShardedDataParallel):
                    setattr(self, name, wrap(getattr(self, name)))  # the strategy's FSDP settings

    def teardown(self, stage: str) -> None:
        if self._tf32_before is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self._tf32_before
            self._tf32_before = None

    def on_after_backward(self) -> None:
        """Under FSDP, as DDP does for the children left whole: average their gradients over the ranks and give every
        rank rank 0's buffers (BatchNorm statistics, codebook-usage windows)."""
        if self._replicated and self.trainer.world_size > 1:
            whole = [m for name, m in self.named_children() if name not in self.fsdp_roots and name != "model_ema"]
            for p in (p for m in whole for p in m.parameters() if p.grad is not None):
                dist.all_reduce(p.grad)
                p.grad.div_(self.trainer.world_size)
            for buffer in (b for m in whole for b in m.buffers()):
                dist.broadcast(buffer, 0)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Under FSDP a sharded checkpoint restores every optimizer state as a ShardedTensor (the loader cannot tell
        whole parameters from sharded ones): gather those of the whole children back into plain tensors."""
        if not self._replicated:
            return
        # the type FSDP's sharded optimizer-state loading produces (no public alias in the supported torch versions)
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

    # ----------------------------------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        o = self.optim
        if o.fused and o.clip and self.trainer.precision == "16-mixed":
            raise ValueError("gradient_clip_val with a fused optimizer under precision 16-mixed would clip loss-scaled "
                             "gradients (the fused step unscales after clipping): set fused_adam / fused_optimizer false, "
                             "gradient_clip_val null, or use precision bf16-mixed / 32")
        groups = []
        for group in self.param_groups():
            params = [p for p in group["params"] if p.requires_grad]
            if params:
                groups.append({"weight_decay": o.weight_decay, **group, "params": params})
        kwargs = {"fused": True} if o.fused else {}
        return OPTIMIZERS[o.optimizer](groups, lr=o.learning_rate, betas=o.betas, **kwargs)

    def lr_factor(self) -> float:
        """Multiplier of learning_rate at the current step and epoch (see `Optimization.lr_factor`)."""
        total = 1
        if self.optim.decays:
            total = self.trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise ValueError(f"lr_schedule {self.optim.schedule!r} decays over the run: set trainer.max_steps or "
                                 "max_epochs")
        return self.optim.lr_factor(self.global_step, self.current_epoch, int(total), self.trainer.num_training_batches)

    def _persistent_buffers(self) -> List[torch.Tensor]:
        """Buffers that a forward pass may change and checkpoints keep (not the EMA shadows)."""
        out = []
        for name, module in self.named_modules():
            if name == "model_ema" or name.startswith("model_ema."):
                continue
            out += [b for n, b in module._buffers.items() if b is not None and n not in module._non_persistent_buffers_set]
        return out

    def training_step(self, batch, batch_idx):
        buffers = self._persistent_buffers()
        saved = [b.clone() for b in buffers]
        self._epoch_batches[0] += 1
        result = self.training_loss(batch, batch_idx)
        if result is None:
            return None
        self._epoch_batches[1] += 1
        bad = self.trainer.strategy.reduce((~torch.isfinite(result.loss.detach())).float(), reduce_op="sum")
        if bad.item() > 0:
            with torch.no_grad():
                for buffer, value in zip(buffers, saved):
                    buffer.copy_(value)
            return self._skip_nonfinite(result.logs)
        self.nonfinite_streak = 0
        opt = self.optimizers()
        lr = self.optim.learning_rate * self.lr_factor()
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        self.manual_backward(result.loss)
        opt.step()
        if result.on_accept is not None:
            result.on_accept()
        if self.model_ema is not None:
            self.model_ema.update(self)
        device = result.loss.device
        self.log_dict(result.logs, batch_size=result.batch_size)
        self.log("train/lr", torch.full((), lr, device=device), batch_size=result.batch_size)
        self.log("train/nonfinite_streak", 0.0, batch_size=result.batch_size)  # back to 0 after a skipped run
        self.log("loss", result.loss.detach(), prog_bar=True, logger=False, batch_size=result.batch_size)
        return None

    def on_before_optimizer_step(self, optimizer) -> None:
        """Runs after AMP unscaling: clip the gradient norm of each parameter group (or of all of them together with
        `clip_jointly`); under FSDP the sharded parameters' squared norms are summed over the ranks."""
        clip = self.optim.clip
        if not clip:
            return
        groups = [optimizer.param_groups] if self.clip_jointly else [[g] for g in optimizer.param_groups]
        for together in groups:
            params = [p for g in together for p in g["params"] if p.grad is not None]
            if self._replicated is None:
                norm = torch.nn.utils.clip_grad_norm_(params, clip)
            else:
                sharded = self._squares([p.grad for p in params if id(p) not in self._replicated])
                if self.trainer.world_size > 1:
                    dist.all_reduce(sharded)
                norm = (sharded + self._squares([p.grad for p in params if id(p) in self._replicated])).sqrt()
                torch._foreach_mul_([p.grad for p in params], (clip / (norm + 1e-6)).clamp(max=1.0))
            self.log("train/grad_norm" if self.clip_jointly else f"train/grad_norm_{together[0]['name']}", norm)

    def _squares(self, grads) -> torch.Tensor:
        zero = torch.zeros((), device=self.trainer.strategy.root_device)  # (under FSDP self.device is not the rank's)
        return torch.stack([zero] + [g.float().square().sum() for g in grads]).sum()

    def on_train_epoch_start(self) -> None:
        self._epoch_batches = [0, 0]

    def on_train_epoch_end(self) -> None:
        """An epoch whose batches all lacked a readable image would repeat forever: stop instead."""
        seen, used = self._epoch_batches
        if seen and not used:
            from ..runs import CheckError

            raise CheckError(f"training epoch {self.current_epoch} yielded no usable batch (every image in it was "
                             "unreadable, or the dataset is empty); check the training data (taming.data skips "
                             "unreadable files and counts them)")

    def _skip_nonfinite(self, logs: dict):
        self.nonfinite_streak += 1
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in logs.items() if not torch.isfinite(v).all())
        rank_zero_warn(f"non-finite loss at step {self.global_step}: batch skipped ({self.nonfinite_streak} in a row; "
                       f"non-finite terms: {terms or 'n/a on this rank'})")
        self.log("train/nonfinite_streak", float(self.nonfinite_streak))
        if self.nonfinite_streak >= self.max_nonfinite_steps:
            from ..callbacks import checkpoint_dir

            path = Path(checkpoint_dir(self.trainer)) / f"nonfinite-stop-step{self.global_step}.ckpt"
            self.trainer.save_checkpoint(path)
            raise RuntimeError(
                f"{self.nonfinite_streak} consecutive non-finite losses (max_nonfinite_steps) at step "
                f"{self.global_step}; the last good state (the skipped batches changed nothing) is saved at {path}. "
                "Try a lower learning_rate, gradient_clip_val, or precision bf16-mixed / 32.")
        return None

    # ----------------------------------------------------------------------------------------- EMA
    def on_train_start(self) -> None:
        # Fresh run: take the weights DDP just broadcast from rank 0 (ranks may have been seeded differently).
        if self.model_ema is not None and int(self.model_ema.num_updates) == 0:
            self.model_ema.reset(self)

    def use_ema_weights(self, on: bool) -> None:
        """Swap the EMA weights in (on) or out; a no-op without EMA or when already in that state."""
        if self.model_ema is not None and self._ema_swapped != on:
            self.model_ema.swap(self)
            self._ema_swapped = on

    @property
    def eval_split(self) -> str:
        """Log prefix of validation: "val_ema" when the EMA weights are evaluated (Open-MAGVIT2's name), else "val"."""
        return "val_ema" if self.model_ema is not None else "val"

    def on_validation_epoch_start(self) -> None:
        self.use_ema_weights(True)

    def on_validation_epoch_end(self) -> None:
        self.use_ema_weights(False)

    def on_test_epoch_start(self) -> None:
        self.use_ema_weights(True)

    def on_test_epoch_end(self) -> None:
        self.use_ema_weights(False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._ema_swapped:
            raise RuntimeError("checkpoint requested while the EMA weights are swapped in (during validation)")
