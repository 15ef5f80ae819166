"""How many intra-op threads a training process uses on the CPU when the user does not say (issue 13).

Measured on the project's 2-core machine (benchmarks/cifar10/README.md, "Threads"): on idle cores two
threads train ResNet-32 1.2–1.7× faster than one, but on cores that other jobs keep busy two threads
ran E2E at 69 img/s against one thread's 293 (InfoPro K=8: 29 vs 146), because PyTorch's threads wait
on each other for a core. So the default takes the cores the machine has free now, never fewer than one:

    threads = max(1, min(cpus // local_processes, cpus − round(load)))

with ``cpus`` the CPUs this process may run on, ``load`` the CPUs busy right now (from two reads of
``/proc/stat`` 0.2 s apart; the 1-minute load average where there is no ``/proc/stat``, which still counts a
``pip install`` that just ended) and ``local_processes`` the training processes on this machine.
``OMP_NUM_THREADS`` (set by the user, or by torchrun for several processes) and ``--threads`` win over it.
"""
from __future__ import annotations

import os
import time
from typing import Optional

import torch


def free_cpu_threads(cpus: int, load: float, local_processes: int = 1) -> int:
    """The default above: ``max(1, min(cpus // local_processes, cpus − round(load)))``."""
    return max(1, min(cpus // max(1, local_processes), cpus - round(load)))


def choose_threads(requested: Optional[int], local_processes: int = 1) -> tuple[int, str]:
    """``(threads, why)``: ``--threads`` if given, else ``OMP_NUM_THREADS`` if set, else :func:`free_cpu_threads`."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be >= 1, got {requested} (leave it out for the default)")
        return requested, "--threads"
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = busy_cpus()
    threads = free_cpu_threads(cpus, load, local_processes)
    return threads, f"{cpus} CPUs, {load:.1f} busy, {local_processes} process(es) here; --threads to choose"


def busy_cpus(interval_s: float = 0.2, stat: str = "/proc/stat") -> float:
    """CPUs busy now: (1 − idle share of the aggregate ``cpu`` line over ``interval_s``) × CPUs on the machine;
    the 1-minute load average where ``stat`` cannot be read."""
    try:
        first = _cpu_times(stat)
        time.sleep(interval_s)
        second = _cpu_times(stat)
    except (OSError, ValueError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    total = sum(second) - sum(first)
    idle = (second[3] + second[4]) - (first[3] + first[4])  # idle + iowait
    return (1.0 - idle / total) * (os.cpu_count() or 1) if total > 0 else 0.0


def _cpu_times(stat: str) -> list[int]:
    """The aggregate ``cpu`` line of /proc/stat: user nice system idle iowait irq softirq steal (clock ticks)."""
    with open(stat) as f:
        fields = f.readline().split()
    if not fields or fields[0] != "cpu" or len(fields) < 6:
        raise ValueError(f"{stat}: no aggregate cpu line")
    return [int(v) for v in fields[1:9]]
