"""MAN (Su et al., ECCV 2024): InfoPro whose aux nets see LB(h) + EMA(h) (METHODS.md §5).

For boundary k, EMA is a frozen momentum copy of B_next, the first block of module k + 1,
updated θ_EMA ← m·θ_EMA + (1 − m)·θ_B_next once per step; LB ("learnable bias") is a trainable block
of the same architecture. Both run in train mode on h_k and their outputs are summed, so the aux
nets are built for B_next's output shape. Gradients reach module k through both branches.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import torch
from torch import nn

from .base import BlockCopies, LocalPlan
from .dgl import DGL
from .infopro import InfoPro, check_choice


class MomentumBlockPair(BlockCopies):
    """u = learnable(h) + momentum(h), where ``momentum`` is an EMA copy of ``source``.

    With ``mix='learned'`` (MAN++): u = s·learnable(h) + (2 − s)·momentum(h), s a trainable scalar
    starting at 1 (so the pair starts as MAN's sum).

    Both are real copies of ``source`` (no shared storage). ``momentum`` is frozen
    (``requires_grad=False``); ``source`` is only referenced, never registered here, so its
    parameters stay owned by the module they belong to.
    """

    def __init__(self, source: nn.Module, momentum: float, learnable_init: str, momentum_init: str,
                 reinit: Callable[[nn.Module], None], mix: str = "sum"):
        super().__init__()
        self.learnable = copy.deepcopy(source)
        self.momentum = copy.deepcopy(source)
        if learnable_init == "random":
            reinit(self.learnable)
        if momentum_init == "random":
            reinit(self.momentum)
        self.momentum.requires_grad_(False)
        self.mix = nn.Parameter(torch.ones(())) if mix == "learned" else None
        self.__dict__["source"] = source
        self.decay = float(momentum)
        self.copies = tuple(name for name, init in (("learnable", learnable_init), ("momentum", momentum_init))
                            if init == "copy")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.mix is None:
            return self.learnable(h) + self.momentum(h)
        return self.mix * self.learnable(h) + (2.0 - self.mix) * self.momentum(h)

    def momentum_pairs(self):
        return [(self.momentum, self.source, self.decay)]

    def copied_pairs(self):
        clones = {"learnable": self.learnable, "momentum": self.momentum}
        return [(clones[name], self.source) for name in self.copies]

    def extra_repr(self) -> str:
        return f"decay={self.decay:g}"


class MomentumBlocks(nn.Module):
    """MAN++'s aux trunk: the momentum pair of B_next, then trainable copies of the blocks after it."""

    def __init__(self, pair: MomentumBlockPair, extra: Sequence[nn.Module]):
        super().__init__()
        self.pair = pair
        self.extra = nn.Sequential(*extra)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.extra(self.pair(h))

    def momentum_pairs(self):
        return self.pair.momentum_pairs()


def check_momentum(momentum: float) -> None:
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum={momentum} must be in [0, 1] (EMA decay; the papers use 0.995)")


@dataclass
class MAN(InfoPro):
    """MAN options. Defaults follow MAN's README: CE, '2c2f' heads, (ixx_1, ixy_1, ixx_2, ixy_2) = (5, 0.5, 0, 0).

    Args:
        momentum: EMA decay m (0.995).
        base: 'infopro' (decoder + head) or 'dgl' (head only, CE weight 1); the paper reports both.
        ema_init: 'copy' (EMA starts equal to B_next, our default) or 'random' (the reference, §9 B5).
        weight_schedule: 'stage' (MAN's code, r = stage of B_next / (K − 2), clamped; default) or 'module'
            (InfoPro's rule). MAN's README weights (5, 0.5) → (0, 0) assume the stage rule, which keeps r
            ≤ 3 / (K − 2); under the module-index rule they would give the last aux net weight 0, so
            that module would never train (§9 B6 recommends the module rule; we keep MAN's for MAN).
        mix: 'sum' (MAN: LB(h) + EMA(h)) or 'learned' (MAN++: s·LB(h) + (2 − s)·EMA(h), s trainable, from 1).
        extra_blocks: trainable copies (initialised like LB) of the blocks that follow B_next, run after the
            pair and before the head (MAN++ on ViTs uses one; the last block repeats at the network's end).
    """

    name: ClassVar[str] = "man"
    aux_config: str = "2c2f"
    local_loss: str = "ce"
    recon_weights: tuple[float, float] = (5.0, 0.0)
    task_weights: tuple[float, float] = (0.5, 0.0)
    momentum: float = 0.995
    base: str = "infopro"
    ema_init: str = "copy"
    weight_schedule: str = "stage"
    mix: str = "sum"
    extra_blocks: int = 0

    def __post_init__(self):
        super().__post_init__()
        check_choice("base", self.base, ("infopro", "dgl"))
        check_choice("ema_init", self.ema_init, ("copy", "random"))
        check_choice("mix", self.mix, ("sum", "learned"))
        check_momentum(self.momentum)
        if int(self.extra_blocks) < 0:
            raise ValueError(f"extra_blocks={self.extra_blocks} must be >= 0 (MAN++ on ViTs uses 1)")

    @property
    def use_decoder(self) -> bool:
        return self.base == "infopro"

    def weights(self, plan: LocalPlan, k: int) -> tuple[float, float]:
        return super().weights(plan, k) if self.base == "infopro" else DGL.weights(self, plan, k)

    def _extra_block_indices(self, plan: LocalPlan, k: int) -> list[int]:
        last = plan.layout.num_blocks - 1
        return [min(plan.next_block_index(k) + 1 + i, last) for i in range(int(self.extra_blocks))]

    def aux_input_shape(self, plan: LocalPlan, k: int) -> tuple[int, ...]:
        return plan.block_output_shape(max([plan.next_block_index(k), *self._extra_block_indices(plan, k)]))

    def aux_transform(self, plan: LocalPlan, k: int) -> nn.Module:
        blocks = plan.layout.blocks
        pair = MomentumBlockPair(blocks[plan.next_block_index(k)], self.momentum, learnable_init="random",
                                 momentum_init=self.ema_init, reinit=plan.layout.reinit_block, mix=self.mix)
        if not self.extra_blocks:
            return pair
        extra = [copy.deepcopy(blocks[j]) for j in self._extra_block_indices(plan, k)]
        for block in extra:
            plan.layout.reinit_block(block)
        return MomentumBlocks(pair, extra)
