"""Measure one :class:`~timm_local.bench.config.BenchConfig` in this process.

:func:`measure` is what runs inside the fresh subprocess the CLI starts per configuration
(``python -m timm_local.bench.worker '<config json>'`` prints one JSON line).

GPU: after the warm-up steps (cudnn.benchmark on), ``reset_peak_memory_stats()``; then the timed
steps, whose ``max_memory_allocated()`` / ``max_memory_reserved()`` are the peaks of whole training
steps; time from ``torch.cuda.synchronize()``-bounded wall clock.

CPU, in this order (the process must be fresh, see the CLI):

1. Memory. The CLI starts the worker with ``MALLOC_MMAP_THRESHOLD_=65536``, so glibc serves every
   tensor from its own mapping and returns it to the OS when freed: resident memory then follows
   live tensors instead of the allocator's free lists. ``rss_baseline`` is read after model,
   optimizer state and batch exist, and the peak is reset there (Linux ``clear_refs``); the warm-up
   steps run; ``rss_peak`` is then the process's ``ru_maxrss`` (the raw figure: the whole process,
   Python and libraries included) and ``rss_activation = rss_peak - rss_baseline`` what the steps
   added (activations, gradients, temporaries and library workspaces).
2. Deterministic figures: one step under both :class:`~timm_local.bench.meters.SavedTensorMeter`
   (bytes saved for backward) and :func:`~timm_local.bench.meters.cpu_allocation_peak` (peak
   allocated bytes, the CPU analogue of ``max_memory_allocated``).
3. Speed. glibc is switched back to throughput settings (``mallopt``; fresh mappings cost a page
   fault per page), one more warm-up step, then the timed steps: wall time and process CPU time
   (user + system) of each, and their minima (what the step costs when nothing else competes for
   the cores; on a shared machine CPU time is the robust figure).
"""
from __future__ import annotations

import ctypes
import datetime
import json
import os
import platform
import resource
import sys
import time

import torch

from .config import BenchConfig
from .meters import MiB, SavedTensorMeter, cpu_allocation_peak, reset_rss_peak, rss_now, rss_peak, static_bytes
from .step import create_model, create_optimizer, make_step, synthetic_batch

RESULT_MARK = "BENCH_RESULT "
MMAP_THRESHOLD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _malloc_for_speed() -> bool:
    """Give glibc back its throughput behaviour (32 MiB mmap threshold, 64 MiB trim threshold); False if not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 * MiB)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 64 * MiB))
    except OSError:
        return False


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"{_cpu_model()} ({platform.machine()}, {os.cpu_count()} logical CPUs)"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.platform()


def environment(device: str) -> dict:
    """Device name and library versions recorded with every result."""
    import timm

    import timm_local

    return {"device_name": device_name(device), "torch": torch.__version__, "timm": timm.__version__,
            "timm_local": timm_local.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _saved_peak_mb(model, step) -> float:
    meter = SavedTensorMeter(model)
    with meter.measure():
        step()
    return meter.peak / MiB


def _measure_cuda(config: BenchConfig, model, optimizer, step) -> dict:
    for _ in range(config.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(config.steps):
        step()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / config.steps
    return {"peak_alloc_mb": torch.cuda.max_memory_allocated() / MiB,
            "peak_reserved_mb": torch.cuda.max_memory_reserved() / MiB,
            "saved_peak_mb": _saved_peak_mb(model, step), "step_time_s": wall}


def _measure_cpu(config: BenchConfig, model, optimizer, step) -> dict:
    baseline, peak_reset = rss_now(), reset_rss_peak()
    for _ in range(config.warmup):
        step()
    peak = rss_peak()
    figures = {"rss_baseline_mb": baseline / MiB, "rss_peak_mb": peak / MiB,
               "rss_activation_mb": (peak - baseline) / MiB, "rss_peak_reset": peak_reset}
    meter = SavedTensorMeter(model)
    with meter.measure():  # the meter allocates no tensors: both deterministic figures come from one step
        alloc = cpu_allocation_peak(step, static_bytes(model, optimizer))
    figures.update(peak_alloc_mb=alloc / MiB if alloc is not None else None, saved_peak_mb=meter.peak / MiB,
                   malloc_switched=_malloc_for_speed())
    step()
    walls, cpus = [], []
    for _ in range(config.steps):
        wall, cpu = time.perf_counter(), _cpu_seconds()
        step()
        walls.append(time.perf_counter() - wall)
        cpus.append(_cpu_seconds() - cpu)
    figures.update(step_time_s=min(walls), cpu_time_per_step_s=min(cpus), step_times_s=walls, cpu_times_s=cpus)
    return figures


def measure(config: BenchConfig) -> dict:
    """Build the model of ``config``, run its steps and return every figure (bytes in MiB, times in s)."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    cuda = torch.device(config.device).type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = create_model(config)
    optimizer = create_optimizer(model, config.device)
    x, y = synthetic_batch(config, model.num_classes)
    step = make_step(config, model, optimizer, x, y)
    result = {"config": config.to_dict(), "label": config.label, "series": config.series, "model": config.model_name,
              "num_local_modules": model.num_local_modules, "cuts": list(model.cuts), "split_kind": model.split_kind,
              "blocks_per_module": [len(m.blocks) for m in model.local_modules],
              "num_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "static_mb": static_bytes(model, optimizer) / MiB, "threads": torch.get_num_threads(),
              **environment(config.device)}
    result.update((_measure_cuda if cuda else _measure_cpu)(config, model, optimizer, step))
    result["images_per_s"] = config.batch_size / result["step_time_s"]
    return result


def main(argv=None) -> None:
    """``python -m timm_local.bench.worker '<BenchConfig as JSON>'``: print the result as one marked JSON line."""
    argv = sys.argv[1:] if argv is None else argv
    config = BenchConfig(**json.loads(argv[0]))
    print(RESULT_MARK + json.dumps(measure(config)), flush=True)


if __name__ == "__main__":
    main()
