"""Where to cut a backbone's blocks into K gradient-isolated local modules (METHODS.md §2).

A split is written as ``cuts``: the index of the first block of each module after the first, a
strictly increasing tuple of K - 1 integers in [0, num_blocks - 1]. Module 0 always owns the stem;
``cuts[0] == 0`` makes module 0 the stem alone (InfoPro's ResNet-32 K=16 table). Module k owns
blocks ``cuts[k-1] .. cuts[k] - 1`` and the last module owns the rest plus the head.

The automatic split minimises the step's *measured* activation peak. During the interleaved step
(``LocalNet.local_step``) module k's forward, aux nets and backward run while no other module holds
a graph, so the peak is max_k of what module k keeps for backward; for methods whose losses span
modules (MLAAN, ``cascade_depth`` L > 1) module k − 1's graph is still held while module k trains,
so the peak is max_k of held(k − 1) + module(k) (for L > 2 the split still balances these pairs; the
further held modules are not modelled). The costs are measured once per model
(:func:`measure_module_costs`): the bytes autograd saves in every block run in sequence, the feature
held at every possible boundary, and the method's own aux nets built and run at every possible boundary.
"""
from __future__ import annotations

import numbers
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from ..methods.base import LocalMethod, LocalPlan
from .context import LocalContext
from .layout import BackboneLayout, FeatureProbe

SplitSpec = Union[None, str, Sequence[int]]


def resolve_split(layout: BackboneLayout, num_local_modules: int | None, split: SplitSpec,
                  probe: FeatureProbe, costs: Optional[Callable[[], "ModuleCosts"]] = None
                  ) -> tuple[tuple[int, ...], str]:
    """Turn the user's ``num_local_modules`` / ``split`` into ``(cuts, kind)``.

    ``kind`` says where the cuts came from: 'paper' (a published table), 'balanced' (a published
    memory-balanced table, or measured balance), 'auto' (measured balance for a K without a table),
    'even' or 'explicit'.

    * ``split=None``: the paper's table for this K when the backbone has one, else
      :func:`balanced_cuts` on measured memory.
    * ``split="balanced"``: the memory-balanced table (InfoPro*) when one exists, else
      :func:`balanced_cuts` on measured memory (any K).
    * ``split="measured"``: :func:`balanced_cuts` on measured memory even where a table exists.
    * ``split="even"``: equal block counts (the remainder goes to the earliest modules).
    * ``split=[b_1, ..., b_{K-1}]``: explicit cuts (first block index of modules 1..K-1).

    ``costs`` returns the measured :class:`ModuleCosts` (called only when a measured split is
    needed); without it the balance uses ``probe``'s per-block bytes alone.
    """
    n = layout.num_blocks
    if num_local_modules is not None:
        num_local_modules = _integer(num_local_modules, "num_local_modules", "the number of local modules, e.g. "
                                     "num_local_modules=4")
    if split is not None and not isinstance(split, str):
        cuts = tuple(_integer(c, "split", "block indices, e.g. split=[5, 10]") for c in split)
        if num_local_modules is not None and num_local_modules != len(cuts) + 1:
            raise ValueError(f"split lists {len(cuts)} cuts, which makes {len(cuts) + 1} local modules, "
                             f"but num_local_modules={num_local_modules}; drop one of the two or make them agree")
        validate_cuts(cuts, n)
        return cuts, "explicit"
    k = 1 if num_local_modules is None else num_local_modules
    paper = layout.paper_splits.get("paper", {})
    stem_only_table = k == n + 1 and k in paper and split in (None, "paper")
    if k < 1 or (k > n and not stem_only_table):
        raise ValueError(f"num_local_modules={k} is not possible for a backbone with {n} blocks: use "
                         f"1 <= K <= {n} (K = {n} puts one block in each module), or an explicit split "
                         f"such as [0, 1, ..., {n - 1}] to give the stem a module of its own")

    def measured() -> tuple[int, ...]:
        if k == 1:
            return ()
        if k == n:  # one block per module: the only split, nothing to measure
            return tuple(range(1, n))
        return balanced_cuts(costs() if costs is not None else probe, k)

    if split in (None, "paper"):
        if k in paper:
            return tuple(paper[k]), "paper"
        if split == "paper":
            raise ValueError(f"no published split for K={k} on this backbone (tables exist for K in "
                             f"{sorted(paper)}); use split=None for the automatic split")
        return measured(), "auto"
    if split == "balanced":
        table = layout.paper_splits.get("balanced", {})
        return (tuple(table[k]) if k in table else measured()), "balanced"
    if split == "measured":
        return measured(), "balanced"
    if split == "even":
        return even_cuts(n, k), "even"
    raise ValueError(f"unknown split {split!r}: use None, 'paper', 'balanced', 'measured', 'even' or a list of "
                     f"block indices where modules 1..K-1 start")


