"""Epoch bookkeeping shared by the loaders: ``set_epoch``, ``len``, and a resumable ``state_dict``.

Contract (both :class:`~timm_local.data.tensor_loader.TensorLoader` and
:class:`~timm_local.data.stream_loader.StreamLoader`):
- iterating yields ``(x, y)``: ``x`` float32 normalised images on the loader's device, ``y`` int64 labels there;
- the order of an epoch depends only on ``(seed, epoch)``; call ``set_epoch(e)`` before each epoch (as with
  ``DistributedSampler``), otherwise the same order repeats;
- ``len(loader)`` is the number of batches of a full epoch on this rank (``drop_last`` drops the partial one);
- ``state_dict()`` is ``{"epoch": e, "batch": b}`` with ``b`` the batches already handed out in epoch ``e``
  (the batch being processed counts). ``load_state_dict(state)`` makes the next iteration of epoch ``e``
  start at batch ``b``; a later ``set_epoch(e)`` with the same epoch keeps that resume point, another epoch
  drops it (``skip(b)`` is the same for the current epoch). So the usual loop resumes mid-epoch unchanged::

      loader.load_state_dict(ckpt["loader"])
      for epoch in range(ckpt["loader"]["epoch"], epochs):
          loader.set_epoch(epoch)
          for x, y in loader: ...
"""
from __future__ import annotations

from typing import Optional

__all__ = ["EpochLoader"]


class EpochLoader:
    """Base class: epoch, batch counter and resume point. Subclasses define ``num_samples`` and ``__iter__``."""

    def __init__(self, batch_size: int, drop_last: bool = False):
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.batch = 0
        self._resume: Optional[tuple[int, int]] = None

    @property
    def num_samples(self) -> int:  # this rank's samples per epoch
        raise NotImplementedError

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``'s order; keeps a pending resume point only if it is for this epoch."""
        self.epoch = int(epoch)
        if self._resume is not None and self._resume[0] != self.epoch:
            self._resume = None
        self.batch = self._resume[1] if self._resume else 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if batch < 0:
            raise ValueError(f"state batch must be >= 0, got {batch}")
        self._resume = (epoch, batch)
        self.set_epoch(epoch)

    def skip(self, batches: int) -> None:
        """Make the next iteration of the current epoch start at batch ``batches`` (skip the ones before)."""
        self.load_state_dict({"epoch": self.epoch, "batch": batches})

    def _start_batch(self) -> int:
        """First batch of the iteration now starting (consumes the resume point)."""
        start = self._resume[1] if self._resume and self._resume[0] == self.epoch else 0
        self._resume = None
        self.batch = min(start, len(self))
        return self.batch
