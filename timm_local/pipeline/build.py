"""Set up this process's pipeline stage: layout, stage plan (measured on rank 0 or given), groups, stage."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist

from ..local import LocalNet
from .layout import ProcessLayout, process_layout, stage_group
from .link import PipelineError
from .plan import ModuleCost, StagePlan, balanced_plan, check_pipeline_method, measure_module_costs, resolve_plan
from .stage import PipelineStage


def agree_on_plan(model: LocalNet, num_stages: int, cuts: Optional[Sequence[int]],
                  probe_batch: Optional[tuple[torch.Tensor, torch.Tensor]]) -> tuple[StagePlan, Optional[list[ModuleCost]]]:
    """The stage plan every rank uses: ``cuts`` if given, else balanced on the module costs rank 0 measures on
    ``probe_batch`` (timings differ between processes, so only one measures) and broadcasts. The costs are
    measured also with ``cuts`` given when ``probe_batch`` is, to report the balance."""
    check_plan_possible(model, num_stages, cuts)
    costs = None
    if probe_batch is not None:
        box, failure = [None], None
        if dist.get_rank() == 0:
            try:
                box = [measure_module_costs(model, *probe_batch)]
            except Exception as error:  # noqa: BLE001 - every rank must leave the broadcast, then rank 0 re-raises
                failure = error
                box = [f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"]
        dist.broadcast_object_list(box, src=0)
        if failure is not None:
            raise failure
        if isinstance(box[0], str):
            raise PipelineError(f"rank {dist.get_rank()}: rank 0 failed to measure the module costs for the stage plan "
                                f"({box[0]}); see its log, or give --pipeline-cuts")
        costs = box[0]
    return resolve_plan(model, num_stages, cuts, costs), costs


def check_plan_possible(model: LocalNet, num_stages: int, cuts: Optional[Sequence[int]]) -> None:
    """Refuse, before anything is measured, what no measurement could fix: more stages than modules, bad cuts, a
    method whose losses cross every boundary (MLAAN; measuring would step module ranges it cannot step alone)."""
    if cuts is not None:
        resolve_plan(model, num_stages, cuts, None)
    elif num_stages > 1:
        check_pipeline_method(model, balanced_plan([1.0] * model.num_local_modules, num_stages))


def create_stage(model: LocalNet, optimizer: torch.optim.Optimizer, num_stages: int, device: torch.device,
                 cuts: Optional[Sequence[int]] = None, probe_batch: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                 timeout_s: float = 300.0, **stage_options) -> tuple[PipelineStage, Optional[list[ModuleCost]]]:
    """This rank's :class:`PipelineStage` (torch.distributed initialised, world size S × D) and the measured costs.

    ``stage_options`` go to :class:`PipelineStage` (state, backward, autocast, label_smoothing, clip_grad,
    clip_mode, max_in_flight).
    """
    if cuts is None and probe_batch is None and num_stages > 1:
        raise ValueError("a measured stage plan needs a probe batch; pass probe_batch or explicit cuts")
    layout: ProcessLayout = process_layout(num_stages, dist.get_world_size(), dist.get_rank())
    plan, costs = agree_on_plan(model, num_stages, cuts, probe_batch)
    group = stage_group(layout, timeout_s)
    stage = PipelineStage(model, optimizer, plan, layout, device, group=group, timeout_s=timeout_s, **stage_options)
    return stage, costs
