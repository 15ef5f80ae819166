"""``python -m timm_local.evidence OUT_DIR [--smoke]``: the three parts in order, inside one time budget.

Timeline (``--budget-s``, counted from the start): part 1 gets ``--bench-s`` (the harness's
``--time-budget``, shared between its invocations as :func:`~.plan.bench_parts` declares); part 2
probes for ``--probe-solo-s`` per run alone plus ``--probe-concurrent-s`` all at once (about 20 s on the
GPU), sizes the schedule to end ``--reserve-s`` before the budget, runs the sweep and stops it
(SIGTERM) at that point whatever it is doing; part 3 exports and packs. ``OUT_DIR`` gets
``log.txt`` and ``evidence.json`` as the run goes, ``bench.tar.gz`` after part 1, ``runs.tar.gz``
every 30 s of training, and ``checkpoints-<i>.tar`` at the end (:mod:`.pack`). Exit code 0 when every
part completed, 1 otherwise (evidence.json says what), 2 on bad input.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from . import pack, plan
from .probe import run_probe
from .sizing import ProbedRun, choose_schedule

STARTUP_FACTOR = 1.5  # a train.py process does more before its first step than a probe worker (data, Accelerate)
SWEEP_STOP_GRACE_S = 20.0


class Log:
    """Lines to stdout and appended to ``OUT_DIR/log.txt``, flushed at once (a killed command keeps them)."""

    def __init__(self, path: Path):
        self.file = open(path, "a")
        self.start = time.monotonic()

    def write(self, text: str) -> int:
        sys.__stdout__.write(text)
        sys.__stdout__.flush()
        self.file.write(text)
        self.file.flush()
        return len(text)

    def flush(self) -> None:
        self.file.flush()

    def __call__(self, message: str) -> None:
        self.write(f"[{time.monotonic() - self.start:6.1f} s] {message}\n")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m timm_local.evidence", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="where the (at most 8) result files go")
    parser.add_argument("--smoke", action="store_true", help="the same code path on the CPU at tiny sizes (< 2 min)")
    parser.add_argument("--data-dir", default="carry/cifar10-jpeg",
                        help="the CIFAR-10 copy (benchmarks/gpu/prepare_carry.sh puts it there)")
    parser.add_argument("--work-dir", type=Path, default=Path("output/gpu_evidence"),
                        help="run folders, bench files and the data cache (a fresh subfolder per invocation)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="whole command (default 480; smoke 300, a cap: it ends when done)")
    parser.add_argument("--bench-s", type=float, default=None, help="part 1 (default 120; smoke 90)")
    parser.add_argument("--probe-solo-s", type=float, default=None, help="probe seconds per run alone (0.7; smoke 0.2)")
    parser.add_argument("--probe-concurrent-s", type=float, default=None,
                        help="probe seconds with all runs at once (4; smoke 0.5)")
    parser.add_argument("--reserve-s", type=float, default=None, help="left for part 3 (default 45; smoke 30)")
    args = parser.parse_args(argv)
    args.probe_warmup = None
    defaults = {"budget_s": (480, 300), "bench_s": (120, 90), "reserve_s": (45, 30), "probe_solo_s": (0.7, 0.2),
                "probe_concurrent_s": (4.0, 0.5), "probe_warmup": (3, 1)}
    for key, (full, smoke) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, smoke if args.smoke else full)
    return args


def check_inputs(args: argparse.Namespace) -> Optional[str]:
    """One line naming the problem and the fix, or None."""
    if not Path(args.data_dir).is_dir():
        return (f"--data-dir {args.data_dir} does not exist: run `bash benchmarks/gpu/prepare_carry.sh` first "
                f"(it copies ../shared/datasets/cifar10-jpeg there), or pass --data-dir")
    try:
        import datasets  # noqa: F401
    except ImportError as error:
        return (f"cannot import datasets ({error}): on the GPU machine run through benchmarks/gpu/run.sh with "
                f"carry/wheels from benchmarks/gpu/prepare_carry.sh; elsewhere pip install -e '.[train]'")
    import torch

    if not args.smoke and not torch.cuda.is_available():
        return "no CUDA device: the full run needs the GPU machine (benchmarks/gpu/README.md); use --smoke on a CPU"
    if args.budget_s <= args.bench_s + args.reserve_s:
        return f"--budget-s {args.budget_s} leaves nothing for training after --bench-s and --reserve-s: raise it"
    return None


class Evidence:
    """``OUT_DIR/evidence.json``, rewritten after every change."""

    def __init__(self, path: Path, **fields: Any):
        self.path, self.data = path, dict(fields)
        self.save()

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)


def run_bench(args, work: Path, log: Log) -> dict:
    """Part 1: each :func:`~.plan.bench_parts` invocation through the harness's own CLI, in this process."""
    from ..bench.cli import main as bench_main

    folder = work / "bench"
    folder.mkdir(parents=True)
    done = {}
    for part in plan.bench_parts(args.smoke):
        argv = list(part.argv) + ["--out", str(folder / part.name), "--time-budget", f"{part.share * args.bench_s:.0f}"]
        log(f"part 1: python -m timm_local.bench {shlex.join(argv)}")
        start = time.monotonic()
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                code = bench_main(argv)
            except Exception as error:  # a broken invocation must not cost the other parts
                log(f"part 1: {part.name} failed: {error!r}")
                code = 1
        done[part.name] = {"exit_code": code, "seconds": time.monotonic() - start, "argv": argv}
    pack.pack_bench(folder, args.out_dir)
    return done


