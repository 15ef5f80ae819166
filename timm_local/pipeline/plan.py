"""Which local modules each pipeline stage owns: contiguous cuts, measured or given (docs/PIPELINE.md §2).

A plan over K local modules and S stages is the list of *stage cuts*: the index of the first module of
every stage after the first (``--pipeline-cuts``), the same convention as the block cuts of a split.
Stage s owns modules ``cuts[s − 1] .. cuts[s] − 1`` (with ``cuts[−1] = 0`` and ``cuts[S − 1] = K``).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..bench.meters import SavedTensorMeter
from ..local import LocalNet


@dataclass(frozen=True)
class StagePlan:
    """Contiguous stages over ``num_modules`` local modules; ``kind`` is 'measured', 'explicit' or 'single'."""

    cuts: tuple[int, ...]
    num_modules: int
    kind: str

    @property
    def num_stages(self) -> int:
        return len(self.cuts) + 1

    def modules_of(self, stage: int) -> range:
        bounds = (0, *self.cuts, self.num_modules)
        return range(bounds[stage], bounds[stage + 1])

    def stage_of(self, module: int) -> int:
        return sum(1 for c in self.cuts if c <= module)

    def stage_seconds(self, module_seconds: Sequence[float]) -> list[float]:
        """Each stage's step time: the sum of its modules' measured step times."""
        return [sum(module_seconds[k] for k in self.modules_of(s)) for s in range(self.num_stages)]

    def speedup_bound(self, module_seconds: Sequence[float]) -> float:
        """Σ_k t_k / max_s Σ_{k in s} t_k: the most a pipeline of these stages can gain over one process running
        every module (each stage's step repeats once per micro-batch, so the slowest stage sets the pace)."""
        return sum(module_seconds) / max(self.stage_seconds(module_seconds))

    def balance_text(self, module_seconds: Sequence[float]) -> str:
        """'stage times 1.14 / 1.55 s per micro-batch (measured): at most 1.74x one process'."""
        times = " / ".join(f"{t:.3g}" for t in self.stage_seconds(module_seconds))
        return f"stage times {times} s per micro-batch (measured): at most {self.speedup_bound(module_seconds):.2f}x " \
               f"one process"

    def describe(self) -> str:
        """'stage 0: modules 0-1, stage 1: modules 2-3 (measured)'."""
        parts = [f"stage {s}: module{'s' if len(r) > 1 else ''} {r.start}" + (f"-{r.stop - 1}" if len(r) > 1 else "")
                 for s, r in ((s, self.modules_of(s)) for s in range(self.num_stages))]
        return ", ".join(parts) + f" ({self.kind})"


@dataclass(frozen=True)
class ModuleCost:
    """One local module's measured step: seconds of forward + loss + backward, and the activation bytes it holds
    for backward at its peak (``SavedTensorMeter``), and its parameter + buffer bytes."""

    seconds: float
    saved_bytes: int
    weight_bytes: int


def check_stage_count(num_stages: int, num_modules: int) -> None:
    if num_stages < 1:
        raise ValueError(f"--pipeline {num_stages}: give a number of stages >= 1")
    if num_stages > num_modules:
        raise ValueError(f"--pipeline {num_stages} asks for {num_stages} stages but the model has {num_modules} local "
                         f"modules, and each stage needs at least one: use --pipeline {num_modules} or fewer, or more "
                         f"local modules (--model-kwargs num_local_modules={num_stages})")


def explicit_plan(cuts: Sequence[int], num_stages: int, num_modules: int) -> StagePlan:
    """``--pipeline-cuts``: S − 1 strictly increasing module indices in 1 .. K − 1 (each stage's first module)."""
    check_stage_count(num_stages, num_modules)
    cuts = tuple(cuts)
    if len(cuts) != num_stages - 1:
        raise ValueError(f"--pipeline-cuts {' '.join(map(str, cuts))} makes {len(cuts) + 1} stages but --pipeline asks "
                         f"for {num_stages}: give {num_stages - 1} module indices, the first module of every stage after "
                         f"the first")
    if any(not isinstance(c, int) for c in cuts) or list(cuts) != sorted(set(cuts)) or \
            (cuts and not 1 <= cuts[0] <= cuts[-1] <= num_modules - 1):
        raise ValueError(f"--pipeline-cuts {' '.join(map(str, cuts))}: give strictly increasing module indices in "
                         f"1..{num_modules - 1} (the model has {num_modules} local modules), e.g. --pipeline-cuts "
                         f"{' '.join(str(num_modules * s // num_stages) for s in range(1, num_stages))}")
    return StagePlan(cuts=cuts, num_modules=num_modules, kind="explicit" if cuts else "single")


def balanced_plan(seconds: Sequence[float], num_stages: int) -> StagePlan:
    """Contiguous stages minimising the slowest stage's time Σ seconds (the pipeline's step time), then Σ time².

    Exact dynamic programme over the K − 1 possible cut points; the tie-break prefers even stages.
    """
    k = len(seconds)
    check_stage_count(num_stages, k)
    prefix = [0.0]
    for s in seconds:
        prefix.append(prefix[-1] + s)
    # best[s][j]: (max stage time, Σ squares, cuts) of modules 0..j-1 in s + 1 stages
    best: list[dict[int, tuple[float, float, tuple[int, ...]]]] = [
        {j: (prefix[j], prefix[j] ** 2, ()) for j in range(1, k + 1)}]
    for s in range(1, num_stages):
        row = {}
        for j in range(s + 1, k + 1):
            candidates = []
            for i in range(s, j):
                worst, squares, cuts = best[s - 1][i]
                t = prefix[j] - prefix[i]
                candidates.append((max(worst, t), squares + t * t, cuts + (i,)))
            row[j] = min(candidates)
        best.append(row)
    return StagePlan(cuts=best[num_stages - 1][k][2], num_modules=k, kind="measured")


def check_pipeline_method(model: LocalNet, plan: StagePlan) -> None:
    """Refuse a plan that cuts a loss spanning modules (MLAAN's cascade, ``cascade_depth`` L > 1).

    Boundary c (stage starting at module c) is crossed by the loss of a module j ≥ c that reaches module c − 1,
    i.e. c ≤ j ≤ c + L − 2; such a loss would need a gradient sent back to the previous stage.
    """
    depth = model.method.cascade_depth
    if depth == 1 or plan.num_stages == 1:
        return
    trained = [j for j, m in enumerate(model.local_modules) if m.objective is not None]
    for c in plan.cuts:
        crossing = [j for j in trained if c <= j <= c + depth - 2]
        if crossing:
            j = crossing[0]
            raise ValueError(
                f"{model.method.name}'s cascaded loss of module {j} spans modules {max(0, j - depth + 1)}..{j}, across "
                f"the stage boundary before module {c}; a pipeline sends no gradient back to a previous stage and every "
                f"boundary of this model is crossed by such a loss (laminae={depth}), so no --pipeline-cuts avoids it: "
                f"train {model.method.name} without --pipeline (data-parallel), or with --model-kwargs laminae=1")


def measure_module_costs(model: LocalNet, x: torch.Tensor, y: torch.Tensor, repeats: int = 2) -> list[ModuleCost]:
    """Time each module's interleaved step (:meth:`LocalNet.local_step_range` of that module alone) on ``x, y``.

    Runs on a deep copy of ``model`` with the RNG state restored afterwards, so the model, its BatchNorm
    statistics and every later random draw are untouched. Seconds are the fastest of ``repeats`` passes after
    one warm-up pass; saved bytes come from the warm-up pass.
    """
    probe = copy.deepcopy(model).train()
    seconds = [float("inf")] * probe.num_local_modules
    saved = [0] * probe.num_local_modules
    with torch.random.fork_rng(devices=[]):
        for rep in range(repeats + 1):
            h = x
            for k in range(probe.num_local_modules):
                meter = SavedTensorMeter(probe)
                start = time.perf_counter()
                with meter.measure():
                    h = probe.local_step_range(h, x, y, k, k + 1).logits
                if h.device.type == "cuda":
                    torch.cuda.synchronize(h.device)
                elapsed = time.perf_counter() - start
                if rep == 0:
                    saved[k] = meter.peak
                else:
                    seconds[k] = min(seconds[k], elapsed)
            probe.zero_grad(set_to_none=True)
    weights = [sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))
               for m in probe.local_modules]
    return [ModuleCost(seconds=s, saved_bytes=b, weight_bytes=w) for s, b, w in zip(seconds, saved, weights)]


def resolve_plan(model: LocalNet, num_stages: int, cuts: Optional[Sequence[int]],
                 costs: Optional[Sequence[ModuleCost]]) -> StagePlan:
    """The explicit ``cuts`` when given, else the time-balanced plan from ``costs``; checked against the method."""
    k = model.num_local_modules
    if cuts is not None:
        plan = explicit_plan(cuts, num_stages, k)
    elif num_stages == 1:
        plan = StagePlan(cuts=(), num_modules=k, kind="single")
    else:
        if costs is None:
            raise ValueError("a measured stage plan needs the module costs: measure them or give --pipeline-cuts")
        plan = balanced_plan([c.seconds for c in costs], num_stages)
    check_pipeline_method(model, plan)
    return plan
