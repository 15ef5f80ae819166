"""Where each process sits in a pipeline of S stages × D data-parallel replicas (docs/PIPELINE.md §1).

World size W = S·D. Rank r is stage ``r // D``, replica ``r % D``: the D ranks of a stage are consecutive,
and replica d's chain of stages (d, D + d, 2D + d, ...) is one pipeline over data shard d. Micro-batches
travel along a chain (point-to-point); gradients are averaged only inside a stage's group of D ranks.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Optional

import torch.distributed as dist


@dataclass(frozen=True)
class ProcessLayout:
    """This process's place: ``stage`` of ``num_stages``, ``replica`` of ``replicas``, global ``rank``."""

    num_stages: int
    replicas: int
    rank: int

    @property
    def stage(self) -> int:
        return self.rank // self.replicas

    @property
    def replica(self) -> int:
        return self.rank % self.replicas

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.num_stages - 1

    def rank_of(self, stage: int, replica: Optional[int] = None) -> int:
        return stage * self.replicas + (self.replica if replica is None else replica)

    @property
    def prev_rank(self) -> Optional[int]:
        """The rank this one receives micro-batches from (same replica, previous stage), None on stage 0."""
        return None if self.is_first else self.rank_of(self.stage - 1)

    @property
    def next_rank(self) -> Optional[int]:
        return None if self.is_last else self.rank_of(self.stage + 1)

    def stage_ranks(self, stage: int) -> list[int]:
        return [self.rank_of(stage, d) for d in range(self.replicas)]

    @property
    def writer_rank(self) -> int:
        """The rank that evaluates last and writes the run folder: the last stage's first replica."""
        return self.rank_of(self.num_stages - 1, 0)


def process_layout(num_stages: int, world_size: int, rank: int) -> ProcessLayout:
    """The layout of ``rank``; the world size must be a multiple of the number of stages."""
    if world_size % num_stages:
        raise ValueError(f"--pipeline {num_stages} on {world_size} processes: the process count must be a multiple of "
                         f"the stage count (S stages × D replicas); launch {num_stages * max(1, world_size // num_stages)} "
                         f"or {num_stages * (world_size // num_stages + 1)} processes, or change --pipeline")
    return ProcessLayout(num_stages=num_stages, replicas=world_size // num_stages, rank=rank)


def stage_group(layout: ProcessLayout, timeout_s: float) -> Optional[dist.ProcessGroup]:
    """The process group of this rank's stage (its D replicas), None when D = 1.

    Every rank creates every stage's group, in stage order, as ``new_group`` requires.
    """
    if layout.replicas == 1:
        return None
    mine = None
    for s in range(layout.num_stages):
        group = dist.new_group(layout.stage_ranks(s), timeout=datetime.timedelta(seconds=timeout_s))
        if s == layout.stage:
            mine = group
    return mine
