"""Lightning callbacks: checkpoints written during training, throughput in the progress bar, reconstruction grids;
for AR generators tokens per second, class-conditional sample grids and weights-only exports."""
import os
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn

from .checkpoints import save_atomic
from .generator import WEIGHTS, weights_only
from .modules.component import UntrustedClassError
from .provenance import decode_tokens, load_recorded_tokenizer


class PeriodicCheckpoint(L.Callback):
    """Checkpoints written during training, atomically, with any Lightning version.

    `last.ckpt` is rewritten every `every_n_train_steps` optimizer steps (0: never mid-epoch), at the end of every
    `every_n_epochs`-th epoch and when training ends; kept copies `epochNNN.ckpt` every `keep_every_n_epochs`
    epochs and `stepNNNNNNNN.ckpt` every `keep_every_n_train_steps` steps (0: none). A file is written under a
    temporary name and renamed into place, so a crash or a kill while writing never leaves a truncated checkpoint;
    the previous one stays until the new one is complete. Resume with `--ckpt_path <dirpath>/last.ckpt`: mid-epoch
    checkpoints resume exactly (same data, same crops) with `taming.data.ImageDataModule`. `dirpath` may hold
    `{version}`, the first logger's version (e.g. `models/demo/version_{version}` next to `logs/demo/version_N`; without
    a logger the first number whose folder does not exist): every run then writes into a folder of its own.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 1000, every_n_epochs: int = 1,
                 keep_every_n_epochs: int = 0, keep_every_n_train_steps: int = 0):
        if min(every_n_train_steps, every_n_epochs, keep_every_n_epochs, keep_every_n_train_steps) < 0:
            raise ValueError("checkpoint intervals must be >= 0 (0 switches one off)")
        if "{" in str(dirpath) and str(dirpath).replace("{version}", "").count("{"):
            raise ValueError(f"dirpath {dirpath!r}: the only placeholder is {{version}} (the logger's version)")
        self.dirpath_template = str(dirpath)
        self.dirpath = Path(dirpath)
        self.every_n_train_steps, self.every_n_epochs = every_n_train_steps, every_n_epochs
        self.keep_every_n_epochs, self.keep_every_n_train_steps = keep_every_n_epochs, keep_every_n_train_steps
        self.last_path: Optional[Path] = None
        self._saved_step = -1

    @property
    def state_key(self) -> str:
        return f"PeriodicCheckpoint[{self.dirpath_template}]"

    def save(self, trainer: "L.Trainer", name: str) -> Path:
        """trainer.save_checkpoint to <dirpath>/<name> via a temporary file (every rank calls it)."""
        path = self.dirpath / name
        tmp = path.with_name(f".{name}.partial")
        trainer.save_checkpoint(tmp)  # collective; rank 0 writes
        if trainer.is_global_zero:
            if tmp.is_dir() and path.exists():  # a sharded (FSDP) checkpoint is a folder: os.replace cannot overwrite it
                old = path.with_name(f".{name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)  # a crash before the next line leaves the previous checkpoint here
                os.replace(tmp, path)
                shutil.rmtree(old)
            else:
                os.replace(tmp, path)
        trainer.strategy.barrier("PeriodicCheckpoint.save")
        return path

    def _save_last(self, trainer) -> None:
        if self._saved_step != trainer.global_step:
            self.last_path = self.save(trainer, "last.ckpt")
            self._saved_step = trainer.global_step

    def setup(self, trainer, pl_module, stage: str) -> None:
        if "{version}" in self.dirpath_template:
            version = trainer.logger.version if trainer.logger is not None else self._next_free_version()
            self.dirpath = Path(self.dirpath_template.format(version=version))

    def _next_free_version(self) -> int:
        """Without a logger: the smallest N whose folder does not exist yet."""
        version = 0
        while Path(self.dirpath_template.format(version=version)).exists():
            version += 1
        return version

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            from .runs import remove_partials

            for path in remove_partials(self.dirpath):
                rank_zero_warn(f"removed {path}, a checkpoint whose save was interrupted")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Every save happens here, after an optimizer step, also the epoch's: Lightning resumes exactly from a
        checkpoint taken at the end of a training batch, while one taken in on_train_epoch_end of a step-limited run
        restarts with a shifted epoch (and so another data order)."""
        step = trainer.global_step
        if step == 0 or trainer.sanity_checking:
            return
        if batch_idx + 1 >= trainer.num_training_batches:  # the epoch's last batch
            epoch = trainer.current_epoch + 1  # epochs completed
            if self.keep_every_n_epochs and epoch % self.keep_every_n_epochs == 0:
                self.save(trainer, f"epoch{epoch:03d}.ckpt")
            if self.every_n_epochs and epoch % self.every_n_epochs == 0:
                self._save_last(trainer)
        if step == self._saved_step:
            return  # no optimizer step since the last save (e.g. a skipped non-finite batch)
        if self.keep_every_n_train_steps and step % self.keep_every_n_train_steps == 0:
            self.save(trainer, f"step{step:08d}.ckpt")
        last_epoch = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs > 0
        final = (trainer.max_steps is not None and 0 < trainer.max_steps <= step) or \
            (batch_idx + 1 >= trainer.num_training_batches and last_epoch)
        if final or (self.every_n_train_steps and step % self.every_n_train_steps == 0):
            self._save_last(trainer)  # the final step's too: a run extended with a larger max_steps resumes exactly

    def on_train_end(self, trainer, pl_module) -> None:
        """Runs that end by max_steps or max_epochs were saved at their last batch (exact to resume); this catches
        the others (max_time, a callback's stop), whose loop state Lightning records as of the end of the run."""
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
    reconstructions (bottom row; EMA weights when the model uses EMA) to TensorBoard as `val/reconstructions`. For
    clips: `num_images` frames of the first clip."""

    def __init__(self, num_images: int = 8):
        self.num_images = num_images
        self._grid = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and outputs is not None and trainer.is_global_zero:
            x = batch["image"][: self.num_images].float()
            rec = outputs[: self.num_images].float()
            if x.dim() == 5:  # clips: evenly spaced frames of the first one
                idx = torch.linspace(0, x.shape[2] - 1, min(self.num_images, x.shape[2])).round().long()
                x, rec = x[0][:, idx].transpose(0, 1), rec[0][:, idx].transpose(0, 1)
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


# ------------------------------------------------------------------------------------------ AR generators (Stage II)


class TokensPerSecond(L.Callback):
    """Logs `tokens_s`: image tokens trained on per second over all ranks (images x the generator's `num_tokens`),
    measured over windows of `window` consecutive training batches; the clock restarts after every validation and
    at every epoch start, so neither is counted."""

    def __init__(self, window: int = 20):
        if window < 1:
            raise ValueError(f"window must be >= 1 batch, got {window}")
        self.window = window
        self._start = None
        self._tokens = self._batches = 0

    def _restart(self, *_) -> None:
        self._start = None

    on_train_epoch_start = on_validation_end = _restart

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._start is not None:
            self._tokens += len(batch["class_label"]) * pl_module.generator.num_tokens * trainer.world_size
            self._batches += 1
            if self._batches < self.window:
                return
            rate = self._tokens / max(now - self._start, 1e-9)
            pl_module.log("tokens_s", torch.full((), rate, device=pl_module.device), prog_bar=True, batch_size=1)
        self._start, self._tokens, self._batches = now, 0, 0


class ClassSampleGrid(L.Callback):
    """After each validation, samples `samples_per_class` images of every label in `class_labels` with the weights
    just validated (the EMA weights when the model keeps them), decodes them with the model's tokenizer (the online
    one, else the one recorded in hparams["tokenizer_source"]) and writes the grid (a column per label) to
    TensorBoard as `val/samples`. Rank 0 only. Sampling settings as `ARGenerator.generate`; the draws come from
    `seed`, so successive grids differ only by the weights. The tokenizer is loaded when fit starts: a class path
    it names that this package does not register stops the run; a missing tokenizer switches the grid off with a
    warning, as FSDP does (whose weights are sharded outside the training step: use scripts/sample.py)."""

    def __init__(self, class_labels: Sequence[int] = (0, 1, 2, 3, 4, 5, 6, 7), samples_per_class: int = 1,
                 cfg_scale: Union[float, Sequence[float]] = 4.0, temperature: Union[float, Sequence[float]] = 1.0,
                 top_k: Union[int, Sequence[int]] = 0, top_p: Union[float, Sequence[float]] = 1.0, seed: int = 0):
        if not class_labels or samples_per_class < 1:
            raise ValueError("ClassSampleGrid needs at least one class label and samples_per_class >= 1")
        self.labels, self.samples_per_class, self.seed = list(class_labels), samples_per_class, seed
        self.sampling = dict(cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p)
        self._tokenizer = None
        self._off = False

    def _decoder(self, trainer, pl_module):
        if isinstance(trainer.strategy, FSDPStrategy):
            raise ValueError("not supported under FSDP")
        if pl_module.tokenizer is not None:
            return pl_module.tokenizer
        if self._tokenizer is None:
            record = pl_module.hparams.get("tokenizer_source")
            if not record:
                raise ValueError("the model records no tokenizer (hparams tokenizer_source)")
            self._tokenizer = load_recorded_tokenizer(record, map_location=pl_module.device)
        return self._tokenizer

    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or self._off:
            return
        try:
            self._decoder(trainer, pl_module)
        except UntrustedClassError:
            raise
        except (FileNotFoundError, RuntimeError, ValueError, TypeError) as err:
            self._off = True
            rank_zero_warn(f"ClassSampleGrid switched off: {err}")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self._off:
            return
        tokenizer = self._decoder(trainer, pl_module)
        import torchvision


        generator = pl_module.generator
        rng = torch.Generator(pl_module.device).manual_seed(self.seed)
        labels = torch.tensor(self.labels * self.samples_per_class, device=pl_module.device)
        tokens = generator.generate(labels, generator=rng, **self.sampling)
        generator.free_cache()
        images = decode_tokens(tokenizer, tokens, generator.token_grid).float().clamp(-1, 1).add(1).div(2).cpu()
        video = images.dim() == 5
        if video:  # clips: the first, middle and last frame of each, side by side
            frames = images.shape[2]
            images = images[:, :, [0, frames // 2, frames - 1]].transpose(1, 2).flatten(0, 1)
        grid = torchvision.utils.make_grid(images, nrow=len(self.labels) * (3 if video else 1), padding=2,
                                           pad_value=1.0)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/samples", grid, trainer.global_step)


class GeneratorExport(L.Callback):
    """Writes `<dirpath>/<filename>`: a weights-only copy of the AR generator (`taming.generator.weights_only`: no
    optimizer state, `weights` "ema" / "raw" / "both"), which `taming.generator.load_generator` reads; rewritten
    atomically every `every_n_epochs` epochs (0: never) and when training ends."""

    def __init__(self, dirpath: str, filename: str = "generator.ckpt", weights: str = "ema", every_n_epochs: int = 1):
        if weights not in WEIGHTS or every_n_epochs < 0:
            raise ValueError(f"need weights in {WEIGHTS} and every_n_epochs >= 0, got {weights!r} and {every_n_epochs}")
        self.path, self.weights, self.every_n_epochs = Path(dirpath) / filename, weights, every_n_epochs

    def export(self, trainer, pl_module) -> None:
        state = trainer.strategy.lightning_module_state_dict()  # collective under FSDP (gathered on rank 0)
        if trainer.is_global_zero:
            checkpoint = {"state_dict": state, "hyper_parameters": dict(pl_module.hparams),
                          "global_step": trainer.global_step, "epoch": trainer.current_epoch}
            save_atomic(weights_only(checkpoint, self.weights), self.path)
        trainer.strategy.barrier("GeneratorExport")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.export(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.export(trainer, pl_module)
