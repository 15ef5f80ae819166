"""``python -m timm_local.bench.pipeline``: images/s and per-process memory of (a) one process, sequential
``local_step``; (b) S processes, data-parallel (the trainer's per-module DDP); (c) ``--pipeline S``, measured
in one run on the same model and batch size (benchmarks/README.md, "Pipelined training").

    python -m timm_local.bench.pipeline                                  # ResNet-110 InfoPro K=4 balanced, batch 128
    python -m timm_local.bench.pipeline --cuts 2                         # an explicit stage cut
    python -m timm_local.bench.pipeline --arch resnet32 --steps 3 --warmup 1 --batch-size 16   # smoke run

Every configuration runs in fresh processes (:func:`timm_local.pipeline.launch.run_local_job`, gloo, one
thread each); with ``--rounds R`` the three run in turn R times and each reports its median round. Per
process and configuration: ``--warmup`` untimed steps, then ``--steps`` timed ones.
images/s counts every image trained: B per step for (a) and (c), S·B for (b) (each process its own B).
Two rates per configuration:

* *all steps*: the timed images over the time from a barrier before the timed steps to the slowest process's
  end; (c)'s includes the pipeline's fill (the last stage idles while the first micro-batch crosses the
  earlier stages) and drain, which an epoch of hundreds of micro-batches pays once;
* *steady state*: (steps − 1) micro-batches over the time between the first and the last timed step's end on
  each process (the slowest process's span; for (c), the last stage's, whose steps are the pipeline's output).

Memory, per process, two meters:

* *tensor peak*: :func:`~timm_local.bench.meters.cpu_allocation_peak` over two more (untimed) steps, on top of
  :func:`~timm_local.bench.meters.static_bytes` (the weights, buffers and optimizer state the process holds):
  every tensor PyTorch allocates, the pipeline's received and in-flight micro-batches included, no libraries;
* *peak RSS*: the resident set after set-up and its peak over the timed steps (``ru_maxrss`` reset at the
  baseline, as :mod:`timm_local.bench.worker` does), libraries included.
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

from ..pipeline.plan import StagePlan
from ..train.threads import busy_cpus
from .meters import MiB, cpu_allocation_peak, reset_rss_peak, rss_now, rss_peak, static_bytes
from .worker import RESULT_MARK, environment

MODES = ("sequential", "ddp", "pipeline")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m timm_local.bench.pipeline", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--arch", default="resnet110")
    parser.add_argument("--method", default="infopro")
    parser.add_argument("--k", type=int, default=None, help="local modules (default: 4, or one more than the cuts of "
                                                                  "an explicit --split)")
    parser.add_argument("--split", type=parse_split, default="balanced",
                        help="the model's block split: a name ('balanced' = InfoPro*, 'measured', 'even', 'paper') or "
                             "explicit block cuts, e.g. 7,18,32")
    parser.add_argument("--batch-size", type=int, default=128, help="per process and per micro-batch")
    parser.add_argument("--stages", type=int, default=2, help="S: pipeline stages, and the DDP process count")
    parser.add_argument("--cuts", type=int, nargs="*", default=None,
                        help="explicit stage cuts (first module of each later stage); default: time-balanced")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every configuration this many times, in turn (a, b, c, a, b, c, ...), and report each "
                             "configuration's median round, so a drift in the machine's speed reaches all of them")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pipeline-cpu.json"))
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def parse_split(text: str):
    """``--split``: a split name, or comma-separated block cuts (``7,18,32``) as a list of ints."""
    if not any(c.isdigit() for c in text):
        return text
    try:
        return [int(c) for c in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--split {text}: give a split name (balanced, measured, even, paper) or "
                                         f"comma-separated block indices such as 7,18,32") from None


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


def _measure(run_steps, spec: dict, model, optimizer, step_ends: list[float], barrier=lambda: None) -> dict:
    """Warm up, time ``spec['steps']`` steps, then measure the tensor peak of two more.

    ``run_steps(n)`` runs n steps and appends each step's end (``time.perf_counter()``) to ``step_ends``;
    ``barrier`` lines the processes up before the timed steps and after them.
    """
    run_steps(spec["warmup"])
    barrier()
    del step_ends[:]
    baseline = rss_now()
    reset_rss_peak()
    start = time.perf_counter()
    run_steps(spec["steps"])
    seconds, peak = time.perf_counter() - start, rss_peak()
    ends = list(step_ends)
    barrier()
    static = static_bytes(model, optimizer)
    tensor_peak = cpu_allocation_peak(lambda: run_steps(2), static)
    return {"seconds": seconds, "images": spec["steps"] * spec["batch_size"],
            "steady_seconds": ends[-1] - ends[0] if len(ends) > 1 else None,
            "steady_images": (len(ends) - 1) * spec["batch_size"], "rss_baseline_mb": baseline / MiB,
            "rss_peak_mb": peak / MiB, "static_mb": static / MiB,
            "tensor_peak_mb": tensor_peak / MiB if tensor_peak is not None else None}


def _sequential(spec: dict) -> dict:
    model = _model(spec)
    optimizer = _optimizer(model)
    x, y = _batch(spec, model.num_classes)
    ends: list[float] = []

    def run(n):
        for _ in range(n):
            model.local_step(x, y)
            model.momentum_update()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ends.append(time.perf_counter())
    return _measure(run, spec, model, optimizer, ends)


def _ddp(spec: dict) -> dict:
    import torch.distributed as dist
    from accelerate import Accelerator

    from ..train.distributed import prepare_local_modules

    accelerator = Accelerator(cpu=True)
    model = _model(spec)
    optimizer = _optimizer(model)
    modules, optimizer, sync = prepare_local_modules(accelerator, model, optimizer)
    x, y = _batch(spec, model.num_classes)
    ends: list[float] = []

    def run(n):
        for _ in range(n):
            model.local_step(x, y, backward=accelerator.backward, modules=modules)
            sync()
            model.momentum_update()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ends.append(time.perf_counter())
    return _measure(run, spec, model, optimizer, ends, barrier=dist.barrier)


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
    stats, ends = [], []

    def run(n):
        stats.append(stage.train_epoch([(x, y)] * n if first else None,
                                       on_step=lambda step, losses: ends.append(time.perf_counter())))
    result = _measure(run, spec, model, optimizer, ends, barrier=dist.barrier)
    timed = stats[-2]  # the timed epoch (the last one is the tensor-peak pass)
    return {**result, "stage": stage.layout.stage, "modules": [timed.modules.start, timed.modules.stop],
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
    """Both rates of the configuration (module docstring) and each process's memory.

    All steps: every process's images (DDP) or one micro-batch stream's (sequential, pipeline) over the slowest
    process's time. Steady state: the same images less each process's first step, over the slowest span from
    the first to the last step's end; for the pipeline that span is the last stage's.
    """
    seconds = max(r["seconds"] for r in ranks)
    if mode == "ddp":
        images, steady_images = sum(r["images"] for r in ranks), sum(r["steady_images"] for r in ranks)
        steady_seconds = max(r["steady_seconds"] or 0.0 for r in ranks)
    else:
        output = ranks[-1]  # sequential: the only process; pipeline: the last stage
        images, steady_images, steady_seconds = ranks[0]["images"], output["steady_images"], output["steady_seconds"] or 0.0
    summary = {"mode": mode, "processes": len(ranks), "images_per_s": images / seconds, "seconds": seconds,
               "steady_images_per_s": steady_images / steady_seconds if steady_seconds > 0 else None,
               "tensor_peak_mb_per_process": [r["tensor_peak_mb"] for r in ranks],
               "static_mb_per_process": [r["static_mb"] for r in ranks],
               "rss_peak_mb_per_process": [r["rss_peak_mb"] for r in ranks],
               "rss_baseline_mb_per_process": [r["rss_baseline_mb"] for r in ranks]}
    if mode == "pipeline":
        summary.update(plan=ranks[0]["plan"], cuts=ranks[0]["cuts"], module_costs=ranks[0]["module_costs"],
                       stages=[{k: r[k] for k in ("stage", "modules", "busy_s", "idle_s", "wall_s", "idle_fraction")}
                               for r in ranks])
    return summary


def median_round(summaries: list[dict]) -> dict:
    """The round with the median steady-state rate (the lower middle one of an even count), with every round's
    two rates attached (``rounds_images_per_s``, ``rounds_steady_images_per_s``)."""
    def steady(s):
        return s["steady_images_per_s"] or s["images_per_s"]
    ordered = sorted(summaries, key=steady)
    return {**ordered[(len(ordered) - 1) // 2], "rounds_images_per_s": [s["images_per_s"] for s in summaries],
            "rounds_steady_images_per_s": [s["steady_images_per_s"] for s in summaries]}


def _ratio(value: Optional[float], reference: Optional[float]) -> str:
    return f"{value / reference:.2f}" if value and reference else "–"


def _per_process(values: list[Optional[float]]) -> str:
    """'1463 / 1245' (MiB, one value per process)."""
    return " / ".join("–" if v is None else f"{v:.0f}" for v in values)


def _per_process_ratios(values: list[Optional[float]], reference: Optional[list[Optional[float]]]) -> str:
    """Each value over the largest of ``reference`` ('0.96 / 1.00'); '–' without a reference."""
    top = max((v for v in reference if v is not None), default=None) if reference else None
    return " / ".join(_ratio(v, top) for v in values)


def table(run: dict) -> str:
    """The speed table (both rates against (a) and (b), of each configuration's median round), the memory table,
    and the pipeline's stage balance."""
    by_mode = {r["mode"]: r for r in run["results"]}
    base, ddp = by_mode.get("sequential"), by_mode.get("ddp")
    rows = ["| configuration | processes | images/s, all steps | vs (a) | vs (b) | images/s, steady state | vs (a) | vs (b) "
            "| steady state, every round |", "|---|---|---|---|---|---|---|---|---|"]
    for r in run["results"]:
        steady = r["steady_images_per_s"]
        rows.append(f"| {r['mode']} | {r['processes']} | {r['images_per_s']:.1f} | "
                    f"{_ratio(r['images_per_s'], base and base['images_per_s'])} | "
                    f"{_ratio(r['images_per_s'], ddp and ddp['images_per_s'])} | "
                    f"{'–' if steady is None else f'{steady:.1f}'} | "
                    f"{_ratio(steady, base and base['steady_images_per_s'])} | "
                    f"{_ratio(steady, ddp and ddp['steady_images_per_s'])} | "
                    f"{', '.join('–' if v is None else f'{v:.1f}' for v in r.get('rounds_steady_images_per_s', [steady]))} |")
    rows += ["", "| configuration | weights + optimizer state (MiB) | tensor peak (MiB) | vs (a) | peak RSS (MiB) | vs (a) |",
             "|---|---|---|---|---|---|"]
    for r in run["results"]:
        rows.append(f"| {r['mode']} | {_per_process(r['static_mb_per_process'])} | "
                    f"{_per_process(r['tensor_peak_mb_per_process'])} | "
                    f"{_per_process_ratios(r['tensor_peak_mb_per_process'], base and base['tensor_peak_mb_per_process'])} | "
                    f"{_per_process(r['rss_peak_mb_per_process'])} | "
                    f"{_per_process_ratios(r['rss_peak_mb_per_process'], base and base['rss_peak_mb_per_process'])} |")
    pipe = by_mode.get("pipeline")
    if pipe:
        rows.append("")
        rows.append(f"- stage plan: {pipe['plan']}")
        if pipe["module_costs"]:
            seconds = [c["seconds"] for c in pipe["module_costs"]]
            plan = StagePlan(cuts=tuple(pipe["cuts"]), num_modules=len(seconds), kind="")
            rows.append(f"- module step times {', '.join(f'{t:.3f}' for t in seconds)} s; {plan.balance_text(seconds)}")
        for s in pipe["stages"]:
            rows.append(f"- stage {s['stage']} (modules {s['modules'][0]}-{s['modules'][1] - 1}): busy {s['busy_s']:.2f} s, "
                        f"idle {s['idle_s']:.2f} s ({100 * s['idle_fraction']:.0f}% of {s['wall_s']:.2f} s)")
    return "\n".join(rows)


def _num_modules(k: Optional[int], split) -> int:
    if not isinstance(split, list):
        return 4 if k is None else k
    if k is not None and k != len(split) + 1:
        raise SystemExit(f"error: --split {','.join(map(str, split))} makes {len(split) + 1} local modules but --k is "
                         f"{k}: drop --k or make them agree")
    return len(split) + 1


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return
    spec = {"arch": args.arch, "method": args.method, "k": _num_modules(args.k, args.split), "split": args.split,
            "batch_size": args.batch_size, "stages": args.stages, "cuts": args.cuts, "warmup": args.warmup, "steps": args.steps}
    busy = busy_cpus(1.0)  # what else ran: the record says so next to the figures
    worlds = {"sequential": 1, "ddp": args.stages, "pipeline": args.stages}
    if args.rounds < 1:
        raise SystemExit(f"error: --rounds {args.rounds}: give 1 or more")
    rounds = [[summarise(mode, measure_mode({**spec, "mode": mode}, worlds[mode], args.timeout)) for mode in args.modes]
              for _ in range(args.rounds)]
    results = [median_round([r[i] for r in rounds]) for i in range(len(args.modes))]
    run = {"command": shlex.join(["python", "-m", "timm_local.bench.pipeline", *(argv if argv is not None else sys.argv[1:])]),
           "spec": spec, "threads_per_process": 1, **environment("cpu"),
           "busy_cpus_before": round(busy, 2), "rounds": args.rounds, "results": results, "every_round": rounds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(run, indent=1) + "\n")
    print(table(run))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
