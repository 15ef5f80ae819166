"""What a run folder says about its run, read from the trainer's own files (never from memory).

States: ``done`` (``results.json`` written: the trainer finished every epoch), ``partial``
(``last.pth.tar`` exists: resume from it), ``running`` (a live process of this sweep owns the
folder, see :mod:`.lock`), ``failed`` (the last attempt in this sweep exited non-zero; it is
retried the next time the sweep runs) and ``pending`` (nothing usable yet).
"""
from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

LAST = "last.pth.tar"
RESULTS = "results.json"
SUMMARY = "summary.csv"


@dataclass
class RunStatus:
    """A run's progress: state, epochs done, top-1 (%) and speed from its files."""

    name: str
    state: str
    epochs_done: int = 0
    epochs: Optional[int] = None
    top1_best: Optional[float] = None
    top1_final: Optional[float] = None  # only once the run is done
    images_per_sec: Optional[float] = None  # median over epochs (training only)
    wall_time_s: Optional[float] = None  # results.json's when done; else the summed epoch times so far
    peak_memory_mb: Optional[float] = None

    @property
    def resumable(self) -> bool:
        return self.state == "partial"


def read_summary(folder: Path) -> list[dict[str, float]]:
    """``summary.csv`` rows as floats ([] when missing)."""
    path = folder / SUMMARY
    if not path.is_file():
        return []
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(f)]


def read_status(name: str, folder: Path, epochs: Optional[int] = None) -> RunStatus:
    """The status of the run in ``folder`` (``epochs`` = what the sweep asks for, for the table)."""
    rows = read_summary(folder)
    status = RunStatus(name=name, state="pending", epochs=epochs, epochs_done=len(rows))
    if rows:
        status.top1_best = max(r["eval_top1"] for r in rows)
        status.images_per_sec = statistics.median(r["images_per_sec"] for r in rows)
        status.wall_time_s = sum(r["epoch_time"] for r in rows)
        status.peak_memory_mb = max(r["peak_memory_mb"] for r in rows)
    if (folder / RESULTS).is_file():
        with open(folder / RESULTS) as f:
            results = json.load(f)
        status.state = "done"
        status.epochs = results.get("epochs", epochs)
        status.top1_final, status.top1_best = results.get("top1_final"), results.get("top1_best")
        status.wall_time_s = results.get("wall_time_s")
        status.images_per_sec = results.get("train_images_per_sec", status.images_per_sec)
    elif (folder / LAST).is_file():
        status.state = "partial"
    return status
