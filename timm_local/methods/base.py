"""The interface between the engine and a local-learning method.

A method only describes aux nets, losses and per-step hooks. It receives a :class:`LocalPlan`
(where the backbone is cut, feature shapes at every cut, the blocks themselves) and returns one
objective per local module: an ``nn.Module`` called as ``objective(h_out, ctx) -> loss``.
Objectives that keep momentum copies expose ``momentum_pairs()``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import torch
from torch import nn

from ..local.context import LocalContext
from ..local.layout import BackboneLayout, FeatureProbe


@dataclass(frozen=True)
class LocalPlan:
    """A backbone, where it is cut, and the feature shapes at every position."""

    layout: BackboneLayout
    cuts: tuple[int, ...]
    probe: FeatureProbe
    num_classes: int
    split_kind: str = "auto"  # 'paper', 'balanced', 'even', 'auto' or 'explicit'

    @property
    def num_modules(self) -> int:
        return len(self.cuts) + 1

    def blocks_of(self, k: int) -> range:
        """Indices of the blocks owned by module ``k``."""
        starts = (0, *self.cuts)
        ends = (*self.cuts, self.layout.num_blocks)
        return range(starts[k], ends[k])

    def output_shape(self, k: int) -> tuple[int, ...]:
        """Shape (without batch) of the output of module ``k`` < K - 1."""
        return self.probe.shapes[self.cuts[k]]

    def block_output_shape(self, j: int) -> tuple[int, ...]:
        return self.probe.shapes[j + 1]

    def next_block_index(self, k: int) -> int:
        """Index of the first block of module ``k + 1`` (MAN's B_next for boundary ``k``)."""
        return self.cuts[k]

    def stage_of_block(self, j: int) -> int:
        return self.layout.block_stages[j]


class LocalObjective(nn.Module):
    """Aux nets and loss of one local module: ``forward(h_out, ctx) -> scalar loss``."""

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module, float]]:
        """(momentum copy, source, decay m) triples that ``LocalNet.momentum_update`` applies."""
        return []


class BlockCopies(nn.Module):
    """Aux modules holding copies of backbone blocks that are meant to start equal to their sources.

    ``refresh_from_sources()`` re-copies them; ``LocalNet.load_state_dict`` calls it after loading
    backbone-only (e.g. pretrained) weights, so such copies mirror the loaded blocks, not the
    random initialisation they were cloned from.
    """

    def copied_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(copy, source) pairs whose copy should equal the source at initialisation."""
        return []

    @torch.no_grad()
    def refresh_from_sources(self) -> None:
        for clone, source in self.copied_pairs():
            clone.load_state_dict(source.state_dict())


class ClassifierObjective(LocalObjective):
    """The last module's end-to-end objective: CE(logits, y) with weight 1 (METHODS.md §2.1), label smoothing
    and soft targets as ``ctx`` holds them (:meth:`LocalContext.cross_entropy`)."""

    def forward(self, logits: torch.Tensor, ctx: LocalContext) -> torch.Tensor:
        return ctx.cross_entropy(logits)


@dataclass
class LocalMethod:
    """Base of every method's options. Subclasses are dataclasses whose fields are the kwargs.

    ``cascade_depth`` is how many consecutive modules one loss may span (1 = fully isolated);
    the engine keeps that many module inputs for re-evaluation.
    """

    name: ClassVar[str] = "e2e"

    @property
    def cascade_depth(self) -> int:
        return 1

    def build_objectives(self, plan: LocalPlan) -> list[Optional[LocalObjective]]:
        """One objective per module; the default trains only the last module's classifier."""
        return [None] * (plan.num_modules - 1) + [ClassifierObjective()]

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


def momentum_lerp_(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor], momentum: float) -> None:
    """θ_ema ← m·θ_ema + (1 − m)·θ_src, in place, for every pair (METHODS.md §5)."""
    if targets:
        torch._foreach_lerp_(list(targets), list(sources), 1.0 - momentum)
