"""The sweep file: shared train.py settings plus a list of named runs.

::

    output: output/sweeps/cifar10-cpu10e     # parent of the run folders (--output overrides it)
    common:                                  # train.py config keys shared by every run
      dataset: cifar10
      epochs: 10
    runs:
      - name: resnet32_e2e-k1                # the run folder's name (unique)
        config: configs/cifar10/resnet32_e2e_k1.yaml   # optional: a train.py config to start from
        args: {model_kwargs: {num_local_modules: 1}}   # optional: keys over config and common
        hub_name: resnet32_e2e.k1_cpu10e_cifar10       # optional: exported there when the run ends

A run's train.py config is ``config`` < ``common`` < ``args`` (later wins; ``model_kwargs`` is
merged key by key). Every resolved config is checked with train.py's own parser before anything
starts, so a typo fails the whole sweep at once with train.py's message. Relative paths in the
sweep file (``config``, ``output``) are relative to the current directory, like train.py's.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import yaml

from ..train.args import build_parser, load_config

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SWEEP_KEYS = {"output", "common", "runs"}
RUN_KEYS = {"name", "config", "args", "hub_name"}


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its folder name, resolved train.py config and optional Hub export name."""

    name: str
    config: dict[str, Any]
    hub_name: Optional[str] = None


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file."""

    path: Path
    output: Path
    runs: list[RunSpec] = field(default_factory=list)


def load_sweep(path: str | Path, output: Optional[str | Path] = None) -> SweepSpec:
    """Read and validate a sweep file; ``output`` overrides the file's ``output``."""
    path = Path(path)
    raw = _read_mapping(path)
    _reject_unknown(raw, SWEEP_KEYS, f"{path}")
    output = Path(output or raw.get("output") or Path("output/sweeps") / path.stem)
    common = raw.get("common") or {}
    runs_raw = raw.get("runs")
    if not isinstance(runs_raw, list) or not runs_raw:
        raise ValueError(f"{path}: 'runs' must be a non-empty list of runs (each with at least a 'name')")
    parser = build_parser()
    runs, seen = [], set()
    for i, entry in enumerate(runs_raw):
        where = f"{path}: runs[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping with 'name' and 'config' or 'args', got {entry!r}")
        _reject_unknown(entry, RUN_KEYS, where)
        name = str(entry.get("name", ""))
        if not NAME.fullmatch(name):
            raise ValueError(f"{where}: name {name!r} must be a folder name (letters, digits, '.', '_', '-')")
        if name in seen:
            raise ValueError(f"{where}: the name {name!r} is used twice; every run needs its own folder")
        seen.add(name)
        base = load_config(entry["config"], parser) if entry.get("config") else {}
        config = merge_configs(base, _dest_keys(common), _dest_keys(entry.get("args") or {}))
        _check_keys(config, parser, where)
        runs.append(RunSpec(name=name, config=config, hub_name=entry.get("hub_name")))
    return SweepSpec(path=path, output=output, runs=runs)


def select_runs(sweep: SweepSpec, patterns: Optional[list[str]]) -> SweepSpec:
    """The sweep restricted to the runs whose names match any of ``patterns`` (shell wildcards, ``fnmatch``), in
    the file's order; ``None`` keeps every run. A pattern that matches no run is an error naming the runs."""
    if patterns is None:
        return sweep
    names = [r.name for r in sweep.runs]
    unmatched = [p for p in patterns if not fnmatch.filter(names, p)]
    if unmatched:
        raise ValueError(f"--runs {' '.join(unmatched)} matches no run of {sweep.path}; its runs are: {', '.join(names)}")
    return replace(sweep, runs=[r for r in sweep.runs if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)])


def merge_configs(*configs: dict[str, Any]) -> dict[str, Any]:
    """Later configs win key by key; ``model_kwargs`` dicts are merged instead of replaced."""
    merged: dict[str, Any] = {}
    for config in configs:
        for key, value in config.items():
            if key == "model_kwargs":
                merged[key] = {**merged.get(key, {}), **(value or {})}
            else:
                merged[key] = value
    return merged


def write_run_config(run: RunSpec, folder: Path) -> Path:
    """The run's resolved config as ``<folder>/<name>.yaml`` (what ``train.py --config`` reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(run.config, sort_keys=False))
    return path


def _read_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such sweep file")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping with 'common' and 'runs', got {type(raw).__name__}")
    return raw


def _reject_unknown(mapping: dict, valid: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - valid)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} (valid: {sorted(valid)})")


def _dest_keys(config: dict[str, Any]) -> dict[str, Any]:
    """``batch-size`` → ``batch_size``, as train.py's config loader accepts both."""
    return {str(k).replace("-", "_"): v for k, v in config.items()}


def _check_keys(config: dict[str, Any], parser, where: str) -> None:
    for key in ("output", "experiment", "resume"):
        if key in config:
            raise ValueError(f"{where}: '{key}' is set by the sweep (the run folder is <output>/<name>); remove it")
    valid = {action.dest for action in parser._actions}
    unknown = sorted(set(config) - valid)
    if unknown:
        raise ValueError(f"{where}: unknown train.py key(s) {unknown}; see python train.py --help")
