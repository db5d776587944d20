"""Lightning callbacks: checkpoints written during training, throughput in the progress bar, reconstruction grids."""
import os
import time
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger


class PeriodicCheckpoint(L.Callback):
    """Checkpoints written during training, atomically, with any Lightning version.

    `last.ckpt` is rewritten every `every_n_train_steps` optimizer steps (0: never mid-epoch), at the end of every
    `every_n_epochs`-th epoch and when training ends; kept copies `epochNNN.ckpt` every `keep_every_n_epochs`
    epochs and `stepNNNNNNNN.ckpt` every `keep_every_n_train_steps` steps (0: none). A file is written under a
    temporary name and renamed into place, so a crash or a kill while writing never leaves a truncated checkpoint;
    the previous one stays until the new one is complete. Resume with `--ckpt_path <dirpath>/last.ckpt`: mid-epoch
    checkpoints resume exactly (same data, same crops) with `taming.data.ImageDataModule`.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 1000, every_n_epochs: int = 1,
                 keep_every_n_epochs: int = 0, keep_every_n_train_steps: int = 0):
        if min(every_n_train_steps, every_n_epochs, keep_every_n_epochs, keep_every_n_train_steps) < 0:
            raise ValueError("checkpoint intervals must be >= 0 (0 switches one off)")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps, self.every_n_epochs = every_n_train_steps, every_n_epochs
        self.keep_every_n_epochs, self.keep_every_n_train_steps = keep_every_n_epochs, keep_every_n_train_steps
        self.last_path: Optional[Path] = None
        self._saved_step = -1

    @property
    def state_key(self) -> str:
        return f"PeriodicCheckpoint[{self.dirpath}]"

    def save(self, trainer: "L.Trainer", name: str) -> Path:
        """trainer.save_checkpoint to <dirpath>/<name> via a temporary file (every rank calls it)."""
        path = self.dirpath / name
        tmp = path.with_name(f".{name}.partial")
        trainer.save_checkpoint(tmp)  # collective; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, path)
        trainer.strategy.barrier("PeriodicCheckpoint.save")
        return path

    def _save_last(self, trainer) -> None:
        if self._saved_step != trainer.global_step:
            self.last_path = self.save(trainer, "last.ckpt")
            self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == 0 or step == self._saved_step or trainer.sanity_checking:
            return  # no optimizer step since the last save (e.g. a skipped non-finite batch)
        if self.keep_every_n_train_steps and step % self.keep_every_n_train_steps == 0:
            self.save(trainer, f"step{step:08d}.ckpt")
        if self.every_n_train_steps and step % self.every_n_train_steps == 0:
            self._save_last(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1  # epochs completed
        if self.keep_every_n_epochs and epoch % self.keep_every_n_epochs == 0:
            self.save(trainer, f"epoch{epoch:03d}.ckpt")
        if self.every_n_epochs and epoch % self.every_n_epochs == 0:
            self._save_last(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save_last(trainer)


def checkpoint_dir(trainer: "L.Trainer") -> Path:
    """Where the run writes checkpoints: the first PeriodicCheckpoint's (or ModelCheckpoint's) folder, else the
    trainer's default_root_dir."""
    for callback in trainer.callbacks:
        if isinstance(callback, PeriodicCheckpoint):
            return callback.dirpath
    folder = getattr(trainer.checkpoint_callback, "dirpath", None)
    return Path(folder or trainer.default_root_dir)


def last_checkpoint(trainer: "L.Trainer") -> Optional[Path]:
    """The newest `last.ckpt` this run wrote (PeriodicCheckpoint), else ModelCheckpoint's last/best path."""
    for callback in trainer.callbacks:
        if isinstance(callback, PeriodicCheckpoint) and callback.last_path is not None:
            return callback.last_path
    callback = trainer.checkpoint_callback
    path = callback and (callback.last_model_path or callback.best_model_path)
    return Path(path) if path else None


class ImagesPerSecond(L.Callback):
    """Logs `img_s` (training images per second over all ranks, smoothed) to the progress bar and logger.

    Measured between consecutive training batch ends, so it includes data loading and the optimizer step.
    """

    def __init__(self, smoothing: float = 0.9):
        self.smoothing = smoothing
        self._last = None
        self._rate = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last = None  # do not count the epoch boundary (validation, worker start-up)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last is not None:
            rate = batch["image"].shape[0] * trainer.world_size / max(now - self._last, 1e-9)
            self._rate = rate if self._rate is None else self.smoothing * self._rate + (1 - self.smoothing) * rate
            # torch.full, not a Python float: Lightning would make that torch.tensor(v, device=cuda), a host sync
            pl_module.log("img_s", torch.full((), self._rate, device=pl_module.device), prog_bar=True, batch_size=1)
        self._last = now


class ReconstructionGrid(L.Callback):
    """After each validation, writes a grid of the first `num_images` validation inputs (top row) above their
    reconstructions (bottom row; EMA weights when the model uses EMA) to TensorBoard as `val/reconstructions`."""

    def __init__(self, num_images: int = 8):
        self.num_images = num_images
        self._grid = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and outputs is not None and trainer.is_global_zero:
            x = batch["image"][: self.num_images].float()
            rec = outputs[: self.num_images].float()
            self._grid = make_grid(x, rec)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._grid is not None and not trainer.sanity_checking:
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image("val/reconstructions", self._grid, trainer.global_step)
        self._grid = None


def make_grid(originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Two rows, originals above reconstructions, B x 3 x H x W in [-1, 1] -> 3 x H' x W' float in [0, 1]."""
    import torchvision

    images = torch.cat([originals, reconstructions]).clamp(-1, 1).add(1).div(2).cpu()
    return torchvision.utils.make_grid(images, nrow=originals.shape[0], padding=2, pad_value=1.0)
