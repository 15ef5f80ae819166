"""Memory and speed benchmark of local-learning training steps against E2E (``python -m timm_local.bench``).

* :mod:`.config`: :class:`BenchConfig` (one measurement) and the preset grids.
* :mod:`.step`: the training step measured (``local_step`` → ``momentum_update`` → optimizer step).
* :mod:`.meters`: allocator peaks, bytes saved for backward, resident memory.
* :mod:`.worker`: one configuration measured in a fresh process.
* :mod:`.report`: ratios to E2E, table, JSON and plot; :mod:`.cli`: the command line.

See ``benchmarks/README.md`` for how to run it and the recorded results.
"""
from .config import PRESETS, BenchConfig, grid
from .meters import SavedTensorMeter, cpu_allocation_peak, static_bytes
from .worker import measure

__all__ = ["BenchConfig", "PRESETS", "SavedTensorMeter", "cpu_allocation_peak", "grid", "measure", "static_bytes"]
