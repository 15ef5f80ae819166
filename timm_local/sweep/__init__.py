"""Run a list of train.py configurations, N at a time, resumably: ``python -m timm_local.sweep sweep.yaml``.

Modules: :mod:`.spec` (the sweep file and each run's resolved config), :mod:`.status` (what a run
folder says about its run), :mod:`.runner` (starting, resuming and supervising the train.py
processes) and :mod:`.table` (the table of runs). See docs/SWEEPS.md.
"""
from .runner import SweepRunner
from .spec import RunSpec, SweepSpec, load_sweep, select_runs
from .status import RunStatus, read_status
from .table import format_table, write_table

__all__ = ["RunSpec", "RunStatus", "SweepRunner", "SweepSpec", "format_table", "load_sweep", "read_status",
           "select_runs", "write_table"]
