"""MLAAN (Zhang et al., AAAI 2025): multilaminar local modules + leap augmented modules (METHODS.md §6).

Every loss after the first ``laminae - 1`` modules has two parts (a :class:`CascadeLoss`):

* own (independent path): the module's output h_i (input detached) → head → CE, weight ``wx`` (0.001);
* cascade: h_i with the graph of the last ``laminae`` modules, i − laminae + 1 .. i (``ctx.cascade``), then
  the leap chain (clones of deeper backbone blocks; the first clone is summed with its EMA twin as in
  MAN) → head → CE, weight ``wy`` (0.999).

So loss i trains modules i − laminae + 1 .. i. The last module's loss is
``wx · CE(logits) + wy · CE(cascaded logits)`` (the ImageNet code; ``final_loss='cascade'`` keeps
only the cascaded CE with weight 1, as the CIFAR code does, §9 B11). The engine runs each module once
per step and gives every block the BatchNorm updates the reference's re-evaluations make (§9 B13,
``local/cascade.py``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import torch
from torch import nn

from ..local.context import CascadeLoss, LocalContext
from .aux_factory import aux_family
from .aux_nets import AUX_CONFIGS
from .base import BlockCopies, LocalMethod, LocalObjective, LocalPlan
from .infopro import InfoProObjective, check_choice
from .man import MomentumBlockPair, check_momentum
from .schedules import interpolate, module_index_ratio, paper_module_count, stage_index_ratio


def _flat(stage_sizes: Sequence[int], chains: Sequence[Sequence[tuple[int, int]]]) -> tuple[tuple[int, ...], ...]:
    """[stage, block] positions (1-based stage) → flat block indices."""
    offsets = [sum(stage_sizes[:s]) for s in range(len(stage_sizes))]
    return tuple(tuple(offsets[s - 1] + b for s, b in chain) for chain in chains)


def _repeat(*groups: tuple[int, Sequence[tuple[int, int]]]) -> list[Sequence[tuple[int, int]]]:
    return [chain for count, chain in groups for _ in range(count)]


_R32, _R110 = (5, 5, 5), (18, 18, 18)
_R34, _R101 = (3, 4, 6, 3), (3, 4, 23, 3)
# Leap chains of the reference, one per module, keyed by (arch, K): CIFAR ``configAuxPlus_new.py``
# (METHODS.md §2.4) and ImageNet ``configAux_new.py`` (§2.5, one block per module).
LEAP_CHAINS: dict[tuple[str, int], tuple[tuple[int, ...], ...]] = {
    ("resnet32", 15): _flat(_R32, [
        [(2, 0), (3, 0), (3, 2), (3, 4)], [(2, 0), (3, 0), (3, 2), (3, 4)], [(2, 0), (3, 0), (3, 3), (3, 4)],
        [(2, 0), (3, 0), (3, 2), (3, 4)], [(2, 0), (3, 0), (3, 3), (3, 4)],
        *_repeat((5, [(3, 0), (3, 2), (3, 3), (3, 4)])),
        [(3, 1), (3, 2), (3, 4)], [(3, 2), (3, 3), (3, 4)], [(3, 3), (3, 4)], [(3, 4)]]),
    ("resnet32", 8): _flat(_R32, _repeat(
        (2, [(2, 0), (3, 0), (3, 2), (3, 4)]), (1, [(2, 0), (3, 0), (3, 3), (3, 4)]),
        (2, [(3, 0), (3, 2), (3, 3), (3, 4)]), (1, [(3, 2), (3, 3), (3, 4)]), (1, [(3, 3), (3, 4)]))),
    ("resnet110", 32): _flat(_R110, _repeat(
        (11, [(2, 0), (3, 0), (3, 2), (3, 17)]), (10, [(3, 0), (3, 2), (3, 3), (3, 17)]),
        (1, [(3, 0), (3, 3), (3, 4), (3, 17)]), (4, [(3, 8), (3, 17)]), (2, [(3, 14), (3, 17)]),
        (1, [(3, 15), (3, 17)]), (1, [(3, 16), (3, 17)]), (1, [(3, 17)]))),
    ("resnet110", 54): _flat(_R110, _repeat(
        (18, [(2, 0), (3, 0), (3, 2), (3, 17)]), (17, [(3, 0), (3, 2), (3, 3), (3, 17)]),
        (1, [(3, 0), (3, 3), (3, 4), (3, 17)]), (7, [(3, 8), (3, 17)]), (4, [(3, 14), (3, 17)]),
        (2, [(3, 15), (3, 17)]), (3, [(3, 16), (3, 17)]), (1, [(3, 17)]))),
    ("resnet34", 16): _flat(_R34, _repeat(
        (3, [(2, 0), (2, 1), (3, 0), (4, 0), (4, 2)]), (4, [(2, 1), (3, 0), (4, 0), (4, 2)]),
        (6, [(3, 1), (4, 0), (4, 1)]), (1, [(4, 1), (4, 1), (4, 2)]), (1, [(4, 1), (4, 2)]))),
    ("resnet101", 33): _flat(_R101, _repeat(
        (3, [(2, 0), (3, 0), (4, 0), (4, 2)]), (4, [(3, 0), (4, 0), (4, 1)]), (23, [(4, 0), (4, 1)]),
        (2, [(4, 1), (4, 2)]))),
}


def auto_leap_chain(plan: LocalPlan, k: int) -> tuple[int, ...]:
    """Our generalisation of the reference's tables for any backbone and split.

    From module k's output, clone the first block of every later stage, then the network's last
    block; from inside the last stage, clone the next block and the last one. The first clone
    always accepts module k's output shape (it is the first block of the following stage).
    """
    stages = plan.layout.block_stages
    last = plan.layout.num_blocks - 1
    next_block = plan.next_block_index(k)
    current_stage = stages[next_block - 1] if next_block > 0 else 0
    stage_starts = [j for j in range(next_block, last + 1) if j == 0 or stages[j - 1] != stages[j]]
    chain = [j for j in stage_starts if stages[j] > current_stage] or [next_block]
    if chain[-1] != last:
        chain.append(last)
    return tuple(chain)


def leap_chain(plan: LocalPlan, k: int) -> tuple[int, ...]:
    """The reference's chain when it published one for this backbone and split, else :func:`auto_leap_chain`."""
    table = LEAP_CHAINS.get((plan.layout.arch, plan.num_modules))
    if table is not None and plan.split_kind in ("paper", "auto") and k < len(table):
        return table[k]
    return auto_leap_chain(plan, k)


