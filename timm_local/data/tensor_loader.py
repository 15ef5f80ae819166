"""Batches from a device-resident uint8 tensor, augmented per batch on the device (the small-dataset fast path).

Contract, on top of :mod:`timm_local.data.loader_base`:
- the whole ``images``/``labels`` pair is moved to ``device`` once; each batch is an ``index_select`` of it
  followed by ``transform(x_uint8, generator)``;
- the epoch order is :func:`~timm_local.data.sharding.epoch_order` ``(seed, epoch)`` sharded for
  ``(rank, world_size)`` (``even_shards`` pads by repetition, as ``DistributedSampler``);
- the augmentation generator is re-seeded per batch from ``(seed, epoch, rank, batch)``, so a batch is the
  same whether reached by iterating or by resuming at it.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch

from .loader_base import EpochLoader
from .sharding import epoch_order, mix_seed, shard, shard_len

__all__ = ["TensorLoader"]


class TensorLoader(EpochLoader):
    """Iterate ``(x, y)`` batches of an in-memory uint8 image tensor.

    Args:
        images: uint8 N×C×H×W. labels: int64 N.
        batch_size: samples per batch on this rank.
        transform: ``transform(x_uint8, generator) -> float x`` (e.g. :class:`~timm_local.data.augment.TrainAugment`).
        device: where data, batches and the augmentation generator live.
        shuffle / seed: per-epoch seeded permutation, identical on every rank.
        rank / world_size: DDP shard of this process.
        drop_last: drop the last partial batch (the reference keeps it: default False).
        even_shards: pad shards to equal length by repeating samples (training); ``False`` for evaluation.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        transform: Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor],
        device: torch.device | str = "cpu",
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        even_shards: bool = True,
    ):
        super().__init__(batch_size, drop_last)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {images.dtype} {tuple(images.shape)}")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.transform = transform
        self.shuffle, self.seed = shuffle, int(seed)
        self.rank, self.world_size, self.even_shards = rank, world_size, even_shards
        self.generator = torch.Generator(device=self.device)

    @property
    def dataset_size(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_samples(self) -> int:
        return shard_len(self.dataset_size, self.rank, self.world_size, self.even_shards)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in order (CPU int64)."""
        order = epoch_order(self.dataset_size, self.seed, self.epoch, self.shuffle)
        return shard(order, self.rank, self.world_size, self.even_shards)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start = self._start_batch()
        epoch, n_batches, bs = self.epoch, len(self), self.batch_size
        idx_all = self.indices().to(self.device)
        for b in range(start, n_batches):
            idx = idx_all[b * bs:(b + 1) * bs]
            x = self.images.index_select(0, idx)
            y = self.labels.index_select(0, idx)
            self.generator.manual_seed(mix_seed(self.seed, epoch, self.rank, b))
            x = self.transform(x, self.generator)
            self.batch = b + 1
            yield x, y

    def __repr__(self) -> str:
        return (f"TensorLoader(n={self.dataset_size}, batch_size={self.batch_size}, batches={len(self)}, "
                f"shuffle={self.shuffle}, rank={self.rank}/{self.world_size}, device={self.device}, "
                f"transform={self.transform!r})")
