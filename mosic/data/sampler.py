"""The training sampler: an endless, resumable stream of (epoch, video index) pairs."""

from __future__ import annotations

from torch.utils.data import DistributedSampler


class EpochSampler(DistributedSampler):
    """Endless (epoch, index) stream for one process, starting at any global step.

    Each epoch is DistributedSampler's seeded permutation, sharded by rank and cut to
    whole batches of ``batch_size`` (this process's share of the global batch), so item
    k of step s is the same whatever the worker count and resume point. One DataLoader
    iterates all epochs (no worker restarts). Set ``start_step`` before iterating.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int, batch_size: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.batch_size = batch_size
        self.steps_per_epoch = self.num_samples // batch_size
        self.start_step = 0

    def __iter__(self):
        if self.steps_per_epoch == 0:
            return
        epoch, skip = divmod(self.start_step, self.steps_per_epoch)
        while True:
            self.set_epoch(epoch)
            indices = list(super().__iter__())[: self.steps_per_epoch * self.batch_size]
            for index in indices[skip * self.batch_size :]:
                yield (epoch, index)
            epoch, skip = epoch + 1, 0

    def __len__(self) -> int:
        return self.steps_per_epoch * self.batch_size
