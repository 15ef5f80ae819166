"""InfoPro (Wang et al., ICLR 2021): reconstruction + task loss on every local module's output.

L_k = λ_recon(k) · BCE(Dec_k(h_k), x01) + λ_task(k) · L_xy(Head_k(h_k), y)   (METHODS.md §4.1)

with λ interpolated linearly over the module index from the first aux net to the last one
(``recon_weights=(ixx_1, ixx_2)``, ``task_weights=(ixy_1, ixy_2)`` in the reference's names).
The same objective, with the decoder dropped, is DGL's and greedy SL's (see ``dgl.py``,
``greedy.py``); MAN feeds it a momentum-block transform of h_k (``man.py``).
"""
from __future__ import annotations

import warnings

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import nn

from ..local.context import LocalContext
from .aux_factory import aux_family
from .aux_nets import AUX_CONFIGS
from .base import ClassifierObjective, LocalMethod, LocalObjective, LocalPlan
from .losses import reconstruction_loss, task_loss
from .schedules import interpolate, module_index_ratio, paper_module_count, stage_index_ratio

# (ixx_1, ixy_1, ixx_2, ixy_2) shipped with the InfoPro code, by (dataset, arch, split kind) and K
# (METHODS.md §7.4). Keys missing from a row fall back to the row's nearest K (ties: larger K).
INFOPRO_WEIGHTS: dict[tuple[str, str, str], dict[int, tuple[float, float, float, float]]] = {
    ("cifar10", "resnet32", "paper"): {2: (5, 1, 0, 0), 4: (6, 0, 1, 2), 8: (5, 0, 0, 2), 16: (5, 0.05, 0.2, 0.5)},
    ("cifar10", "resnet110", "paper"): {2: (5, 0.5, 0, 0), 4: (1, 0, 0, 1), 8: (5, 0, 0, 1), 16: (5, 0, 0.5, 1)},
    ("cifar10", "resnet110", "balanced"): {2: (5, 0.1, 0, 0), 3: (5, 0, 5, 0.1), 4: (5, 0, 5, 0.1)},
    ("stl10", "resnet110", "paper"): {2: (10, 1, 0, 0), 4: (20, 0.2, 5, 2), 8: (20, 0.2, 5, 1), 16: (20, 0.5, 10, 0.1)},
    ("stl10", "resnet110", "balanced"): {2: (20, 1, 0, 0), 3: (20, 0.5, 5, 2), 4: (20, 0.5, 10, 1)},
    ("svhn", "resnet110", "paper"): {2: (1, 0.1, 0, 0), 4: (5, 0, 0.5, 1), 8: (5, 0, 0.5, 2), 16: (5, 0.2, 0.5, 1)},
}
# ImageNet InfoPro uses fixed weights 5 (reconstruction) / 0.75 (task) for its single aux net (§4.1).
FALLBACK_WEIGHTS = (5.0, 0.75, 5.0, 0.75)


def published_weights(dataset: str, arch: str, split_kind: str, num_modules: int) -> tuple[float, ...]:
    """The reference's (ixx_1, ixy_1, ixx_2, ixy_2) for this setting, or the nearest K of the same row.

    Rows are tried in order: (dataset, arch, split kind), (dataset, arch, 'paper'),
    ('cifar10', arch, split kind), ('cifar10', arch, 'paper'); with none, ImageNet's 5 / 0.75.
    """
    kind = "balanced" if split_kind == "balanced" else "paper"
    for key in ((dataset, arch, kind), (dataset, arch, "paper"), ("cifar10", arch, kind), ("cifar10", arch, "paper")):
        row = INFOPRO_WEIGHTS.get(key)
        if row:
            nearest = min(row, key=lambda k: (abs(k - num_modules), -k))
            return row[nearest]
    return FALLBACK_WEIGHTS


class InfoProObjective(LocalObjective):
    """λ_recon · BCE(Dec(u), x01) + λ_task · L_xy(Head(u), y) with u = transform(h) (identity by default).

    ``decoder=None`` drops the reconstruction term (DGL, greedy SL).
    """

    def __init__(self, head: nn.Module, loss_kind: str, task_weight: float,
                 decoder: Optional[nn.Module] = None, recon_weight: float = 0.0,
                 transform: Optional[nn.Module] = None):
        super().__init__()
        self.transform = transform
        self.decoder = decoder
        self.head = head
        self.loss_kind = loss_kind
        self.recon_weight = float(recon_weight)
        self.task_weight = float(task_weight)

    def forward(self, h: torch.Tensor, ctx: LocalContext) -> torch.Tensor:
        u = self.transform(h) if self.transform is not None else h
        loss = self.task_weight * task_loss(self.head(u), ctx, self.loss_kind)
        if self.decoder is not None:
            loss = loss + self.recon_weight * reconstruction_loss(self.decoder(u), ctx.image01())
        return loss

    def momentum_pairs(self):
        return self.transform.momentum_pairs() if self.transform is not None else []

    def extra_repr(self) -> str:
        return f"loss={self.loss_kind}, recon_weight={self.recon_weight:g}, task_weight={self.task_weight:g}"


def check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported: choose one of {', '.join(map(repr, choices))}")


