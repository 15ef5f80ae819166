"""Per-epoch order of a dataset and its split across DDP ranks, shared by both loaders.

Contract:
- :func:`epoch_order` is a permutation of ``range(n)`` that depends only on ``(seed, epoch)`` (identical on every
  rank), or ``range(n)`` without shuffling.
- :func:`shard` gives rank ``r`` the positions ``r, r+W, r+2W, ...`` of that order. With ``even=True`` the order
  is first padded by repeating its head to a multiple of ``W`` (as ``torch.utils.data.DistributedSampler``),
  so every rank gets ``ceil(n/W)`` indices and the shards together cover every sample (a few twice).
  With ``even=False`` nothing is repeated: shards are disjoint, cover exactly ``n`` samples, and their sizes
  differ by at most one (use for evaluation and reduce sums across ranks once, at the end).
- :class:`ShardSampler` wraps the two for ``torch.utils.data.DataLoader``, with ``set_epoch`` and skipping of
  the first samples of an epoch (mid-epoch resume).
"""
from __future__ import annotations

import hashlib
from typing import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["epoch_order", "shard", "shard_len", "mix_seed", "ShardSampler"]


def mix_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, epoch, rank, batch, ...), well mixed and platform-stable."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """int64 CPU tensor: a seeded permutation of ``range(n)`` for this epoch, or ``arange(n)``."""
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator().manual_seed(mix_seed(seed, epoch))
    return torch.randperm(n, generator=g)


def shard_len(n: int, rank: int, world_size: int, even: bool = True) -> int:
    """Number of indices :func:`shard` gives ``rank``."""
    if even:
        return -(-n // world_size)
    return len(range(rank, n, world_size))


def shard(order: torch.Tensor, rank: int, world_size: int, even: bool = True) -> torch.Tensor:
    """Rank ``rank``'s share of ``order`` (see module docstring)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    n = order.numel()
    if world_size == 1:
        return order
    if even:
        total = shard_len(n, rank, world_size, True) * world_size
        if total > n:
            reps = -(-total // n)
            order = order.repeat(reps)[:total]
    return order[rank::world_size]


class ShardSampler(Sampler[int]):
    """DataLoader sampler: this rank's share of the epoch order, from sample ``skip`` on.

    ``set_epoch(e)`` picks the order of epoch ``e``; ``skip_samples(k)`` makes the next iteration start at the
    k-th sample of this rank's share (cleared after that iteration). ``len()`` is the full share length.
    """

    def __init__(self, n: int, *, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0,
                 even: bool = True):
        self.n, self.rank, self.world_size = n, rank, world_size
        self.shuffle, self.seed, self.even = shuffle, seed, even
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip_samples(self, k: int) -> None:
        self._skip = max(0, int(k))

    def indices(self) -> torch.Tensor:
        return shard(epoch_order(self.n, self.seed, self.epoch, self.shuffle), self.rank, self.world_size, self.even)

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        return iter(self.indices()[skip:].tolist())

    def __len__(self) -> int:
        return shard_len(self.n, self.rank, self.world_size, self.even)
