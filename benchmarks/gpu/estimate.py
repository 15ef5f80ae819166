"""Estimate the GPU time of each part of the evidence run before spending device time on it.

    OMP_NUM_THREADS=1 python benchmarks/gpu/estimate.py --out benchmarks/gpu/estimate.json

What it does (every input is either counted here or read from a recorded file; the two GPU rates are
stated assumptions, shown as a range, because no GPU figure of this project exists):

1. Counts, for every configuration of part 1 and every run of part 2, the FLOPs and the number of
   PyTorch operator calls of one training step (``local_step`` → momentum update → SGD step), with
   ``torch.utils.flop_counter.FlopCounterMode`` and a dispatch-mode counter, on the CPU at batch 2 and
   scaled linearly to the run's batch (operator calls do not grow with the batch).
2. Reads the harness's own CPU step times (benchmarks/results/cpu_*.json) for the configurations they
   cover, and prints the CPU's effective FLOP/s: the check that the FLOP count explains the CPU time.
3. Models a GPU step as ``max(FLOPs / R, ops * t_op)``: compute-bound at an effective rate ``R``, or
   bound by eager PyTorch's per-operator launch cost ``t_op``; with R = 40..160 TFLOP/s (5..20% of the
   790 TFLOP/s bf16 matrix rate measured on the H200, KINDS.md: small-channel convolutions reach a
   fraction of it) and t_op = 10..20 µs. Part 1 adds a fresh process per configuration
   (``--process-s``: import, CUDA context, model build, cudnn autotune). Part 2's epoch: 49 steps of
   every run at once (compute shared, launches in parallel, one process each) plus 15% for evaluation.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's timm_local, not an installed one

import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import timm_local  # noqa: E402,F401
from timm_local.bench.cli import build_grid, parse_args as bench_args
from timm_local.bench.step import create_model, create_optimizer, make_step, synthetic_batch
from timm_local.evidence import plan
from timm_local.evidence.sizing import EPOCH_OVERHEAD

RATES = (40e12, 160e12)  # effective FLOP/s, pessimistic and optimistic
OP_COSTS = (20e-6, 10e-6)  # seconds per operator call, pessimistic and optimistic
COUNT_BATCH = 2


class OpCounter(TorchDispatchMode):
    """Counts ATen operator calls (each is at least one kernel launch on a GPU)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def count_step(step) -> tuple[float, int]:
    step()  # lazy state first
    ops = OpCounter()
    with FlopCounterMode(display=False) as flops, ops:
        step()
    return float(flops.get_total_flops()), ops.calls


def bench_counts(argv: list[str]) -> list[dict]:
    """FLOPs per image and operator calls per step of every configuration of one part-1 invocation."""
    rows = []
    for config in build_grid(bench_args(argv)):
        small = dataclasses.replace(config, device="cpu", batch_size=COUNT_BATCH, precision="fp32", compile=False)
        torch.manual_seed(0)
        model = create_model(small)
        x, y = synthetic_batch(small, model.num_classes)
        flops, ops = count_step(make_step(small, model, create_optimizer(model, "cpu"), x, y))
        rows.append({"arch": config.arch, "label": config.label, "batch_size": config.batch_size,
                     "precision": config.precision, "steps": config.warmup + config.steps + 1,
                     "flops_per_image": flops / COUNT_BATCH, "ops_per_step": ops})
    return rows


def run_counts() -> list[dict]:
    rows = []
    for run in plan.TRAIN_RUNS:
        settings = run.paper_settings()
        torch.manual_seed(0)
        model = timm.create_model(settings["model"], num_classes=10, **settings["model_kwargs"]).train()
        optimizer = create_optimizer(model, "cpu")
        x, y = torch.randn(COUNT_BATCH, 3, 32, 32), torch.randint(0, 10, (COUNT_BATCH,))

        def step():
            model.local_step(x, y)
            model.momentum_update()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        flops, ops = count_step(step)
        rows.append({"run": run.name, "flops_per_image": flops / COUNT_BATCH, "ops_per_step": ops})
    return rows


def gpu_step_s(flops: float, ops: int) -> tuple[float, float]:
    """(optimistic, pessimistic) seconds of one step."""
    return (max(flops / RATES[1], ops * OP_COSTS[1]), max(flops / RATES[0], ops * OP_COSTS[0]))


