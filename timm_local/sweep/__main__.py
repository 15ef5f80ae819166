"""``python -m timm_local.sweep <sweep.yaml> [--jobs N] [--threads-per-job T] [--runs PATTERN ...] [--status]``: see
docs/SWEEPS.md."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .runner import SweepRunner
from .spec import load_sweep, select_runs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m timm_local.sweep",
                                     description="Run a sweep of train.py configs, resuming unfinished runs.")
    parser.add_argument("sweep", help="the sweep file (YAML: output, common, runs)")
    parser.add_argument("--jobs", type=int, default=1, help="train.py processes at a time")
    parser.add_argument("--threads-per-job", type=int, default=1, help="OMP/MKL threads of each process")
    parser.add_argument("--gpus", default=None,
                        help="comma-separated GPU indices handed to job slots round-robin (e.g. 0,0 = 2 jobs on GPU 0)")
    parser.add_argument("--output", default=None, help="parent of the run folders (default: the sweep file's)")
    parser.add_argument("--export-to", default=None, metavar="HUB_DIR",
                        help="export each run that finishes and has a hub_name into this folder (e.g. hub_cards)")
    parser.add_argument("--runs", nargs="+", default=None, metavar="PATTERN",
                        help="only the runs whose names match one of these (shell wildcards, e.g. 'resnet32_mlaan*'); "
                             "the others are neither started nor shown")
    parser.add_argument("--status", action="store_true", help="print the table of runs and exit; start nothing")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sweep = select_runs(load_sweep(args.sweep, output=args.output), args.runs)
        runner = SweepRunner(sweep, jobs=args.jobs, threads_per_job=args.threads_per_job,
                             gpus=args.gpus.split(",") if args.gpus else None,
                             export_to=Path(args.export_to) if args.export_to else None)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.status:
        print(runner.write_table())
        return 0
    return runner.run()


if __name__ == "__main__":
    sys.exit(main())
