"""Callbacks that test subprocesses add to real training runs (imported by LightningCLI from tests/)."""
import os
import signal

import lightning as L
import torch


class KillAtStep(L.Callback):
    """SIGKILL this process once `step` optimizer steps are done: a crash nothing can intercept."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonBatch(L.Callback):
    """Turn the images of batch `batch_idx` of rank `rank` into NaN; at the end save what each rank ended with."""

    def __init__(self, batch_idx: int, rank: int, out_dir: str):
        self.batch_idx, self.rank, self.out_dir, self.batches = batch_idx, rank, out_dir, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches += 1
        if trainer.global_rank == self.rank and self.batches - 1 == self.batch_idx:
            batch["image"].fill_(float("nan"))

    def on_train_end(self, trainer, pl_module):
        ddp = trainer.strategy.model
        ema = {id(b) for b in pl_module.model_ema.buffers()}
        broadcast = getattr(ddp, "modules_buffers", [])
        torch.save({"state_dict": pl_module.state_dict(), "batches": self.batches, "global_step": trainer.global_step,
                    "ignored": sorted(getattr(ddp, "parameters_to_ignore", [])),
                    "broadcast_buffers": len(broadcast), "ema_broadcast": sum(id(b) in ema for b in broadcast)},
                   os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"))


class UserQuantizer(torch.nn.Module):
    """A user's own class: built from a config only when the user trusts its class path."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim


from taming.modules.transformer import GPT  # noqa: E402


class UserGPT(GPT):
    """A user's subclass of a registered generator: a file may name it only when the user trusts it."""