class LeapChain(BlockCopies):
    """z → (Aug_0(z) + EMA_0(z)) → Aug_1 → … : clones of the backbone blocks listed in ``chain``."""

    def __init__(self, plan: LocalPlan, chain: Sequence[int], momentum: float, clone_init: str,
                 update_momentum: bool):
        super().__init__()
        blocks = plan.layout.blocks
        self.first = MomentumBlockPair(blocks[chain[0]], momentum, clone_init, clone_init, plan.layout.reinit_block)
        rest = [copy.deepcopy(blocks[j]) for j in chain[1:]]
        if clone_init == "random":
            for block in rest:
                plan.layout.reinit_block(block)
        self.rest = nn.Sequential(*rest)
        self.update_momentum = update_momentum
        self.chain = tuple(chain)
        self.__dict__["rest_sources"] = [blocks[j] for j in chain[1:]] if clone_init == "copy" else []

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.rest(self.first(z))

    def momentum_pairs(self):
        return self.first.momentum_pairs() if self.update_momentum else []

    def copied_pairs(self):
        return list(zip(self.rest, self.rest_sources))

    def extra_repr(self) -> str:
        return f"chain={list(self.chain)}"


class MLAANObjective(LocalObjective):
    """own = wx · independent(h_k); cascade = wy · cascaded(chain(h_k through modules first..k))."""

    def __init__(self, index: int, first: int, independent: Optional[nn.Module], cascaded: nn.Module,
                 independent_weight: float, cascade_weight: float):
        super().__init__()
        self.index, self.first = index, first
        self.independent = independent
        self.cascaded = cascaded
        self.independent_weight, self.cascade_weight = independent_weight, cascade_weight

    def forward(self, h: torch.Tensor, ctx: LocalContext) -> CascadeLoss:
        cascade = self.cascade_weight * self.cascaded(ctx.cascade(self.index, h), ctx)
        own = self.independent_weight * self.independent(h, ctx) if self.independent is not None else None
        return CascadeLoss(own, cascade)

    def momentum_pairs(self):
        return self.cascaded.momentum_pairs()

    def extra_repr(self) -> str:
        return f"cascade=modules {self.first}..{self.index}, wx={self.independent_weight:g}, wy={self.cascade_weight:g}"


