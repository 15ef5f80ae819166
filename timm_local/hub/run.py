"""Read a training run as the trainer leaves it (the run-directory contract).

``<run>/args.yaml`` (resolved args), ``<run>/results.json`` (written when training ends),
``<run>/last.pth.tar`` / ``model_best.pth.tar`` (``epoch``, ``arch``, ``state_dict`` of the full
LocalNet, ``args``, ``model_kwargs``, ``metric`` = eval top-1 in %, ...). A run folder exports its
``last.pth.tar`` (the final weights, the figure papers report); pass a checkpoint file to export
another one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
import yaml
from timm.models import clean_state_dict
from timm.models._registry import split_model_name_tag

LAST_CHECKPOINT = "last.pth.tar"


@dataclass
class Run:
    """One checkpoint of a training run, with the run's args and (once it finished) its results.

    Attributes:
        checkpoint_path: the checkpoint being exported.
        arch: timm architecture name (any tag stripped), e.g. ``resnet32_man``.
        dataset: the ``--dataset`` it was trained on.
        model_kwargs: the ``create_model`` kwargs of the run.
        args: ``args.yaml`` (or the checkpoint's copy of the args when the file is missing).
        results: ``results.json``, or None when the run has not finished.
        state_dict: the full LocalNet state dict (aux nets and momentum copies included).
        epoch: the last completed epoch of this checkpoint (0-based).
        top1: eval top-1 (%) of these weights, as the trainer measured it after ``epoch``.
    """

    checkpoint_path: Path
    arch: str
    dataset: str
    model_kwargs: dict[str, Any]
    args: dict[str, Any]
    results: Optional[dict[str, Any]]
    state_dict: dict[str, torch.Tensor]
    epoch: int
    top1: Optional[float]


def load_run(path: Union[str, Path]) -> Run:
    """A run folder (its ``last.pth.tar``) or a checkpoint file inside one."""
    path = Path(path)
    checkpoint_path = path / LAST_CHECKPOINT if path.is_dir() else path
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"{checkpoint_path}: no such checkpoint; pass a run folder holding {LAST_CHECKPOINT} "
                                f"or a checkpoint file (e.g. <run>/model_best.pth.tar)")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    missing = [k for k in ("arch", "state_dict", "epoch") if k not in checkpoint]
    if missing:
        raise ValueError(f"{checkpoint_path} is not a timm_local training checkpoint (it has no {missing}); export "
                         f"reads the checkpoints train.py writes")
    run_dir = checkpoint_path.parent
    args = _read_yaml(run_dir / "args.yaml") or dict(checkpoint.get("args") or {})
    if "dataset" not in args:
        raise ValueError(f"neither {run_dir / 'args.yaml'} nor the checkpoint records the run's dataset")
    return Run(
        checkpoint_path=checkpoint_path,
        arch=split_model_name_tag(checkpoint["arch"])[0],
        dataset=args["dataset"],
        model_kwargs=dict(checkpoint.get("model_kwargs") or args.get("model_kwargs") or {}),
        args=args,
        results=_read_json(run_dir / "results.json"),
        state_dict=clean_state_dict(checkpoint["state_dict"]),
        epoch=int(checkpoint["epoch"]),
        top1=checkpoint.get("metric"),
    )


def load_reference_run(path: Union[str, Path]) -> Run:
    """The E2E run a card compares with: a run folder (:func:`load_run`), or, once its weights are gone, the
    record a sweep report keeps of it (``args.yaml`` + ``results.json``), since a card states only its results."""
    path = Path(path)
    if not path.is_dir() or (path / LAST_CHECKPOINT).is_file():
        return load_run(path)
    args, results = _read_yaml(path / "args.yaml"), _read_json(path / "results.json")
    if not args or not results or "model" not in args:
        raise FileNotFoundError(f"{path}: neither a run folder with {LAST_CHECKPOINT} nor a finished run's record "
                                f"(args.yaml naming the model, and results.json)")
    return Run(checkpoint_path=path, arch=split_model_name_tag(args["model"])[0], dataset=args["dataset"],
               model_kwargs=dict(args.get("model_kwargs") or {}), args=args, results=results, state_dict={},
               epoch=int(results["epochs"]) - 1, top1=results.get("top1_final"))


def _read_yaml(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    with open(path) as f:
        return yaml.safe_load(f) or {}


def _read_json(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)
