"""`Optimization`: a training module's optimisation settings as one typed, validated object.

The YAML keys stay flat (Open-MAGVIT2's `learning_rate`, `lr_drop_epoch`, ...; see `TrainingProtocol`); the module
collects them into this frozen dataclass, which checks them at construction and computes the learning-rate factor of
any step from them alone.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .schedules import check_schedule, lr_factor

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


@dataclass(frozen=True)
class Optimization:
    learning_rate: float = 1e-4
    optimizer: str = "adam"  # a key of OPTIMIZERS
    betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0  # per parameter group (see TrainingProtocol.param_groups)
    fused: bool = False
    schedule: str = "constant"  # taming.models.schedules.SCHEDULES
    warmup_steps: int = 0  # added to warmup_epochs x batches per epoch
    warmup_epochs: float = 0.0
    warmup_start: Optional[float] = None  # factor at the first warm-up step (None: 1 / warm-up steps)
    min_learning_rate: float = 0.0  # where the decaying schedules end
    decay_fraction: float = 0.2  # wsd
    hold_fraction: float = 0.05  # hold-linear
    lr_drop_epoch: Tuple[int, ...] = ()  # x lr_drop_rate from each listed epoch on
    lr_drop_step: Tuple[int, ...] = ()  # x lr_drop_rate from each listed optimizer step on
    lr_drop_rate: float = 0.1
    clip: Optional[float] = None  # max gradient norm per parameter group, None = off
    tf32: bool = False

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}")
        check_schedule(self.schedule)
        if self.learning_rate <= 0 or (self.clip is not None and self.clip <= 0):
            raise ValueError(f"need learning_rate > 0 and gradient_clip_val > 0 (or null), got {self.learning_rate} "
                             f"and {self.clip}")
        if len(tuple(self.betas)) != 2:
            raise ValueError(f"betas must be two numbers, got {self.betas!r}")
        for name in ("betas", "lr_drop_epoch", "lr_drop_step"):  # lists from YAML -> tuples (frozen, hashable)
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))

    @property
    def decays(self) -> bool:
        """Whether the schedule depends on the run's length (needs max_steps or max_epochs)."""
        return self.schedule not in ("constant", "linear-warmup")

    def warmup_total(self, batches_per_epoch: int) -> int:
        return int(self.warmup_steps + round(self.warmup_epochs * batches_per_epoch))

    def lr_factor(self, step: int, epoch: int, total_steps: int, batches_per_epoch: int) -> float:
        """Multiplier of learning_rate at optimizer step `step` (0-based) in epoch `epoch` of a `total_steps` run."""
        factor = lr_factor(self.schedule, step, total_steps, self.warmup_total(batches_per_epoch), self.warmup_start,
                           self.min_learning_rate / self.learning_rate, self.decay_fraction, self.hold_fraction)
        drops = sum(epoch >= e for e in self.lr_drop_epoch) + sum(step >= s for s in self.lr_drop_step)
        return factor * self.lr_drop_rate ** drops
