"""Lightning callbacks for tokenizer training: throughput in the progress bar, reconstruction grids."""
import time

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger


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