def _integer(value, key: str, expected: str) -> int:
    """``value`` as an int; ValueError naming ``key`` and what it takes unless ``value`` is an integer.

    Floats are refused too (``int(2.5)`` would silently build 2 modules); ``bool`` is not a count.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{key} takes integers ({expected}), got {value!r} of type {type(value).__name__}")
    return int(value)


def validate_cuts(cuts: Sequence[int], num_blocks: int) -> None:
    """Raise ValueError unless ``cuts`` is strictly increasing inside [0, num_blocks - 1]."""
    if any(b <= a for a, b in zip(cuts, cuts[1:])):
        raise ValueError(f"split {list(cuts)} is not strictly increasing: list the index of the first "
                         f"block of each local module after the first, in order, e.g. [5, 10]")
    if cuts and (cuts[0] < 0 or cuts[-1] > num_blocks - 1):
        raise ValueError(f"split {list(cuts)} has a block index outside [0, {num_blocks - 1}]: the backbone "
                         f"has {num_blocks} blocks and the last module needs at least one")


def even_cuts(num_blocks: int, k: int) -> tuple[int, ...]:
    """Equal block counts per module; the first ``num_blocks % k`` modules get one block more."""
    base, extra = divmod(num_blocks, k)
    cuts, start = [], 0
    for i in range(k - 1):
        start += base + (1 if i < extra else 0)
        cuts.append(start)
    return tuple(cuts)


@dataclass(frozen=True)
class ModuleCosts:
    """Bytes per sample that a local module keeps alive for backward, by the positions it starts and ends at.

    Positions: 0 is the stem output, p is the output of block p - 1, n = num_blocks the last one.

    Attributes:
        stem_bytes, block_bytes: saved-for-backward storages first saved by the stem / block j when the
            stem and blocks run in sequence (a storage saved by two blocks counts in the first).
        feature_bytes: the feature at every position (n + 1 entries).
        saved_by_producer: whether the block producing feature p saves it itself (a ResNet block's last
            ReLU does; a ViT block's residual add does not, so its next block saves it).
        aux_bytes: what the method's aux objective saves when a module ends at position p (its input
            excluded); entries 0 and n are 0 (the last module's head is part of the backbone).
        first_module_aux: whether the first module has an aux objective (MLAAN's has none).
        cascade_depth: the method's L: with L > 1 a step holds two consecutive modules' graphs.
    """

    stem_bytes: int
    block_bytes: tuple[int, ...]
    feature_bytes: tuple[int, ...]
    saved_by_producer: tuple[bool, ...]
    aux_bytes: tuple[int, ...]
    first_module_aux: bool = True
    cascade_depth: int = 1

    @classmethod
    def from_probe(cls, probe: FeatureProbe) -> "ModuleCosts":
        """Per-block bytes of :func:`~timm_local.local.layout.probe_features` alone (no aux nets, no boundaries)."""
        n = len(probe.block_bytes)
        return cls(probe.stem_bytes, tuple(probe.block_bytes), (0,) * (n + 1), (True,) * (n + 1), (0,) * (n + 1))

    @property
    def num_blocks(self) -> int:
        return len(self.block_bytes)

    def module_bytes(self, start: int, end: int) -> int:
        """Peak bytes per sample of a module owning blocks ``start .. end - 1`` (the stem too when ``start == 0``).

        = its input (held by the engine; already in the previous block's bytes only when that block
        saved it) + the bytes its blocks save + its output when no block of it saved it + its aux nets.
        """
        total = self.held_bytes(start, end)
        if end < self.num_blocks and (start > 0 or self.first_module_aux):
            total += self.aux_bytes[end]
        return total

    def held_bytes(self, start: int, end: int) -> int:
        """:meth:`module_bytes` without the aux nets: what the module's own graph holds, which a cascade method
        keeps while the next module trains (its aux graph is freed before that)."""
        total = sum(self.block_bytes[start:end])
        total += self.stem_bytes if start == 0 else self.feature_bytes[start] * self.saved_by_producer[start]
        if end < self.num_blocks:
            total += self.feature_bytes[end] * (not self.saved_by_producer[end])
        return total


def balanced_cuts(costs: Union[ModuleCosts, FeatureProbe], k: int) -> tuple[int, ...]:
    """Contiguous cuts minimising the largest :meth:`ModuleCosts.module_bytes` (the step's activation peak).

    Two dynamic programmes over the block list: the first finds the smallest achievable peak
    M* = min over splits of max_k cost_k (minimax linear partition); the second, among splits whose
    every module costs at most M*, minimises sum_k cost_k², which spreads the modules that do not
    set the peak evenly instead of leaving them arbitrary. Every module gets at least one block.
    A :class:`FeatureProbe` balances its per-block bytes alone.
    """
    if isinstance(costs, FeatureProbe):
        costs = ModuleCosts.from_probe(costs)
    n = costs.num_blocks
    cost = [[costs.module_bytes(i, j) if i < j else 0 for j in range(n + 1)] for i in range(n + 1)]
    if costs.cascade_depth > 1 and k > 1:
        held = [[costs.held_bytes(i, j) if i < j else 0 for j in range(n + 1)] for i in range(n + 1)]
        return _pair_partition(cost, held, k)
    peak, _ = _partition(cost, k, max)
    _, cuts = _partition(cost, k, lambda done, c: done + c * c if c <= peak else float("inf"))
    return cuts


def _pair_partition(cost: list[list[int]], held: list[list[int]], k: int) -> tuple[int, ...]:
    """Cuts minimising max_k (held(k − 1) + cost(k)) over ``k`` non-empty runs (module 0: cost(0) alone).

    As :func:`balanced_cuts`, two passes of one dynamic programme: the smallest achievable peak P*, then,
    among splits whose every pair is at most P*, the smallest Σ_k cost_k² (without it, ties would leave
    one-block modules between large ones).
    """
    peak, _ = _pairs(cost, held, k, lambda done, pair, run: max(done, pair))
    _, cuts = _pairs(cost, held, k, lambda done, pair, run: done + run * run if pair <= peak else float("inf"))
    return cuts


def _pairs(cost: list[list[int]], held: list[list[int]], k: int,
           combine: Callable[[float, int, int], float]) -> tuple[float, tuple[int, ...]]:
    """best[m][i][j]: the optimum over m modules covering blocks 0..j−1 whose last module is i..j−1,
    best[1][0][j] = combine(0, cost[0][j], cost[0][j]) and
    best[m][i][j] = min over h < i of combine(best[m−1][h][i], held[h][i] + cost[i][j], cost[i][j]).
    ``combine`` must be non-decreasing in its first argument. O(k·n³). Returns the optimum and its cuts.
    """
    n = len(cost) - 1
    inf = float("inf")
    best = [[[inf] * (n + 1) for _ in range(n + 1)] for _ in range(k + 1)]
    back = [[[0] * (n + 1) for _ in range(n + 1)] for _ in range(k + 1)]
    for j in range(1, n + 1):
        best[1][0][j] = combine(0, cost[0][j], cost[0][j])
    for m in range(2, k + 1):
        for i in range(m - 1, n):
            previous = [(best[m - 1][h][i], held[h][i], h) for h in range(m - 2, i) if best[m - 1][h][i] < inf]
            for j in range(i + 1, n + 1):
                for value, kept, h in previous:
                    candidate = combine(value, kept + cost[i][j], cost[i][j])
                    if candidate < best[m][i][j]:
                        best[m][i][j], back[m][i][j] = candidate, h
    i = min(range(n), key=lambda i: best[k][i][n])
    value, cuts, j = best[k][i][n], [], n
    for m in range(k, 1, -1):
        cuts.append(i)
        i, j = back[m][i][j], i
    return value, tuple(reversed(cuts))


def _partition(cost: list[list[int]], k: int, combine: Callable[[float, int], float]) -> tuple[float, tuple[int, ...]]:
    """Split positions 0..n into ``k`` non-empty runs minimising ``combine`` folded over the runs' ``cost[i][j]``.

    ``combine(value_so_far, run_cost)`` must be non-decreasing in both arguments (max, or a sum).
    Returns the optimal value and the cuts; ties keep the latest start for the last run.
    """
    n = len(cost) - 1
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(k + 1)]  # best[m][j]: runs 0..j-1 split into m modules
    start = [[0] * (n + 1) for _ in range(k + 1)]   # start of the m-th module in that optimum
    best[0][0] = 0
    for m in range(1, k + 1):
        for j in range(m, n + 1):
            for i in range(m - 1, j):
                value = combine(best[m - 1][i], cost[i][j])
                if value <= best[m][j]:
                    best[m][j], start[m][j] = value, i
    cuts, j = [], n
    for m in range(k, 1, -1):
        j = start[m][j]
        cuts.append(j)
    return best[k][n], tuple(reversed(cuts))

# ---------------------------------------------------------------------------------- measuring
class _SavedStorages:
    """``saved_tensors_hooks`` pack hook summing the bytes of each storage the first time autograd saves it."""

    def __init__(self, excluded: Sequence[torch.Tensor] = ()):
        self.seen = {t.untyped_storage().data_ptr() for t in excluded}
        self.nbytes = 0

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.seen:
            self.seen.add(ptr)
            self.nbytes += t.untyped_storage().nbytes()
        # t.detach(), not t: the storage stays alive while the graph does (so pointers stay unique), but a
        # saved output that holds its own grad_fn would be a reference cycle through C++ that gc never frees
        return t.detach()

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self, lambda t: t)


@contextmanager
def _eval_mode(modules: Sequence[nn.Module]):
    """Modules in eval mode (BatchNorm running statistics untouched), restored afterwards."""
    modes = [(m, m.training) for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in modes:
            m.train(mode)


def measure_module_costs(layout: BackboneLayout, method: LocalMethod, probe: FeatureProbe, num_classes: int,
                         mean: Sequence[float], std: Sequence[float], batch_size: int = 2) -> ModuleCosts:
    """Measure :class:`ModuleCosts` by running the backbone and the method's aux nets once on zeros.

    The stem and blocks run in sequence under ``saved_tensors_hooks`` (parameters and buffers
    excluded); then, for every boundary p, the objective ``method`` builds for a module ending at p
    (from a two-module plan cut at p) runs on the feature there; boundaries alike in feature shapes
    and stages on both sides are measured once. Objectives a method leaves out (MLAAN's first
    module) cost 0, and MLAAN's re-evaluation of earlier modules is not modelled.
    Everything runs in eval mode on the backbone's device, with the RNG state restored afterwards
    (building the aux nets draws their initial weights). Bytes are per sample.
    """
    modules = [layout.stem, *layout.blocks]
    param = next(layout.stem.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    if device.type == "meta":
        raise ValueError("a measured split runs the backbone to measure its memory, which device='meta' cannot: pass "
                         "split='even' or explicit cuts (split=[...]), or a K with a published table")
    weights = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    image = torch.zeros(batch_size, *layout.input_size, device=device, dtype=dtype)
    counter = _SavedStorages(weights)
    chain_bytes, features, saved_by_producer = [], [], []
    with torch.enable_grad(), _eval_mode(modules), counter.hooks():
        h = image.requires_grad_(True)
        for m in modules:
            before, seen_before = counter.nbytes, set(counter.seen)
            h = m(h)
            ptr = h.untyped_storage().data_ptr()
            chain_bytes.append((counter.nbytes - before) // batch_size)
            features.append(h)
            saved_by_producer.append(ptr in counter.seen and ptr not in seen_before)
    n = layout.num_blocks
    aux = [0] * (n + 1)
    first_module_aux = True
    if num_classes > 0:
        ctx = LocalContext(image=image.detach(), target=torch.zeros(batch_size, dtype=torch.long, device=device),
                           mean=mean, std=std)
        measured: dict[tuple, int] = {}
        with torch.random.fork_rng(devices=[]):
            for p in range(1, n):
                key = (p == 1, probe.shapes[p], probe.shapes[p + 1], layout.block_stages[p - 1],
                       layout.block_stages[p])  # p = 1: only a first module ends there (see _aux_bytes)
                if key not in measured:
                    measured[key] = _aux_bytes(layout, method, probe, num_classes, p, features[p], ctx)
                aux[p] = measured[key]
            first_module_aux = _objective_ending_at(layout, method, probe, num_classes, 1, first=True) is not None
    return ModuleCosts(stem_bytes=chain_bytes[0], block_bytes=tuple(chain_bytes[1:]),
                       feature_bytes=tuple(f.numel() * f.element_size() // batch_size for f in features),
                       saved_by_producer=tuple(saved_by_producer), aux_bytes=tuple(aux),
                       first_module_aux=first_module_aux, cascade_depth=method.cascade_depth)


def _objective_ending_at(layout: BackboneLayout, method: LocalMethod, probe: FeatureProbe, num_classes: int,
                         p: int, first: bool) -> Optional[nn.Module]:
    """The objective ``method`` builds for a module ending at position ``p``: the first module of a plan cut at
    p if ``first``, else the second module of a plan cut at p − 1 and p."""
    cuts = (p,) if first else (p - 1, p)
    plan = LocalPlan(layout=layout, cuts=cuts, probe=probe, num_classes=num_classes, split_kind="balanced")
    return method.build_objectives(plan)[0 if first else 1]


def _aux_bytes(layout: BackboneLayout, method: LocalMethod, probe: FeatureProbe, num_classes: int, p: int,
               feature: torch.Tensor, ctx: LocalContext) -> int:
    """Bytes per sample the objective of a module ending at position ``p`` saves, its input excluded.

    Measured on a module that is not the first where the method leaves the first one without an objective
    (MLAAN): every later module ending at p has one.
    """
    objective = _objective_ending_at(layout, method, probe, num_classes, p, first=True)
    if objective is None and p >= 2:
        objective = _objective_ending_at(layout, method, probe, num_classes, p, first=False)
    if objective is None:
        return 0
    objective.to(device=feature.device, dtype=feature.dtype)
    h = feature.detach().requires_grad_(True)
    counter = _SavedStorages([*objective.parameters(), *objective.buffers(), h, ctx.image])
    with torch.enable_grad(), _eval_mode([objective]), counter.hooks():
        objective(h, ctx)
    return counter.nbytes // h.shape[0]
