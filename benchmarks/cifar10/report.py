#!/usr/bin/env python3
"""Publish a finished sweep: export its done runs to hub_cards/, check them with validate.py, write the table and plot.

    python benchmarks/cifar10/report.py configs/sweeps/resnet32_cpu10e_cifar10.yaml \\
        --output /work/runs/resnet32_cpu10e_cifar10 --data-dir ../shared/datasets/cifar10-jpeg

For every run of the sweep that is done (results.json), in order:

1. ``python -m timm_local.hub export <run> --name <hub_name> --reference-run <the E2E run> --bench-json
   <memory>`` into ``--hub-dir`` (the card states the E2E run's top-1 of the same recipe, and the peak
   training memory vs E2E that the benchmark harness measured at the same batch, precision and layout);
2. ``python validate.py --model <hub_name> --pretrained`` on the whole test split, in a fresh process
   (so the registry reads the new hub_cards/ folder), with the run's eval settings: its top-1 must
   equal the trainer's final top-1 exactly, else the script fails;
3. ``python validate.py --checkpoint <run>/last.pth.tar --max-eval-samples 1000``: the figure the CI
   test re-measures through ``pretrained=True`` (``validate_first1000.json``);
4. the run's ``summary.csv``, ``results.json`` and ``args.yaml`` are copied to ``<bench-dir>/runs/<run>/``.

Then ``<bench-dir>/zoo.md`` and the marked section of ``<bench-dir>/README.md`` (the table: figures from the runs' own files, the papers' gaps from
docs/PUBLISHED_RESULTS.md) and ``<bench-dir>/zoo_top1.png`` (eval top-1 per epoch of every run).
Runs not done yet are listed as such and skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

from timm_local.sweep import load_sweep, read_status
from timm_local.sweep.status import read_summary

# Test error (%) at K=8 minus E2E's, ResNet-32 on CIFAR-10, from the papers' tables (docs/PUBLISHED_RESULTS.md):
# (method, error, E2E error of the same recipe, recipe). Accuracy gap = E2E error - error.
PAPER_K8 = {
    "greedy": (21.19, 7.37, "R160, InfoPro Table 2"),
    "dgl": (14.17, 7.37, "R160, InfoPro Table 2"),
    "infopro": (11.13, 7.37, "R160, InfoPro Table 2 (contrast)"),
    "man": (9.32, 6.37, "R400, MAN (InfoPro base) [secondary source]"),
}
FIRST_N = 1000
MEMORY_BENCH = "benchmarks/cifar10/results/bf16_cl_zoo.json"  # the harness at the zoo's setting: batch 128, bf16, CL, every method


def memory_json(harness_json: Path, out: Path) -> Path:
    """The harness's JSON as timm_local.hub.memory's format (peak allocated MB per model and K), for the cards."""
    bench = json.loads(harness_json.read_text())
    rows = [{"model": r["model"], "num_local_modules": r["num_local_modules"], "peak_memory_mb": r["peak_alloc_mb"],
             "grad_checkpointing": r["config"]["grad_checkpointing"], "batch_size": r["config"]["batch_size"],
             "mixed_precision": r["config"]["precision"]} for r in bench["results"]]
    out.write_text(json.dumps({"command": bench["command"], "device": bench["environment"]["device_name"],
                               "results": rows}, indent=1) + "\n")
    return out


def method_of(config: dict) -> str:
    return config["model"].split("_", 1)[1]


def run_python(*args: str, hub_dir: str, threads: int = 1) -> str:
    """``python <args>`` in a fresh process whose registry reads ``hub_dir`` (TIMM_LOCAL_HUB_CARDS), with
    ``threads`` intra-op threads (the trainer's: CPU kernels may sum in another order with another count)."""
    env = dict(os.environ, TIMM_LOCAL_HUB_CARDS=str(Path(hub_dir).resolve()), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def eval_flags(config: dict) -> list[str]:
    """validate.py flags that repeat the trainer's eval: batch size, precision and memory format."""
    flags = ["-b", str(config.get("validation_batch_size") or config.get("batch_size", 128))]
    if config.get("mixed_precision") not in (None, "no"):
        flags += ["--mixed-precision", config["mixed_precision"]]
    return flags + (["--channels-last"] if config.get("channels_last") else [])


def validate_json(*args: str, hub_dir: str, threads: int) -> dict:
    out = run_python("validate.py", *args, hub_dir=hub_dir, threads=threads)
    return json.loads(out[out.index("{"):])


def publish_run(run, folder: Path, reference: Optional[Path], args) -> dict:
    """Export, validate and copy one done run; return its validate figures."""
    export = ["-m", "timm_local.hub", "export", str(folder), "--name", run.hub_name, "--hub-dir", args.hub_dir,
              "--bench-json", str(args.memory_json)]
    run_python(*export, *(["--reference-run", str(reference)] if reference else []), hub_dir=args.hub_dir)
    common = ["--dataset", run.config["dataset"], "--data-dir", args.data_dir, "--workers", "0",
              *eval_flags(run.config)]
    results = json.loads((folder / "results.json").read_text())
    threads = int(results.get("threads") or 1)
    full = validate_json("--model", run.hub_name, "--pretrained", *common, hub_dir=args.hub_dir, threads=threads)
    if full["top1"] != results["top1_final"]:
        raise RuntimeError(f"{run.hub_name}: validate.py --pretrained gives top-1 {full['top1']} but the run ended at "
                           f"{results['top1_final']}: the exported weights do not reproduce the run")
    first = validate_json("--model", run.config["model"], "--checkpoint", str(folder / "last.pth.tar"),
                          "--max-eval-samples", str(FIRST_N), *common, hub_dir=args.hub_dir, threads=threads)
    record = {"hub_name": run.hub_name, "checkpoint": "last.pth.tar", "max_eval_samples": FIRST_N,
              "top1": first["top1"], "top5": first["top5"], "validate_flags": eval_flags(run.config),
              "threads": threads,
              "full_test_top1_pretrained": full["top1"]}
    target = Path(args.bench_dir) / "runs" / run.name
    target.mkdir(parents=True, exist_ok=True)
    for name in ("summary.csv", "results.json", "args.yaml"):
        shutil.copy2(folder / name, target / name)
    (target / "validate_first1000.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def run_folder(run, output: Path, bench_dir: Path) -> Path:
    """The run's folder in the sweep's output, or, where that is gone (a later session on a fresh machine), the
    record this script copied of it (``<bench-dir>/runs/<run>``: args.yaml, results.json, summary.csv)."""
    live, record = output / run.name, bench_dir / "runs" / run.name
    return record if not live.is_dir() and (record / "results.json").is_file() else live


def is_record(folder: Path, bench_dir: Path) -> bool:
    return folder.parent == bench_dir / "runs"


def table(sweep, output: Path, bench_dir: Path) -> str:
    e2e = next((r for r in sweep.runs if method_of(r.config) == "e2e"), None)
    e2e_top1 = read_status(e2e.name, run_folder(e2e, output, bench_dir)).top1_final if e2e else None
    lines = ["| method | K | epochs | top-1 final | top-1 best | gap to our E2E | papers' gap (K=8, their recipe) | "
             "train img/s | peak MB | wall time | state |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    statuses = [read_status(run.name, run_folder(run, output, bench_dir), run.config.get("epochs"))
                for run in sweep.runs]
    for run, s in zip(sweep.runs, statuses):
        method, k = method_of(run.config), run.config.get("model_kwargs", {}).get("num_local_modules", 1)
        gap = f"{s.top1_final - e2e_top1:+.2f}" if s.top1_final is not None and e2e_top1 is not None else ""
        paper = PAPER_K8.get(method)
        paper_gap = f"{paper[1] - paper[0]:+.2f} ({paper[2]})" if paper and k == 8 else ""
        fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
        wall = "" if s.wall_time_s is None or s.state != "done" else f"{s.wall_time_s / 60:.0f} min"
        lines.append(f"| {method} | {k} | {s.epochs_done}/{s.epochs} | {fmt(s.top1_final, '.2f')} | "
                     f"{fmt(s.top1_best, '.2f')} | {gap} | {paper_gap} | {fmt(s.images_per_sec, '.0f')} | "
                     f"{fmt(s.peak_memory_mb, '.0f')} | {wall} | {s.state} |")
    return "\n".join(lines)


START, END = "<!-- zoo table: start -->", "<!-- zoo table: end -->"


def update_between_markers(readme: Path, text: str) -> None:
    """Replace what stands between the zoo-table marker lines of ``readme`` (if it has them)."""
    if not readme.is_file():
        return
    content = readme.read_text()
    if START in content and END in content:
        head, rest = content.split(START, 1)
        readme.write_text(f"{head}{START}\n{text}\n{END}{rest.split(END, 1)[1]}")


def plot(sweep, output: Path, bench_dir: Path, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in sweep.runs:
        rows = read_summary(run_folder(run, output, bench_dir))
        if rows:
            ax.plot([r["epoch"] + 1 for r in rows], [r["eval_top1"] for r in rows], marker="o", ms=3, label=run.name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("CIFAR-10 test top-1 (%)")
    ax.set_title(f"ResNet-32, {sweep.path.stem}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep")
    parser.add_argument("--output", default=None, help="the sweep's run folders (default: the sweep file's)")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--hub-dir", default="hub_cards")
    parser.add_argument("--bench-dir", default="benchmarks/cifar10")
    parser.add_argument("--memory-bench", default=MEMORY_BENCH,
                        help="benchmark-harness JSON whose peak allocated memory the cards compare with E2E")
    args = parser.parse_args()
    sweep = load_sweep(args.sweep, output=args.output)
    output = sweep.output
    args.memory_json = memory_json(Path(args.memory_bench), Path(args.bench_dir) / "results" / "memory_bf16_cl.json")
    bench = Path(args.bench_dir)
    e2e = next((r for r in sweep.runs if method_of(r.config) == "e2e"), None)
    e2e_folder = run_folder(e2e, output, bench) if e2e else None
    reference = e2e_folder if e2e_folder and read_status(e2e.name, e2e_folder).state == "done" else None
    for run in sweep.runs:
        folder = run_folder(run, output, bench)
        if is_record(folder, bench):
            print(f"{run.name}: published earlier ({folder}); kept as it is")
            continue
        if read_status(run.name, folder).state != "done" or not run.hub_name:
            print(f"{run.name}: not done; skipped")
            continue
        record = publish_run(run, folder, reference, args)
        print(f"{run.name}: exported {run.hub_name}; validate.py --pretrained reproduces top-1 "
              f"{record['full_test_top1_pretrained']:.2f}; first {FIRST_N}: {record['top1']:.2f}")
    text = table(sweep, output, bench)
    (bench / "zoo.md").write_text(text + "\n")
    update_between_markers(bench / "README.md", text)
    plot(sweep, output, bench, bench / "zoo_top1.png")
    print(text)


if __name__ == "__main__":
    main()
