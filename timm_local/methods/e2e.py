"""End-to-end backprop through the local-learning code: one module, the ordinary CE loss."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from .base import LocalMethod, LocalObjective, LocalPlan


@dataclass
class E2E(LocalMethod):
    """The baseline every benchmark compares against: K = 1, CE on the logits."""

    name: ClassVar[str] = "e2e"

    def build_objectives(self, plan: LocalPlan) -> list[Optional[LocalObjective]]:
        if plan.num_modules != 1:
            raise ValueError(f"E2E trains the whole network with one loss, so num_local_modules must be 1 "
                             f"(got {plan.num_modules}); pick a local method such as 'dgl' or 'infopro' for K > 1")
        return super().build_objectives(plan)