def decode_data(args, recipe_common: dict) -> int:
    """Decode (and cache) both splits once, before the runs start; the number of training images."""
    from ..data.memory import load_tensor_split
    from ..data.source import resolve_source
    from ..data.specs import get_dataset_spec

    spec = get_dataset_spec(plan.DATASET)
    source = resolve_source(spec, args.data_dir)
    train = load_tensor_split(spec, split=spec.train_split, max_samples=recipe_common.get("max_train_samples"),
                              source=source)
    load_tensor_split(spec, split=spec.eval_split, max_samples=recipe_common.get("max_eval_samples"), source=source)
    return len(train)


def probe_and_size(args, runs, stop_at: float, device: str, log: Log) -> tuple[dict, Any]:
    """Decode the data, run the probe, and size the schedule for the time left until ``stop_at``."""
    start = time.monotonic()
    recipe = plan.Recipe(None, smoke=args.smoke)
    train_images = decode_data(args, recipe.common(args.data_dir))
    specs = [{"name": r.name, "model": r.paper_settings()["model"], "model_kwargs": r.paper_settings()["model_kwargs"]}
             for r in runs]
    probe = run_probe(specs, device=device, batch_size=plan.SMOKE_BATCH_SIZE if args.smoke else plan.BATCH_SIZE,
                      precision=recipe.precision,
                      solo_s=args.probe_solo_s, concurrent_s=args.probe_concurrent_s, warmup=args.probe_warmup,
                      threads=1 if device == "cpu" else None)
    probed = [ProbedRun(r.name, int(r.paper_settings()["epochs"]), probe["solo"][r.name]["steps_per_s"],
                        probe["concurrent"][r.name]["steps_per_s"]) for r in runs]
    startup = STARTUP_FACTOR * max(v["ready_s"] for v in probe["concurrent"].values())
    schedule = choose_schedule(probed, plan.steps_per_epoch(train_images, args.smoke), stop_at - time.monotonic(),
                               startup, max_epochs=2 if args.smoke else None)
    log(f"part 2: decode + probe {time.monotonic() - start:.1f} s; {train_images} training images; "
        f"startup {startup:.1f} s; " + "; ".join(f"{p.name} {p.solo_steps_per_s:.2f}/{p.concurrent_steps_per_s:.2f} "
                                                  f"steps/s alone/together" for p in probed))
    log(f"part 2: schedule {schedule.to_dict()}")
    probe.update(startup_s=startup, train_images=train_images)
    return probe, schedule


