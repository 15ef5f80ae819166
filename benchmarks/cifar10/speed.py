#!/usr/bin/env python3
"""Training speed of a sweep's runs under the CPU levers, measured with train.py itself on the real data.

    python benchmarks/cifar10/speed.py configs/sweeps/resnet32_cpu10e_cifar10.yaml --parallel 2 --threads 1 \
        --variants before after --out benchmarks/cifar10/speed_2x1.json

Every (run, variant) is one fresh ``python -m timm_local.train`` process: the run's resolved sweep
config with the variant's overrides, one epoch of ``--samples`` training images (the first ones of the
real training split; all of a run's steps and the trainer's own work: loss bookkeeping, optimizer,
momentum copies, data loading) and a small eval. ``--parallel`` processes run at once with
``--threads`` threads each, so ``--parallel 2 --threads 1`` is the sweep's own setting on a 2-core
machine. The figure is the trainer's ``images_per_sec`` from the run's summary.csv (training time
only, eval excluded), next to the eval top-1 after the last epoch (``--epochs``, ``--eval-samples``:
the accuracy check of a lever). Variants:

- ``before``: fp32, contiguous memory format (the trainer's defaults before this benchmark);
- ``after``: the sweep's settings (bf16 autocast + channels_last);
- ``after_b256``: the same at batch 256 (lr scaled linearly).

``torch.compile`` is measured per step by the benchmark harness instead (``python -m timm_local.bench
--compile``): in a one-epoch probe its compile time would dominate.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from timm_local.sweep import load_sweep
from timm_local.sweep.spec import RunSpec, merge_configs, write_run_config

VARIANTS = {
    "before": {"mixed_precision": "no", "channels_last": False},
    "after": {},
    "after_b256": {"batch_size": 256, "lr_scale": 2.0},
}


def variant_config(config: dict, variant: str) -> dict:
    overrides = dict(VARIANTS[variant])
    scale = overrides.pop("lr_scale", None)
    if scale:
        overrides["lr"] = config["lr"] * scale
    return merge_configs(config, overrides)


def measure(name: str, config: dict, variant: str, samples: int, threads: int, workdir: Path, epochs: int = 1,
            eval_samples: int = 500) -> dict:
    """One fresh train.py process; returns its images/s (training only) and wall time."""
    config = variant_config(config, variant)
    tag = f"{name}__{variant}"
    config_path = write_run_config(RunSpec(name=tag, config=config), workdir / "configs")
    cmd = [sys.executable, "-m", "timm_local.train", "--config", str(config_path), "--output", str(workdir),
           "--experiment", tag, "--epochs", str(epochs), "--max-train-samples", str(samples),
           "--max-eval-samples", str(eval_samples),
           "--bench-loader-batches", "0"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TQDM_DISABLE="1")
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{tag} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    with open(workdir / tag / "summary.csv") as f:
        row = list(csv.DictReader(f))[-1]
    return {"run": name, "variant": variant, "model": config["model"],
            "k": config.get("model_kwargs", {}).get("num_local_modules"), "batch_size": config["batch_size"],
            "images_per_sec": float(row["images_per_sec"]), "epoch_time_s": float(row["epoch_time"]),
            "peak_memory_mb": float(row["peak_memory_mb"]), "process_wall_s": wall, "samples": samples,
            "epochs": epochs, "eval_samples": eval_samples, "eval_top1": float(row["eval_top1"]),
            "eval_loss": float(row["eval_loss"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep")
    parser.add_argument("--runs", nargs="*", default=None, help="run names (default: all of the sweep's)")
    parser.add_argument("--variants", nargs="+", default=["before", "after"], choices=sorted(VARIANTS))
    parser.add_argument("--samples", type=int, default=3840, help="training images per measurement")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per measurement (the schedule is the sweep's)")
    parser.add_argument("--eval-samples", type=int, default=500, help="test images evaluated after each epoch")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args()

    sweep = load_sweep(args.sweep)
    runs = [r for r in sweep.runs if args.runs is None or r.name in args.runs]
    jobs = [(r.name, r.config, v) for r in runs for v in args.variants]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda j: measure(*j, args.samples, args.threads, Path(tmp), args.epochs,
                                                  args.eval_samples), jobs))
    report = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parallel": args.parallel, "threads": args.threads, "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    base = {r["run"]: r["images_per_sec"] for r in results if r["variant"] == "before"}
    print(f"| run | variant | batch | img/s | vs before | peak MB | eval top-1 |\n|---|---|---|---|---|---|---|")
    for r in results:
        ratio = f"{r['images_per_sec'] / base[r['run']]:.2f}x" if r["run"] in base else ""
        print(f"| {r['run']} | {r['variant']} | {r['batch_size']} | {r['images_per_sec']:.0f} | {ratio} | "
              f"{r['peak_memory_mb']:.0f} | {r['eval_top1']:.2f} |")


if __name__ == "__main__":
    main()
