"""Peak training memory of a model vs its E2E baseline, read from a benchmark JSON.

The file holds one row per measured configuration, all measured by one command on one device::

    {"command": "python -m ...", "device": "NVIDIA H100 80GB HBM3", "batch_size": 1024, "mixed_precision": "bf16",
     "results": [{"model": "resnet32_e2e", "num_local_modules": 1, "peak_memory_mb": 2210.4},
                 {"model": "resnet32_man", "num_local_modules": 16, "peak_memory_mb": 871.9},
                 {"model": "resnet32_e2e", "grad_checkpointing": true, "peak_memory_mb": 1010.2}]}

A row may repeat ``command``, ``device``, ``batch_size`` or ``mixed_precision`` to override the
top level. The baseline is the row of ``<backbone>_e2e`` (e.g. ``resnet32_e2e`` for ``resnet32_man``)
without gradient checkpointing; rows with ``grad_checkpointing: true`` never match.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

_CONTEXT_KEYS = ("command", "device", "batch_size", "mixed_precision")


@dataclass(frozen=True)
class MemoryComparison:
    """Peak training memory (MB) of the model and of E2E, measured in the same benchmark."""

    peak_memory_mb: float
    e2e_peak_memory_mb: float
    device: Optional[str]
    batch_size: Optional[int]
    mixed_precision: Optional[str]
    command: Optional[str]

    @property
    def saving(self) -> float:
        """1 − peak / peak_E2E (0.62 = 62% less memory than E2E)."""
        return 1.0 - self.peak_memory_mb / self.e2e_peak_memory_mb


def e2e_arch(arch: str, method: str) -> str:
    """``resnet32_man`` → ``resnet32_e2e``: the same backbone trained end to end."""
    suffix = f"_{method}"
    if not arch.endswith(suffix):
        raise ValueError(f"architecture {arch!r} does not end with its method's name {suffix!r}")
    return arch[: -len(suffix)] + "_e2e"


def compare_memory(bench_json: Union[str, Path], arch: str, method: str, num_local_modules: int) -> MemoryComparison:
    """The rows of ``arch`` at K = ``num_local_modules`` and of its E2E baseline in ``bench_json``."""
    with open(bench_json) as f:
        bench = json.load(f)
    rows = [row for row in bench.get("results", []) if not row.get("grad_checkpointing")]
    model_row = _find(rows, arch, num_local_modules)
    baseline = _find(rows, e2e_arch(arch, method), None)
    missing = [name for name, row in ((f"{arch} K={num_local_modules}", model_row),
                                      (e2e_arch(arch, method), baseline)) if row is None]
    if missing:
        have = ", ".join(f"{r.get('model')} K={r.get('num_local_modules')}" for r in rows) or "no rows"
        raise ValueError(f"{bench_json} has no peak memory for {' or '.join(missing)} (it has: {have})")
    context = {key: model_row.get(key, bench.get(key)) for key in _CONTEXT_KEYS}
    return MemoryComparison(peak_memory_mb=float(model_row["peak_memory_mb"]),
                            e2e_peak_memory_mb=float(baseline["peak_memory_mb"]), **context)


def _find(rows: list[dict[str, Any]], model: str, num_local_modules: Optional[int]) -> Optional[dict[str, Any]]:
    for row in rows:
        if row.get("model") == model and row.get("peak_memory_mb") is not None and (
                num_local_modules is None or row.get("num_local_modules") == num_local_modules):
            return row
    return None
