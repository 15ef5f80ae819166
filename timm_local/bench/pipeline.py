"""``python -m timm_local.bench.pipeline``: images/s and per-process memory of (a) one process, sequential
``local_step``; (b) S processes, data-parallel (the trainer's per-module DDP); (c) ``--pipeline S``, measured
in one run on the same model and batch size (benchmarks/README.md, "Pipelined training").

    python -m timm_local.bench.pipeline                                  # ResNet-110 InfoPro K=4 balanced, batch 128
    python -m timm_local.bench.pipeline --cuts 2                         # an explicit stage cut
    python -m timm_local.bench.pipeline --arch resnet32 --steps 3 --warmup 1 --batch-size 16   # smoke run

Every configuration runs in fresh processes (:func:`timm_local.pipeline.launch.run_local_job`, gloo, one
thread each). Per process and configuration: ``--warmup`` untimed steps, then ``--steps`` timed ones.
images/s counts every image trained: B per step for (a) and (c), S·B for (b) (each process its own B).
(c)'s time runs from a barrier before the timed steps to the last stage's end, so the pipeline's fill and
drain are included. Memory: the peak resident set of each process after its set-up (``ru_maxrss`` reset
at the baseline, as :mod:`timm_local.bench.worker` does), so it counts what the steps add on top of the
weights, optimizer state and libraries each process holds.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from .meters import MiB, reset_rss_peak, rss_now, rss_peak
from .worker import RESULT_MARK, environment

MODES = ("sequential", "ddp", "pipeline")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m timm_local.bench.pipeline", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--arch", default="resnet110")
    parser.add_argument("--method", default="infopro")
    parser.add_argument("--k", type=int, default=4, help="local modules")
    parser.add_argument("--split", default="balanced", help="the model's block split ('balanced' = InfoPro*)")
    parser.add_argument("--batch-size", type=int, default=128, help="per process and per micro-batch")
    parser.add_argument("--stages", type=int, default=2, help="S: pipeline stages, and the DDP process count")
    parser.add_argument("--cuts", type=int, nargs="*", default=None,
                        help="explicit stage cuts (first module of each later stage); default: time-balanced")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pipeline-cpu.json"))
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- in a worker
def _model(spec: dict):
    import timm

    import timm_local  # noqa: F401

    torch.manual_seed(0)
    return timm.create_model(f"{spec['arch']}_{spec['method']}", num_local_modules=spec["k"],
                             split=spec["split"]).train()


def _optimizer(model):
    return torch.optim.SGD(model.local_param_groups(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4)


def _batch(spec: dict, num_classes: int):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(spec["batch_size"], 3, 32, 32, generator=g),
            torch.randint(0, num_classes, (spec["batch_size"],), generator=g))


def _timed(run_steps, steps: int) -> tuple[float, float, float]:
    """(seconds of ``steps`` steps, baseline RSS, peak RSS above it) with the peak reset at the baseline."""
    baseline = rss_now()
    reset_rss_peak()
    start = time.perf_counter()
    run_steps(steps)
    return time.perf_counter() - start, baseline, rss_peak()


def _sequential(spec: dict) -> dict:
    model = _model(spec)
    optimizer = _optimizer(model)
    x, y = _batch(spec, model.num_classes)

    def run(n):
        for _ in range(n):
            model.local_step(x, y)
            model.momentum_update()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    run(spec["warmup"])
    seconds, baseline, peak = _timed(run, spec["steps"])
    return {"seconds": seconds, "images": spec["steps"] * spec["batch_size"], "rss_baseline_mb": baseline / MiB,
            "rss_peak_mb": peak / MiB}


def _ddp(spec: dict) -> dict:
    import torch.distributed as dist
    from accelerate import Accelerator

    from ..train.distributed import prepare_local_modules

    accelerator = Accelerator(cpu=True)
    model = _model(spec)
    optimizer = _optimizer(model)
    modules, optimizer, sync = prepare_local_modules(accelerator, model, optimizer)
    x, y = _batch(spec, model.num_classes)

    def run(n):
        for _ in range(n):
            model.local_step(x, y, backward=accelerator.backward, modules=modules)
            sync()
            model.momentum_update()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    run(spec["warmup"])
    dist.barrier()
    seconds, baseline, peak = _timed(run, spec["steps"])
    dist.barrier()
    return {"seconds": seconds, "images": spec["steps"] * spec["batch_size"], "rss_baseline_mb": baseline / MiB,
            "rss_peak_mb": peak / MiB}


def _pipeline(spec: dict) -> dict:
    import torch.distributed as dist

    from ..pipeline import create_stage

    dist.init_process_group("gloo")
    model = _model(spec)
    optimizer = _optimizer(model)
    x, y = _batch(spec, model.num_classes)
    stage, costs = create_stage(model, optimizer, spec["stages"], torch.device("cpu"), cuts=spec["cuts"],
                                probe_batch=(x, y))
    first = stage.layout.is_first
    stats = []

    def run(n):
        stats.append(stage.train_epoch([(x, y)] * n if first else None))
    run(spec["warmup"])
    dist.barrier()
    seconds, baseline, peak = _timed(run, spec["steps"])
    timed = stats[-1]
    return {"seconds": seconds, "images": spec["steps"] * spec["batch_size"], "rss_baseline_mb": baseline / MiB,
            "rss_peak_mb": peak / MiB, "stage": stage.layout.stage, "modules": [timed.modules.start, timed.modules.stop],
            "busy_s": timed.busy_s, "idle_s": timed.idle_s, "wall_s": timed.wall_s,
            "idle_fraction": timed.idle_fraction, "cuts": list(stage.plan.cuts), "plan": stage.plan.describe(),
            "module_costs": [vars(c) for c in costs] if costs is not None else None}


def run_worker(spec: dict) -> None:
    torch.set_num_threads(1)
    result = {"sequential": _sequential, "ddp": _ddp, "pipeline": _pipeline}[spec["mode"]](spec)
    print(RESULT_MARK + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------- the parent
def measure_mode(spec: dict, world_size: int, timeout_s: float) -> list[dict]:
    from ..pipeline.launch import run_local_job

    command = [sys.executable, "-m", "timm_local.bench.pipeline", "--worker", json.dumps(spec)]
    results = run_local_job(command, world_size, timeout_s, env={"OMP_NUM_THREADS": "1"})
    out = []
    for r in results:
        lines = [line for line in r.stdout.splitlines() if line.startswith(RESULT_MARK)]
        if r.returncode != 0 or not lines:
            raise RuntimeError(f"{spec['mode']}: rank {r.rank} exited {r.returncode}: {r.stderr[-2000:]}")
        out.append(json.loads(lines[-1][len(RESULT_MARK):]))
    return out


def summarise(mode: str, ranks: list[dict]) -> dict:
    """images/s of the configuration (every process's images over the slowest process's time) and memory."""
    seconds = max(r["seconds"] for r in ranks)
    summary = {"mode": mode, "processes": len(ranks), "images_per_s": sum(r["images"] for r in ranks) / seconds
               if mode == "ddp" else ranks[0]["images"] / seconds, "seconds": seconds,
               "rss_peak_mb_per_process": [r["rss_peak_mb"] for r in ranks],
               "rss_baseline_mb_per_process": [r["rss_baseline_mb"] for r in ranks]}
    if mode == "pipeline":
        summary.update(plan=ranks[0]["plan"], cuts=ranks[0]["cuts"], module_costs=ranks[0]["module_costs"],
                       stages=[{k: r[k] for k in ("stage", "modules", "busy_s", "idle_s", "wall_s", "idle_fraction")}
                               for r in ranks])
    return summary


def table(run: dict) -> str:
    rows = ["| configuration | processes | images/s | vs (a) | vs (b) | peak RSS / process (MiB) | vs (a) | "
            "added by the steps (MiB) |", "|---|---|---|---|---|---|---|---|"]
    by_mode = {r["mode"]: r for r in run["results"]}
    base, ddp = by_mode.get("sequential"), by_mode.get("ddp")
    def ratio(value, reference):
        return f"{value / reference:.2f}" if reference else "–"

    for r in run["results"]:
        peak = max(r["rss_peak_mb_per_process"])
        rows.append(f"| {r['mode']} | {r['processes']} | {r['images_per_s']:.1f} | "
                    f"{ratio(r['images_per_s'], base and base['images_per_s'])} | "
                    f"{ratio(r['images_per_s'], ddp and ddp['images_per_s'])} | {peak:.0f} | "
                    f"{ratio(peak, base and max(base['rss_peak_mb_per_process']))} | "
                    f"{max(p - b for p, b in zip(r['rss_peak_mb_per_process'], r['rss_baseline_mb_per_process'])):.0f} |")
    pipe = by_mode.get("pipeline")
    if pipe:
        rows.append("")
        rows.append(f"stage plan: {pipe['plan']}")
        for s in pipe["stages"]:
            rows.append(f"stage {s['stage']} (modules {s['modules'][0]}-{s['modules'][1] - 1}): busy {s['busy_s']:.2f} s, "
                        f"idle {s['idle_s']:.2f} s ({100 * s['idle_fraction']:.0f}% of {s['wall_s']:.2f} s)")
    return "\n".join(rows)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return
    spec = {"arch": args.arch, "method": args.method, "k": args.k, "split": args.split, "batch_size": args.batch_size,
            "stages": args.stages, "cuts": args.cuts, "warmup": args.warmup, "steps": args.steps}
    worlds = {"sequential": 1, "ddp": args.stages, "pipeline": args.stages}
    results = [summarise(mode, measure_mode({**spec, "mode": mode}, worlds[mode], args.timeout)) for mode in args.modes]
    run = {"command": shlex.join(["python", "-m", "timm_local.bench.pipeline", *(argv if argv is not None else sys.argv[1:])]),
           "spec": spec, "threads_per_process": 1, **environment("cpu"), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(run, indent=1) + "\n")
    print(table(run))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