def run_sweep(args, sweep_path: Path, output: Path, jobs: int, device: str, stop_at: float, log: Log) -> int:
    """The sweep runner as a subprocess; SIGTERM at ``stop_at`` (monotonic); runs.tar.gz every 30 s."""
    # one thread per job on the CPU (the probe's setting; intra-op threads of small convolutions only wait on
    # each other there), the GPU machine's cores shared out otherwise
    threads = 1 if device == "cpu" else max(1, (os.cpu_count() or 1) // jobs)
    cmd = [sys.executable, "-m", "timm_local.sweep", str(sweep_path), "--jobs", str(jobs), "--threads-per-job",
           str(threads)] + (["--gpus", "0"] if device == "cuda" else [])
    log(f"part 2: {shlex.join(cmd)}")
    sweep_log = output.parent / "sweep.log"
    with open(sweep_log, "w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        packed, stopped = time.monotonic(), None
        while process.poll() is None:
            time.sleep(1.0)
            now = time.monotonic()
            if now - packed > 30:
                pack.pack_runs(output, [sweep_path, sweep_log], args.out_dir)
                packed = now
            if stopped is None and now > stop_at:
                log("part 2: the training time is up: stopping the sweep (finished epochs are kept)")
                process.send_signal(signal.SIGTERM)
                stopped = now
            elif stopped is not None and now - stopped > SWEEP_STOP_GRACE_S:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    log(f"part 2: the sweep exited with code {process.returncode}")
    return process.returncode


def export_and_pack(args, runs, output: Path, recipe: plan.Recipe, extra: list[Path], log: Log) -> dict:
    """Part 3: export done runs, pack them and the unfinished runs' last checkpoints."""
    from ..sweep.status import LAST, read_status

    statuses = {r.name: read_status(r.name, output / r.name) for r in runs}
    done = [(output / r.name, r.hub_name(recipe.tag)) for r in runs if statuses[r.name].state == "done"]
    e2e = output / plan.TRAIN_RUNS[0].name
    hub_dir = output.parent / "hub_cards"
    exports = pack.export_runs(done, hub_dir, e2e if statuses.get(e2e.name) and
                               statuses[e2e.name].state == "done" else None)
    log(f"part 3: exports {exports}")
    pack.pack_runs(output, extra, args.out_dir)
    items = [(hub_dir / name, f"hub_cards/{name}") for name, result in exports.items() if result == "ok"]
    items += [(output / r.name / LAST, f"partial/{r.name}/{LAST}") for r in runs
              if statuses[r.name].state == "partial"]
    written, left_out = pack.pack_checkpoints(items, args.out_dir)
    log(f"part 3: wrote {[p.name for p in written]}; left out {left_out}")
    return {"runs": {n: {"state": s.state, "epochs_done": s.epochs_done, "top1_final": s.top1_final,
                         "top1_best": s.top1_best}
                     for n, s in statuses.items()},
            "exports": exports, "checkpoint_files": [p.name for p in written], "left_out": left_out}


def run_training(args, runs, stop_at: float, device: str, work: Path, evidence: Evidence,
                 log: Log) -> tuple[plan.Recipe, Optional[int]]:
    """Part 2: probe and size, write ``<work>/sweep.yaml``, run the sweep until ``stop_at``.

    Returns the recipe and the sweep's exit code (None when the probe failed: then nothing trained,
    the error is in evidence.json, and part 3 still packs what part 1 left).
    """
    try:
        probe, schedule = probe_and_size(args, runs, stop_at, device, log)
    except Exception as error:  # part 1's results must still come back
        log(f"part 2: FAILED before training: {error!r}")
        evidence["part2_error"] = repr(error)
        return plan.Recipe(None, smoke=args.smoke), None
    recipe = plan.Recipe(schedule.epochs, smoke=args.smoke)
    sweep_path = work / "sweep.yaml"
    sweep_path.write_text(yaml.safe_dump(plan.sweep_file(runs, recipe, args.data_dir, work / "runs"), sort_keys=False))
    evidence["probe"], evidence["schedule"] = probe, schedule.to_dict()
    evidence["recipe"] = {"tag": recipe.tag, "common": recipe.common(args.data_dir)}
    return recipe, run_sweep(args, sweep_path, work / "runs", schedule.jobs, device, stop_at, log)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    problem = check_inputs(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    start = time.monotonic()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    work = args.work_dir / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True)
    os.environ.update(TIMM_LOCAL_CACHE=str((work / "data_cache").resolve()), HF_HUB_OFFLINE="1",
                      HF_DATASETS_OFFLINE="1")
    log = Log(args.out_dir / "log.txt")
    device = "cpu" if args.smoke else "cuda"
    from ..bench.worker import environment

    evidence = Evidence(args.out_dir / "evidence.json", command="python -m timm_local.evidence " + shlex.join(argv),
                        smoke=args.smoke, environment=environment(device), work_dir=str(work),
                        budget_s=args.budget_s)
    log(f"timm_local.evidence: {'smoke, CPU' if args.smoke else 'GPU'}; budget {args.budget_s:.0f} s; work {work}")

    evidence["bench"] = run_bench(args, work, log)
    evidence["part1_s"] = time.monotonic() - start

    runs = plan.train_runs(args.smoke)
    output = work / "runs"
    recipe, sweep_code = run_training(args, runs, start + args.budget_s - args.reserve_s, device, work, evidence, log)
    evidence["part2_s"] = time.monotonic() - start - evidence.data["part1_s"]

    result = export_and_pack(args, runs, output, recipe, [work / "sweep.yaml", work / "sweep.log"], log)
    evidence.data.update(result, sweep_exit_code=sweep_code, total_s=time.monotonic() - start)
    evidence.save()
    complete = (all(b["exit_code"] == 0 for b in evidence.data["bench"].values()) and sweep_code == 0
                and all(r == "ok" for r in result["exports"].values()) and not result["left_out"])
    log(f"timm_local.evidence: {'complete' if complete else 'INCOMPLETE (see evidence.json)'} in "
        f"{time.monotonic() - start:.0f} s; files in {args.out_dir}: {sorted(p.name for p in args.out_dir.iterdir())}")
    return 0 if complete else 1