def cpu_check() -> list[dict]:
    """The recorded CPU step times against this script's FLOP counts: effective CPU FLOP/s."""
    out = []
    for path in sorted(Path("benchmarks/results").glob("cpu_*.json")):
        run = json.loads(path.read_text())
        for r in run["results"]:
            if "error" in r or r["config"]["method"] != "e2e" or r["config"]["grad_checkpointing"]:
                continue
            c = r["config"]
            argv = ["--arch", c["arch"], "--methods", "e2e", "--batch-size", "2", "--img-size", str(c["img_size"]),
                    "--device", "cpu"]
            flops = next(x for x in bench_counts(argv) if x["label"] == "e2e")["flops_per_image"]
            out.append({"file": path.name, "arch": c["arch"], "batch_size": c["batch_size"],
                        "precision": c["precision"],
                        "cpu_s_per_step": r["cpu_time_per_step_s"], "threads": r.get("threads"),
                        "effective_gflops": flops * c["batch_size"] / r["cpu_time_per_step_s"] / 1e9})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/gpu/estimate.json"))
    parser.add_argument("--process-s", type=float, nargs=2, default=(3.0, 6.0),
                        help="a fresh harness process on the device, optimistic and pessimistic (seconds)")
    parser.add_argument("--train-s", type=float, default=480 - 120 - 45 - 30,
                        help="part 2's training time: budget - part 1 - reserve - probe and start-up")
    args = parser.parse_args()
    torch.set_num_threads(1)

    part1 = []
    for part in plan.bench_parts(smoke=False):
        for row in bench_counts(list(part.argv)):
            lo, hi = gpu_step_s(row["flops_per_image"] * row["batch_size"], row["ops_per_step"])
            row.update(part=part.name, gpu_step_s=(lo, hi),
                       gpu_config_s=(args.process_s[0] + row["steps"] * lo, args.process_s[1] + row["steps"] * hi))
            part1.append(row)
    part1_s = [sum(r["gpu_config_s"][i] for r in part1) for i in (0, 1)]

    runs = run_counts()
    steps = plan.steps_per_epoch(50_000, smoke=False)
    epoch_s = []
    for i in (0, 1):  # all runs at once: compute is shared, launches run in parallel (a process each)
        compute = sum(r["flops_per_image"] for r in runs) * 50_000 / RATES[1 - i]
        launch = max(r["ops_per_step"] for r in runs) * steps * OP_COSTS[1 - i]
        epoch_s.append(max(compute, launch) * EPOCH_OVERHEAD)
    part2 = {"runs": runs, "epoch_s_all_runs_at_once": epoch_s, "train_s": args.train_s,
             "epochs_that_fit": [math.floor(args.train_s / e) for e in epoch_s]}
    result = {"assumptions": {"effective_flops_per_s": RATES, "seconds_per_op": OP_COSTS,
                              "process_s": args.process_s},
              "cpu_check": cpu_check(), "part1": part1, "part1_s": part1_s, "part2": part2}
    args.out.write_text(json.dumps(result, indent=1))

    print("| part 1 configuration | batch | GFLOP/image | ops/step | GPU s/step (opt.–pess.) |")
    print("|---|---|---|---|---|")
    for r in part1:
        print(f"| {r['arch']} {r['precision']} {r['label']} | {r['batch_size']} | {r['flops_per_image'] / 1e9:.2f} | "
              f"{r['ops_per_step']} | {r['gpu_step_s'][0]:.3f}–{r['gpu_step_s'][1]:.3f} |")
    print(f"\npart 1: {len(part1)} configurations, {part1_s[0]:.0f}–{part1_s[1]:.0f} s")
    print("\n| part 2 run | GFLOP/image | ops/step |\n|---|---|---|")
    for r in runs:
        print(f"| {r['run']} | {r['flops_per_image'] / 1e9:.3f} | {r['ops_per_step']} |")
    print(f"\npart 2: an epoch of all {len(runs)} runs at once {epoch_s[0]:.1f}–{epoch_s[1]:.1f} s; "
          f"{part2['epochs_that_fit'][1]}–{part2['epochs_that_fit'][0]} epochs in {args.train_s:.0f} s")
    print("\nCPU check (recorded harness figures / counted FLOPs):")
    for c in result["cpu_check"]:
        print(f"  {c['file']}: {c['arch']} bs {c['batch_size']} {c['precision']}, {c['threads']} thread(s): "
              f"{c['cpu_s_per_step']:.2f} s/step = {c['effective_gflops']:.1f} GFLOP/s effective")


if __name__ == "__main__":
    main()
