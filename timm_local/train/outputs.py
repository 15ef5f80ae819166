"""The run folder: ``args.yaml``, ``summary.csv``, ``results.json`` (the run-directory contract), and memory."""
from __future__ import annotations

import csv
import json
import os
import platform
import resource
import sys
from typing import Any, Mapping, Sequence

import torch
import yaml


def summary_columns(num_local_modules: int) -> list[str]:
    """The columns of ``summary.csv``: ``epoch, train_loss_m0 .. train_loss_m{K-1}, eval_loss, eval_top1,
    eval_top5, lr, epoch_time, images_per_sec, peak_memory_mb``."""
    return (["epoch"] + [f"train_loss_m{k}" for k in range(num_local_modules)]
            + ["eval_loss", "eval_top1", "eval_top5", "lr", "epoch_time", "images_per_sec", "peak_memory_mb"])


def write_args_yaml(path: str, args: Mapping[str, Any]) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(dict(args), f, default_flow_style=False, sort_keys=False)


class SummaryCsv:
    """``summary.csv``, one row per epoch. On resume, rows of epochs that will be re-run are dropped (like timm)."""

    def __init__(self, path: str, columns: Sequence[str], start_epoch: int = 0):
        self.path, self.columns = path, list(columns)
        rows = []
        if start_epoch > 0 and os.path.isfile(path):
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < start_epoch]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: Mapping[str, Any]) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise KeyError(f"summary.csv has no column(s) {sorted(unknown)}")
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow(dict(row))


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """``torch.cuda.max_memory_allocated`` since the last reset on a GPU; the process's peak RSS on the CPU.

    The CPU figure (``getrusage(RUSAGE_SELF).ru_maxrss``) cannot be reset, so it is the peak since the
    process started, data loading included.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({_cpu_model() or platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _cpu_model() -> str:
    """The processor's name from /proc/cpuinfo (Linux), else ''."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


def package_versions() -> dict[str, str]:
    import accelerate
    import timm

    import timm_local

    return {"torch": torch.__version__, "timm": timm.__version__, "timm_local": timm_local.__version__,
            "accelerate": accelerate.__version__}


def write_json(path: str, obj: Mapping[str, Any]) -> None:
    """Write ``obj`` as JSON atomically (a temporary file renamed onto ``path``): a reader never sees half a file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(dict(obj), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
