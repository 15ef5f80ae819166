"""One optimizer with a param group per local module, and the learning-rate schedules.

One optimizer (not one per module) because Accelerate's fp16 GradScaler is shared by every
prepared optimizer and updated on each ``step()``, which corrupts all but the first one
(ECOSYSTEM.md §4.3). For SGD/AdamW and gradient-isolated modules it equals per-module optimizers.
"""
from __future__ import annotations

import argparse
import math

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler

from ..local import LocalNet

WARMUP_START_LR = 0.01


def create_optimizer(model: LocalNet, args: argparse.Namespace) -> torch.optim.Optimizer:
    """timm's optimizer ``args.opt`` over ``model.local_param_groups()``.

    Weight decay applies to every trainable parameter, aux nets included, as in the papers
    (METHODS.md §7.1); momentum copies are not trainable and are not in any group.
    """
    return create_optimizer_v2(model.local_param_groups(), opt=args.opt, lr=args.lr,
                               weight_decay=args.weight_decay, momentum=args.momentum)


def infopro_cosine_lr(epoch: int, base_lr: float, epochs: int, warmup_epochs: int = 10,
                      warmup_start: float = WARMUP_START_LR) -> float:
    """The learning rate of 0-based ``epoch`` in the InfoPro/MAN/MLAAN CIFAR recipe (METHODS.md §7.1).

    With e = epoch + 1, E = epochs, W = warmup_epochs and cos(e) = 0.5·lr0·(1 + cos(π·e/E)):
    e ≤ W: lr = cos(e)·(e − 1)/W + warmup_start·(W + 1 − e)/W (a linear blend from 0.01 at e = 1);
    e > W: lr = cos(e). The papers use W = 10. Note that the last epoch (e = E) has lr = 0, as in
    the reference code.
    """
    e = epoch + 1
    cosine = 0.5 * base_lr * (1.0 + math.cos(math.pi * e / epochs))
    if e <= warmup_epochs:
        return cosine * (e - 1) / warmup_epochs + warmup_start * (warmup_epochs + 1 - e) / warmup_epochs
    return cosine


class InfoProCosineScheduler(Scheduler):
    """:func:`infopro_cosine_lr` for every param group, as a timm scheduler (``step(epoch)`` per epoch)."""

    def __init__(self, optimizer: torch.optim.Optimizer, epochs: int, warmup_epochs: int = 10,
                 warmup_start: float = WARMUP_START_LR):
        if epochs < 1 or warmup_epochs < 0:
            raise ValueError(f"epochs={epochs} must be >= 1 and warmup_epochs={warmup_epochs} >= 0")
        self.epochs, self.warmup_epochs, self.warmup_start = epochs, warmup_epochs, warmup_start
        super().__init__(optimizer, param_group_field="lr", t_in_epochs=True)
        self.step(0)

    def _get_lr(self, t: int) -> list[float]:
        return [infopro_cosine_lr(t, base, self.epochs, self.warmup_epochs, self.warmup_start)
                for base in self.base_values]


def create_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace) -> Scheduler:
    """``infopro_cosine`` (the papers' schedule), or one of timm's through ``create_scheduler_v2``.

    All are stepped once per epoch: ``scheduler.step(epoch)`` sets the lr of 0-based ``epoch``. The
    warm-up starts at min(``--warmup-lr``, ``--lr``), so a warm-up never raises the lr above ``--lr``
    (``--lr 0`` trains at 0); the papers' recipe (lr0 0.8, warm-up from 0.01) is unchanged.
    """
    warmup_start = min(args.warmup_lr, args.lr)
    if args.sched == "infopro_cosine":
        return InfoProCosineScheduler(optimizer, args.epochs, args.warmup_epochs, warmup_start)
    scheduler, _ = create_scheduler_v2(optimizer, sched=args.sched, num_epochs=args.epochs,
                                       warmup_epochs=args.warmup_epochs, warmup_lr=warmup_start,
                                       min_lr=args.min_lr)
    return scheduler
