"""``python -m timm_local.bench``: memory and speed of local-learning training steps against E2E.

    python -m timm_local.bench --preset quick                 # < 1 min on a CPU
    python -m timm_local.bench --preset cpu                   # the recorded CPU benchmark
    python -m timm_local.bench --preset gpu                   # ResNet-110, batch 1024, bf16 (InfoPro Table 3)
    python -m timm_local.bench --arch resnet32 --methods infopro:balanced man:paper@4 --k 2 4 8 --batch-size 128

Every configuration runs in a fresh subprocess (:mod:`timm_local.bench.worker`), E2E and E2E +
gradient checkpointing are measured in the same run, and the run writes ``<out>.json`` and
``<out>.png`` and prints a table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from .config import PRESET_ROUNDS, PRESETS, BenchConfig, grid
from .report import MEMORY_FIGURES, add_ratios, plot, table, time_key, write_json
from .worker import MMAP_THRESHOLD_ENV, RESULT_MARK, environment, measure


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m timm_local.bench", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a named grid; the flags below override it")
    parser.add_argument("--quick", dest="preset", action="store_const", const="quick", help="= --preset quick")
    parser.add_argument("--arch", nargs="+", help="backbones, e.g. resnet110 resnet32")
    parser.add_argument("--methods", nargs="+", help="METHOD[:SPLIT][+gc][@K], e.g. infopro:balanced man:paper@4")
    parser.add_argument("--k", nargs="+", type=int, help="numbers of local modules")
    parser.add_argument("--batch-size", nargs="+", type=int)
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"])
    parser.add_argument("--img-size", type=int)
    parser.add_argument("--device", help="cpu or cuda (default: the preset's, else cuda when available)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile every local module")
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--threads", type=int, help="CPU threads per configuration (torch.set_num_threads)")
    parser.add_argument("--out", type=Path, help="output prefix (default benchmarks/results/<preset>-<device>)")
    parser.add_argument("--in-process", action="store_true",
                        help="measure in this process instead of one fresh subprocess per configuration "
                             "(debugging only: CPU resident memory is then meaningless)")
    parser.add_argument("--rounds", type=int, help="measure the grid this many times, in alternating order, and "
                                                   "keep each configuration's fastest round (default: the preset's, else 1)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    parser.add_argument("--time-budget", type=float, default=None, metavar="S",
                        help="seconds for the whole grid: a configuration not started within it is recorded as "
                             "skipped (baselines run first, so every ratio measured still has its E2E)")
    return parser.parse_args(argv)


def build_grid(args: argparse.Namespace) -> list[BenchConfig]:
    """The preset's grid with the command-line overrides applied."""
    preset = args.preset or ("quick" if args.methods is None else None)
    spec = dict(PRESETS[preset]) if preset else {}
    overrides = {"arches": args.arch, "method_specs": args.methods, "ks": args.k, "batch_sizes": args.batch_size,
                 "precisions": args.precision, "img_size": args.img_size, "device": args.device,
                 "channels_last": args.channels_last, "compile": args.compile, "warmup": args.warmup,
                 "steps": args.steps, "threads": args.threads}
    spec.update({k: v for k, v in overrides.items() if v is not None})
    spec.setdefault("arches", ["resnet110"])
    spec.setdefault("ks", [4])
    spec.setdefault("batch_sizes", [64])
    spec.setdefault("precisions", ["fp32"])
    spec.setdefault("method_specs", ["infopro:balanced"])
    if "device" not in spec:
        import torch

        spec["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return grid(spec.pop("arches"), spec.pop("method_specs"), spec.pop("ks"), spec.pop("batch_sizes"),
                spec.pop("precisions"), **spec)


def run_in_subprocess(config: BenchConfig, timeout: float) -> dict:
    """Measure ``config`` in a fresh Python process; an ``error`` entry if it fails."""
    env = dict(os.environ)
    if not config.device.startswith("cuda"):
        env.update(MMAP_THRESHOLD_ENV)
    command = [sys.executable, "-m", "timm_local.bench.worker", json.dumps(config.to_dict())]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return _error(config, f"timed out after {timeout:.0f} s")
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    return _error(config, (done.stderr or done.stdout)[-2000:])


def fastest_round(rounds: list[dict]) -> dict:
    """The round with the smallest step time (CPU time on the CPU), with every round's times and memory kept.

    Memory figures other than resident memory are deterministic; ``rounds`` shows how much the
    resident-memory and time figures moved between rounds.
    """
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return rounds[0]
    best = dict(min(ok, key=lambda r: r[time_key(r)]))
    if len(rounds) > 1:
        best["rounds"] = [{k: r.get(k) for k in ("step_time_s", "cpu_time_per_step_s", "rss_activation_mb",
                                                  "peak_alloc_mb", "error")} for r in rounds]
    return best


def _error(config: BenchConfig, message: str) -> dict:
    return {"config": config.to_dict(), "label": config.label, "series": config.series, "error": message}


def _status(result: dict) -> str:
    if "error" in result:
        return "error: " + (result["error"].strip().splitlines() or ["?"])[-1]
    peak = result.get("peak_alloc_mb")
    return f"peak {peak if peak is not None else float('nan'):.0f} MiB, {result['step_time_s']:.3f} s/step"


def measure_grid(configs: Sequence[BenchConfig], rounds: int, in_process: bool, timeout: float,
                 time_budget: Optional[float] = None) -> list[dict]:
    """Every configuration ``rounds`` times (odd rounds in reverse order), each reduced to its fastest round.

    With ``time_budget`` (seconds), configurations not started before it runs out get a ``skipped``
    error entry, and a running one is stopped at the end of the budget.
    """
    deadline = None if time_budget is None else time.monotonic() + time_budget
    by_config: dict[BenchConfig, list[dict]] = {c: [] for c in configs}
    for r in range(rounds):
        for i, config in enumerate(configs if r % 2 == 0 else configs[::-1], 1):
            left = timeout if deadline is None else min(timeout, deadline - time.monotonic())
            if left <= 0:
                result = _error(config, f"skipped: the time budget of {time_budget:.0f} s ran out before it started")
            else:
                result = measure(config) if in_process else run_in_subprocess(config, left)
            by_config[config].append(result)
            print(f"[round {r + 1}/{rounds}, {i}/{len(configs)}] {config.label} (bs {config.batch_size}, "
                  f"{config.precision}): {_status(result)}", file=sys.stderr, flush=True)
    return [fastest_round(by_config[c]) for c in configs]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Measure the grid, write ``<out>.json`` and ``<out>.png``, print the table; 1 if any configuration failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    configs = build_grid(args)
    command = "python -m timm_local.bench " + shlex.join(argv)
    device = configs[0].device
    out = args.out or Path("benchmarks/results") / f"{args.preset or 'custom'}_{device.split(':')[0]}"
    print(f"{command}: {len(configs)} configurations -> {out}.json / {out}.png", file=sys.stderr)
    results = measure_grid(configs, args.rounds or PRESET_ROUNDS.get(args.preset, 1), args.in_process, args.timeout,
                           args.time_budget)
    results = add_ratios([dict(r, command=command) for r in results])
    run = {"command": command, "environment": environment(device), "in_process": args.in_process,
           "figures": {key: f"{meaning} (ratio to E2E: {ratio})" for key, ratio, meaning in MEMORY_FIGURES},
           "grid": [dataclasses.asdict(c) for c in configs], "results": results}
    write_json(Path(f"{out}.json"), run)
    plot(Path(f"{out}.png"), run)
    print(table(results))
    return 1 if any("error" in r for r in results) else 0
