"""ImageDataModule: datasets given as class_path/init_args, a resumable training sampler (the training side of taming.data)."""

from typing import Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ..modules.component import register
from .loading import collate_skip_none
from .sampler import ResumableSampler


@register
class ImageDataModule(L.LightningDataModule):
    """Train / validation / test datasets (any `torch.utils.data.Dataset`, e.g. taming.data.ImageNet, given
    in YAML as class_path/init_args) with `collate_skip_none`.

    Training uses a `ResumableSampler`: a shuffled order seeded by (`seed`, epoch), split over the ranks, yielding
    (index, epoch) keys that seed each sample's augmentation. Its position is saved in checkpoints
    (`state_dict`), so a run resumed from a mid-epoch checkpoint continues with the same data and the same crops
    as the uninterrupted run, with or without DataLoader workers. Evaluation loaders are unshuffled (Lightning adds
    their distributed samplers). A split left as None has no dataloader (Lightning then skips validation; `fit`
    without `train` or `test` without `test` raises). `pin_memory=None` pins when CUDA is available; `drop_last`
    applies to the training loader only.
    """

    def __init__(self, train: Optional[Dataset] = None, validation: Optional[Dataset] = None,
                 test: Optional[Dataset] = None, batch_size: int = 8, num_workers: int = 4,
                 persistent_workers: bool = True, pin_memory: Optional[bool] = None, drop_last: bool = False,
                 seed: int = 0):
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
        self.datasets = {"train": train, "validation": validation, "test": test}
        self.batch_size, self.num_workers, self.drop_last, self.seed = batch_size, num_workers, drop_last, seed
        self.persistent_workers = persistent_workers and num_workers > 0
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._resume = None  # (epoch, batches already consumed in it), from a checkpoint

    def _dataset(self, split: str) -> Dataset:
        dataset = self.datasets[split]
        if dataset is None:
            raise ValueError(f"ImageDataModule has no '{split}' dataset; set data.init_args.{split} "
                             "(class_path/init_args) in the config")
        return dataset

    def _loader(self, dataset: Dataset, **kwargs) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                          collate_fn=collate_skip_none, pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers, **kwargs)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        dataset = self._dataset("train")
        if len(dataset) == 0:
            from ..runs import CheckError

            raise CheckError(f"the training dataset ({type(dataset).__name__}) is empty; check data.init_args.train "
                             "(its root or token folder)")
        sampler = ResumableSampler(dataset, world, rank, shuffle=True, seed=self.seed, drop_last=self.drop_last)
        if self._resume is not None:
            epoch, batches = self._resume
            sampler.resume(epoch, batches * self.batch_size)
        return self._loader(sampler.dataset, sampler=sampler, drop_last=self.drop_last)

    def val_dataloader(self):
        return self._loader(self.datasets["validation"], shuffle=False) if self.datasets["validation"] is not None else []

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("test"), shuffle=False)

    def state_dict(self) -> dict:
        """Position of the training loader: the epoch and the number of its batches the training loop has taken."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        return {"epoch": trainer.current_epoch, "batches": trainer.fit_loop.epoch_loop.batch_progress.current.ready}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._resume = (state["epoch"], state["batches"])
