"""Pipelined local training: each process owns a contiguous group of local modules (docs/PIPELINE.md).

* :mod:`.plan`: which modules each stage owns (time-balanced from measured module costs, or given).
* :mod:`.layout`: S stages × D data-parallel replicas over the process ranks, and the stage groups.
* :mod:`.link`: point-to-point messages between stages, bounded in flight, with deadlines and a shared abort.
* :mod:`.stage`: one process's stage (train an epoch, evaluate, gather the full state).
* :mod:`.build`: set all of it up in a process; :mod:`.launch`: start S × D local processes.
"""
from .build import agree_on_plan, create_stage
from .layout import ProcessLayout, process_layout
from .link import PipelineError, PipelineStopped
from .plan import ModuleCost, StagePlan, balanced_plan, explicit_plan, measure_module_costs, resolve_plan
from .stage import PipelineStage, StageStats

__all__ = ["ModuleCost", "PipelineError", "PipelineStage", "PipelineStopped", "ProcessLayout", "StagePlan",
           "StageStats", "agree_on_plan", "balanced_plan", "create_stage", "explicit_plan", "measure_module_costs",
           "process_layout", "resolve_plan"]
