"""ImageDataModule (datasets given as class_path/init_args) and the collate that drops unreadable images."""

from typing import Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate


def collate_skip_none(items: list) -> dict:
    """Collate dataset items, dropping the None returned for unreadable images.

    batch["num_skipped"] (int) is the number dropped from this batch, so a LightningModule can sum it
    (it works across DataLoader worker processes, unlike a counter on the dataset). When every item is
    bad, the batch is empty: image 0 x 3 x 0 x 0, class_label of length 0, relpath [].
    """
    good = [item for item in items if item is not None]
    if good:
        batch = default_collate(good)
    else:
        batch = {"image": torch.empty(0, 3, 0, 0), "class_label": torch.empty(0, dtype=torch.long), "relpath": []}
    batch["num_skipped"] = len(items) - len(good)
    return batch


class ImageDataModule(L.LightningDataModule):
    """Train / validation / test datasets (any `torch.utils.data.Dataset`, e.g. taming.data.ImageNet, given
    in YAML as class_path/init_args) with shuffled training, unshuffled evaluation and `collate_skip_none`.
    Distributed samplers are added by Lightning. A split left as None has no dataloader (Lightning then
    skips validation; `fit` without `train` or `test` without `test` raises). `pin_memory=None`
    pins when CUDA is available; `drop_last` applies to the training loader only."""

    def __init__(self, train: Optional[Dataset] = None, validation: Optional[Dataset] = None,
                 test: Optional[Dataset] = None, batch_size: int = 8, num_workers: int = 4,
                 persistent_workers: bool = True, pin_memory: Optional[bool] = None, drop_last: bool = False):
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
        self.datasets = {"train": train, "validation": validation, "test": test}
        self.batch_size, self.num_workers, self.drop_last = batch_size, num_workers, drop_last
        self.persistent_workers = persistent_workers and num_workers > 0
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory

    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self.datasets[split]
        if dataset is None:
            raise ValueError(f"ImageDataModule has no '{split}' dataset; set data.init_args.{split} "
                             "(class_path/init_args) in the config")
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=train, num_workers=self.num_workers,
                          collate_fn=collate_skip_none, pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers, drop_last=train and self.drop_last)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self):
        return self._loader("validation", train=False) if self.datasets["validation"] is not None else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