@dataclass
class InfoPro(LocalMethod):
    """InfoPro options (METHODS.md §3, §4.1, §7.4). Defaults are the paper's CIFAR commands.

    Args:
        aux_config: aux head layout ('1c2f' in every InfoPro command).
        local_loss: 'contrast' (SupCon, "InfoPro (Contrast)") or 'ce' ("InfoPro (Softmax)").
        recon_weights: (ixx_1, ixx_2), reconstruction weight of the first and of the last aux net.
        task_weights: (ixy_1, ixy_2), the same for L_xy. ``None`` takes the published values for
            this dataset, backbone, split and K (:func:`published_weights`).
        weight_schedule: 'module' (InfoPro: r = k / (K − 2)) or 'stage' (MAN's r = stage / (K − 2), clamped).
        aux_widen, aux_feature_dim: the reference's ``--aux_net_widen`` (1) and ``--aux_net_feature_dim`` (128).
        dataset: which published λ row to use when the weights are not given.
        allow_untrained_modules: an aux net whose weights are both 0 leaves its module untrained, which is an
            error at construction; True makes it a warning (memory and speed benchmarks of such a split).
    """

    name: ClassVar[str] = "infopro"
    aux_config: str = "1c2f"
    local_loss: str = "contrast"
    recon_weights: Optional[tuple[float, float]] = None
    task_weights: Optional[tuple[float, float]] = None
    weight_schedule: str = "module"
    aux_widen: float = 1.0
    aux_feature_dim: int = 128
    dataset: str = "cifar10"
    allow_untrained_modules: bool = False
    use_decoder: ClassVar[bool] = True

    def __post_init__(self):
        check_choice("aux_config", self.aux_config, AUX_CONFIGS)
        check_choice("local_loss", self.local_loss, ("ce", "contrast"))
        check_choice("weight_schedule", self.weight_schedule, ("module", "stage"))
        for name in ("recon_weights", "task_weights"):
            value = getattr(self, name)
            if value is not None and len(tuple(value)) != 2:
                raise ValueError(f"{name} must be a pair (first aux net, last aux net), got {value!r}")

    def weights_of(self, plan: LocalPlan) -> tuple[tuple[float, float], tuple[float, float]]:
        """``(recon_weights, task_weights)``: the (first, last) λ pairs in force, given or published."""
        ixx_1, ixy_1, ixx_2, ixy_2 = published_weights(self.dataset, plan.layout.arch, plan.split_kind,
                                                       plan.num_modules)
        recon = tuple(self.recon_weights) if self.recon_weights is not None else (ixx_1, ixx_2)
        task = tuple(self.task_weights) if self.task_weights is not None else (ixy_1, ixy_2)
        return recon, task

    def weights(self, plan: LocalPlan, k: int) -> tuple[float, float]:
        """(λ_recon, λ_task) of aux net ``k``."""
        recon, task = self.weights_of(plan)
        if self.weight_schedule == "module":
            r = module_index_ratio(k, plan.num_modules)
        else:
            r = stage_index_ratio(plan.stage_of_block(plan.next_block_index(k)),
                                  paper_module_count(plan.num_modules, plan.layout.num_blocks))
        return interpolate(recon, r), interpolate(task, r)

    def aux_input_shape(self, plan: LocalPlan, k: int) -> tuple[int, ...]:
        """Shape of what the aux nets of boundary ``k`` see (the module output for InfoPro)."""
        return plan.output_shape(k)

    def aux_transform(self, plan: LocalPlan, k: int) -> Optional[nn.Module]:
        return None

    def build_aux_objective(self, plan: LocalPlan, k: int) -> InfoProObjective:
        shape, family = self.aux_input_shape(plan, k), aux_family(plan)
        out = self.aux_feature_dim if self.local_loss == "contrast" else plan.num_classes
        head = family.task_head(plan, shape, self.aux_config, out, self.aux_widen, self.aux_feature_dim)
        recon, task = self.weights(plan, k)
        decoder = family.decoder(plan, shape, self.aux_widen) if self.use_decoder else None
        return InfoProObjective(head, self.local_loss, task, decoder, recon, self.aux_transform(plan, k))

    def build_objectives(self, plan: LocalPlan) -> list[Optional[LocalObjective]]:
        aux = [self.build_aux_objective(plan, k) for k in range(plan.num_modules - 1)]
        self._check_every_module_trains(plan, aux)
        return aux + [ClassifierObjective()]

    def _check_every_module_trains(self, plan: LocalPlan, aux: list[InfoProObjective]) -> None:
        """Refuse λ_recon = λ_task = 0 for an aux net: its module would get no gradient and silently never train.

        This happens with MAN's stage rule at K = 3, 4 (r reaches 1, where the published weights end at 0)
        and with explicit weights that interpolate to 0.
        """
        idle = [k for k, objective in enumerate(aux) if objective.recon_weight == 0 and objective.task_weight == 0]
        if idle:
            modules, (recon, task) = ", ".join(map(str, idle)), self.weights_of(plan)
            message = (f"{self.name} with {plan.num_modules} local modules gives the aux net(s) of module(s) {modules} "
                       f"recon and task weight 0 (recon_weights={tuple(recon)}, task_weights={tuple(task)}, "
                       f"weight_schedule={self.weight_schedule!r}), so module(s) {modules} would never be trained: use "
                       f"more local modules, or recon_weights / task_weights that are not 0 there")
            if not self.allow_untrained_modules:
                raise ValueError(message + " (allow_untrained_modules=True to build it anyway)")
            warnings.warn(message, stacklevel=2)
