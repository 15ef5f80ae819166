"""Greedy supervised layer-wise learning: a GAP + Linear classifier per local module, CE only.

InfoPro's help text: ``--aux_net_config 0c1f --local_loss_mode cross_entropy`` with λ_recon = 0
(METHODS.md §4.3).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .dgl import DGL


@dataclass
class Greedy(DGL):
    """Greedy SL options: ``aux_config`` defaults to '0c1f' (GAP → Linear)."""

    name: ClassVar[str] = "greedy"
    aux_config: str = "0c1f"