class MLAANFinalObjective(LocalObjective):
    """Last module: own = wx · CE(logits), cascade = wy · CE(logits through modules first..K−1); or the cascaded CE alone."""

    def __init__(self, index: int, first: int, independent_weight: Optional[float], cascade_weight: float):
        super().__init__()
        self.index, self.first = index, first
        self.independent_weight, self.cascade_weight = independent_weight, cascade_weight

    def forward(self, logits: torch.Tensor, ctx: LocalContext) -> CascadeLoss:
        if self.first == self.index:  # a cascade of one module is the module itself: one CE (K = 1 is E2E)
            weight = self.cascade_weight + (self.independent_weight or 0.0)
            return CascadeLoss(None, weight * ctx.cross_entropy(logits))
        cascaded = ctx.cascade(self.index, logits)
        cascade = self.cascade_weight * ctx.cross_entropy(cascaded)
        own = None
        if self.independent_weight is not None:
            own = self.independent_weight * ctx.cross_entropy(logits)
        return CascadeLoss(own, cascade)


@dataclass
class MLAAN(LocalMethod):
    """MLAAN options (METHODS.md §6, §9 B10–B13). Defaults follow the CIFAR main file where it is sound.

    Args:
        laminae: how many consecutive modules a cascaded loss spans (2 on CIFAR, 3 on ImageNet).
        independent_weight, cascade_weight: wx = 0.001, wy = 0.999.
        momentum: EMA decay of the first clone's twin (0.995).
        base: 'dgl' (GAP + Linear CE heads, ``resnetMLAAN.py``) or 'infopro' (InfoPro objective, decoder
            included, on both paths, ``resnetInfoProbin.py``).
        ema_update: 'all' (every twin each step, our default and the ImageNet code) or 'last' (only the
            last aux chain's twin, the CIFAR reference, §9 B10).
        final_loss: 'weighted' (wx·x + wy·y, default) or 'cascade' (CIFAR reference, §9 B11).
        clone_init: 'copy' (clones start as the backbone's initial blocks, CIFAR code) or 'random' (ImageNet code).
        aux_config, local_loss, recon_weights, task_weights, aux_widen, aux_feature_dim: the InfoPro
            objective used with ``base='infopro'`` (defaults as MAN's README).
        independent_head: with ``base='infopro'``, 'same' (the independent path uses ``aux_config`` and
            ``local_loss`` like the cascaded one; default) or 'reference' (``resnetInfoProbin.py``: the
            independent head is always '1c2f' with the contrastive loss on 128-d features, widen 1,
            whatever the cascaded path uses).
        weight_schedule: λ interpolation with ``base='infopro'``: 'stage' (the reference, r = stage of
            module k / (K − 2), clamped; default, as the README weights assume it) or 'module'.
    """

    name: ClassVar[str] = "mlaan"
    laminae: int = 2
    independent_weight: float = 0.001
    cascade_weight: float = 0.999
    momentum: float = 0.995
    base: str = "dgl"
    ema_update: str = "all"
    final_loss: str = "weighted"
    clone_init: str = "copy"
    aux_config: str = "1c2f"
    local_loss: str = "ce"
    recon_weights: tuple[float, float] = (5.0, 0.0)
    task_weights: tuple[float, float] = (0.5, 0.0)
    aux_widen: float = 1.0
    aux_feature_dim: int = 128
    weight_schedule: str = "stage"
    independent_head: str = "same"

    def __post_init__(self):
        if int(self.laminae) < 1:
            raise ValueError(f"laminae={self.laminae} must be >= 1 (2 on CIFAR, 3 on ImageNet)")
        check_choice("base", self.base, ("dgl", "infopro"))
        check_choice("ema_update", self.ema_update, ("all", "last"))
        check_choice("final_loss", self.final_loss, ("weighted", "cascade"))
        check_choice("clone_init", self.clone_init, ("copy", "random"))
        check_choice("aux_config", self.aux_config, AUX_CONFIGS)
        check_choice("local_loss", self.local_loss, ("ce", "contrast"))
        check_choice("weight_schedule", self.weight_schedule, ("module", "stage"))
        check_choice("independent_head", self.independent_head, ("same", "reference"))
        if self.independent_head == "reference" and self.base != "infopro":
            raise ValueError("independent_head='reference' is MLAAN + InfoPro's head (resnetInfoProbin.py): "
                             "use it with base='infopro'; base='dgl' uses the same light head on both paths")
        check_momentum(self.momentum)

    @property
    def cascade_depth(self) -> int:
        return int(self.laminae)

    def _path_objective(self, plan: LocalPlan, k: int, shape: tuple[int, ...], transform: Optional[nn.Module],
                        head: tuple[str, str, float, int]) -> InfoProObjective:
        """The loss of one path reading features of ``shape``: CE of the light head ('dgl': GAP + Linear
        on CIFAR), or InfoPro's objective ('infopro') with ``head`` = (aux_config, loss, widen, feature_dim)."""
        family = aux_family(plan)
        if self.base == "dgl":
            return InfoProObjective(family.linear_head(plan, shape, plan.num_classes), "ce", 1.0, transform=transform)
        config, loss, widen, feature_dim = head
        out = feature_dim if loss == "contrast" else plan.num_classes
        task_head = family.task_head(plan, shape, config, out, widen, feature_dim)
        if self.weight_schedule == "module":
            r = module_index_ratio(k, plan.num_modules)
        else:  # resnetInfoProbin.py: the stage of module k's own last block
            last_block = plan.next_block_index(k) - 1
            stage = plan.stage_of_block(last_block) if last_block >= 0 else 0
            r = stage_index_ratio(stage, paper_module_count(plan.num_modules, plan.layout.num_blocks))
        decoder = family.decoder(plan, shape, widen)
        return InfoProObjective(task_head, loss, interpolate(tuple(self.task_weights), r), decoder,
                                interpolate(tuple(self.recon_weights), r), transform)

    def _heads(self) -> tuple[tuple[str, str, float, int], tuple[str, str, float, int]]:
        """(independent, cascaded) head settings: the cascaded path's are the options; the independent path
        repeats them, or is the reference's default head ('1c2f', contrast, widen 1, 128-d)."""
        cascaded = (self.aux_config, self.local_loss, self.aux_widen, self.aux_feature_dim)
        return (("1c2f", "contrast", 1.0, 128) if self.independent_head == "reference" else cascaded), cascaded

    def build_objectives(self, plan: LocalPlan) -> list[Optional[LocalObjective]]:
        num_modules = plan.num_modules
        objectives: list[Optional[LocalObjective]] = []
        independent_head, cascaded_head = self._heads()
        for k in range(num_modules - 1):
            if k < self.laminae - 1:
                objectives.append(None)  # the reference's first modules have no loss of their own (§9 B12)
                continue
            chain = leap_chain(plan, k)
            update = self.ema_update == "all" or k == num_modules - 2
            transform = LeapChain(plan, chain, self.momentum, self.clone_init, update)
            objectives.append(MLAANObjective(
                index=k, first=max(0, k - self.laminae + 1),
                independent=self._path_objective(plan, k, plan.output_shape(k), None, independent_head),
                cascaded=self._path_objective(plan, k, plan.block_output_shape(chain[-1]), transform, cascaded_head),
                independent_weight=self.independent_weight, cascade_weight=self.cascade_weight))
        last = num_modules - 1
        weighted = self.final_loss == "weighted"
        objectives.append(MLAANFinalObjective(
            index=last, first=max(0, last - self.laminae + 1),
            independent_weight=self.independent_weight if weighted else None,
            cascade_weight=self.cascade_weight if weighted else 1.0))
        return objectives
