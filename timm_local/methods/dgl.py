"""DGL (Belilovsky et al., ICML 2020): each local module trained by its own aux classifier with CE.

L_k = CE(Head_k(h_k), y), weight 1, no reconstruction (METHODS.md §4.3: MLAAN's ``resnetDGL.py``,
which is InfoPro's model with the decoder removed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import LocalPlan
from .infopro import InfoPro


@dataclass
class DGL(InfoPro):
    """DGL options: ``aux_config`` (default '1c2f', InfoPro's head), ``local_loss`` ('ce' or 'contrast')."""

    name: ClassVar[str] = "dgl"
    local_loss: str = "ce"
    use_decoder: ClassVar[bool] = False

    def weights(self, plan: LocalPlan, k: int) -> tuple[float, float]:
        return 0.0, 1.0
