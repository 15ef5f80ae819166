"""The table of a sweep's runs: printed, and written as ``<output>/sweep.md`` and ``sweep.csv``."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Optional, Sequence

from .status import RunStatus

COLUMNS = ("run", "state", "epoch", "top1_best", "top1_final", "img_per_s", "peak_mb", "wall_time")


def _num(value: Optional[float], fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    minutes = int(round(seconds / 60))
    return f"{minutes // 60}h{minutes % 60:02d}m"


def table_rows(statuses: Sequence[RunStatus]) -> list[dict[str, str]]:
    """One row per run. ``wall_time`` is results.json's for done runs, the summed epoch times otherwise."""
    return [{
        "run": s.name, "state": s.state, "epoch": f"{s.epochs_done}/{s.epochs if s.epochs is not None else '?'}",
        "top1_best": _num(s.top1_best, ".2f"), "top1_final": _num(s.top1_final, ".2f"),
        "img_per_s": _num(s.images_per_sec, ".1f"), "peak_mb": _num(s.peak_memory_mb, ".0f"),
        "wall_time": _duration(s.wall_time_s),
    } for s in statuses]


def format_table(statuses: Sequence[RunStatus]) -> str:
    """A Markdown table of the runs."""
    rows = table_rows(statuses)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(row[c] for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def write_table(statuses: Sequence[RunStatus], output: Path) -> str:
    """Write ``sweep.md`` and ``sweep.csv`` into ``output`` (atomically); return the Markdown table."""
    text = format_table(statuses)
    _atomic_write(output / "sweep.md", text + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(table_rows(statuses))
    _atomic_write(output / "sweep.csv", buffer.getvalue())
    return text


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
