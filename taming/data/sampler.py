"""A training sampler that a checkpoint can resume in the middle of an epoch."""
from typing import Iterator, Optional, Tuple

from torch.utils.data import Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """DistributedSampler's order (a permutation seeded by (seed, epoch), dealt to `num_replicas` ranks) that

    - yields (index, epoch) keys, so datasets draw each sample's augmentation from (seed, epoch, index) instead of
      a DataLoader worker's RNG (see `taming.data.loading.sample_rng`);
    - can start epoch `resume_epoch` after its first `resume_samples` samples (`resume`), which is what a run
      restarted from a mid-epoch checkpoint needs: the rest of the same order.
    Its length stays the full epoch, as Lightning counts the skipped batches as already done. Being a
    DistributedSampler, Lightning uses it as it is under DDP (it does not wrap or replace it).
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.resume_epoch: Optional[int] = None
        self.resume_samples = 0

    def resume(self, epoch: int, samples: int) -> None:
        """Skip the first `samples` samples of this rank when epoch `epoch` starts; if that is all of them (a
        checkpoint taken after the epoch's last batch), start epoch `epoch + 1` from its beginning.

        Also sets the sampler's epoch: Lightning creates the first iterator of a restarted run (and its workers
        prefetch from it) before it calls `set_epoch`.
        """
        if samples >= self.num_samples:
            epoch, samples = epoch + 1, 0
        self.resume_epoch, self.resume_samples = epoch, samples
        self.set_epoch(epoch)

    def _indices(self) -> list:
        """This rank's indices of the epoch. A dataset with `epoch_order(seed, epoch)` (tar shards) gives the order
        and each rank takes a contiguous block of it (its own shards); otherwise DistributedSampler's."""
        order_of = getattr(self.dataset, "epoch_order", None)
        if not (self.shuffle and callable(order_of)):
            return list(super().__iter__())
        order = order_of(self.seed, self.epoch)
        if self.drop_last:
            order = order[:self.total_size]
        else:
            order = (order * -(-self.total_size // len(order)))[:self.total_size]  # pad as DistributedSampler
        return order[self.rank * self.num_samples:(self.rank + 1) * self.num_samples]

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        skip = self.resume_samples if self.epoch == self.resume_epoch else 0
        for index in self._indices()[skip:]:
            yield index, self.epoch
