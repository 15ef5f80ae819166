"""The run folder ``<output>/<experiment>/`` and everything written into it during training.

Files (the run-directory contract): ``args.yaml``, ``summary.csv`` (one row per epoch),
``last.pth.tar`` (every epoch) and ``model_best.pth.tar`` (best eval top-1), ``results.json``
(at the end). Only the main process writes; every rank takes part in the collectives.

A run folder belongs to one live run: ``.lock`` holds its ``pid@host`` (:mod:`timm_local.pidlock`),
and a folder that already holds a checkpoint or ``results.json`` is only ever continued by
``--resume`` from its own checkpoint, never overwritten (:func:`claim_run_folder`).
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import torch
from accelerate import Accelerator, PartialState

from ..io import atomic_save
from ..local import LocalNet
from ..pidlock import PidLock
from .args import args_to_dict
from .checkpoint import BEST, LAST, build_checkpoint, capture_rng_states
from .distributed import gather_objects
from .metrics import LossMonitor
from .outputs import (SummaryCsv, device_name, package_versions, peak_memory_mb, reset_peak_memory, summary_columns,
                      write_args_yaml, write_json)

RESULTS, RUN_LOCK = "results.json", ".lock"
WORTH_KEEPING = (LAST, BEST, RESULTS)  # a folder holding any of these has a run that must not be overwritten


def count_summary_rows(folder: str) -> int:
    """Epochs recorded in ``<folder>/summary.csv`` (each only once its checkpoint was written)."""
    try:
        with open(os.path.join(folder, "summary.csv")) as f:
            return max(sum(1 for _ in f) - 1, 0)
    except OSError:
        return 0


def summary_row(epoch: int, losses: list[float], metrics: dict[str, float], *, lr: float, train_time: float,
                samples: float, peak_memory: float) -> dict[str, float]:
    """One ``summary.csv`` row: per-module mean train losses, eval metrics, lr, time, images/s, peak memory."""
    return {"epoch": epoch, **{f"train_loss_m{k}": v for k, v in enumerate(losses)}, **metrics, "lr": lr,
            "epoch_time": train_time, "images_per_sec": samples / max(train_time, 1e-9), "peak_memory_mb": peak_memory}


class RunFolderError(ValueError):
    """The run folder is in use by another live run, or holds a run this command would overwrite."""


def claim_run_folder(run_dir: str, resume: str) -> PidLock:
    """Lock ``run_dir`` for this process, or raise :class:`RunFolderError` naming the problem and the fix.

    Refused: a folder locked by a live process, and a folder holding a checkpoint or ``results.json``
    unless this command resumes from a checkpoint in that very folder. A folder with nothing worth
    keeping (a run killed before its first checkpoint) is reused.
    """
    lock = PidLock(os.path.join(run_dir, RUN_LOCK))
    resuming_here = bool(resume) and os.path.dirname(os.path.abspath(resume)) == os.path.abspath(run_dir)
    existing = [name for name in WORTH_KEEPING if os.path.isfile(os.path.join(run_dir, name))]
    if existing and not resuming_here:
        hint = f"resume it with --resume {os.path.join(run_dir, LAST)}" if LAST in existing else "delete it"
        raise RunFolderError(f"run folder {run_dir} already holds a run ({', '.join(existing)}): {hint}, or choose "
                             f"another --experiment (nothing was overwritten)")
    owner = lock.try_acquire()
    if owner is not None:
        raise RunFolderError(f"run folder {run_dir} is in use by the live run {owner}: wait for it to end, or choose "
                             f"another --experiment")
    return lock


def resolve_run_dir(args: argparse.Namespace) -> str:
    """``<output>/<experiment>``; the default experiment is ``<date-time>-<model>[-k<K>]-<dataset>``, or the
    folder of ``--resume`` when resuming. The same on every rank (rank 0 picks, the others receive)."""
    state = PartialState(cpu=args.cpu)
    experiment = args.experiment
    if not experiment and args.resume:
        return os.path.dirname(os.path.abspath(args.resume))
    if not experiment and state.is_main_process:
        k = args.model_kwargs.get("num_local_modules")
        parts = [datetime.now().strftime("%Y%m%d-%H%M%S"), args.model] + ([f"k{k}"] if k else []) + [args.dataset]
        experiment = "-".join(parts)
    if state.num_processes > 1:
        box = [experiment]
        torch.distributed.broadcast_object_list(box, src=0)
        experiment = box[0]
    return os.path.join(args.output, experiment)


class RunFolder:
    """Writes the run folder. ``begin`` once the model exists, ``end_epoch`` after each evaluation, ``finish``."""

    def __init__(self, args: argparse.Namespace):
        """Resolve and claim the folder (every rank raises the main process's :class:`RunFolderError`).

        ``args.output`` / ``args.experiment`` are set to the folder actually used, so args.yaml records it.
        """
        self.args = args
        self.dir = resolve_run_dir(args)
        args.output, args.experiment = os.path.dirname(self.dir), os.path.basename(self.dir)
        self.loader_batches_per_sec: Optional[float] = None
        self._lock: Optional[PidLock] = None
        state, problem = PartialState(cpu=args.cpu), None
        if state.is_main_process:
            try:
                self._lock = claim_run_folder(self.dir, args.resume)
            except RunFolderError as error:
                problem = str(error)
        if state.num_processes > 1:
            box = [problem]
            torch.distributed.broadcast_object_list(box, src=0)
            problem = box[0]
        if problem:
            raise RunFolderError(problem)

    def release(self) -> None:
        """Give up the folder's lock (at the end of the run, also when it fails)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def begin(self, model: LocalNet, accelerator: Accelerator, resume: Optional[Any] = None,
              writer: Optional[bool] = None) -> None:
        """Write args.yaml and the summary header; ``resume`` is the :class:`~.resume.ResumeState`, if any.

        ``writer``: whether this process writes the folder's files (default: the main process; a pipelined run's
        is its last stage's first replica, which holds the evaluation and the gathered state).
        """
        self.model, self.accelerator = model, accelerator
        self.writer = accelerator.is_main_process if writer is None else writer
        self.num_params = sum(p.numel() for p in model.backbone.parameters())  # before a pipeline releases any
        self.extra_results: dict[str, Any] = {}
        self.start_epoch = resume.epoch if resume else 0
        self.arch = self.args.model
        previous = resume.checkpoint.get("run_state", {}) if resume else {}
        self.resumes: list[dict] = list(previous.get("resumes", []))
        if resume:
            self.resumes.append({"epoch": self.start_epoch, "changed": resume.changed})
        self.best_metric: Optional[float] = previous.get("best_metric")
        self.best_epoch: Optional[int] = previous.get("best_epoch")
        self.history: dict[str, list] = {k: list(previous.get(k, [])) for k in ("images_per_sec", "peak_memory_mb",
                                                                                "steps_per_sec")}
        self.wall_time_before = float(previous.get("wall_time_s", 0.0))
        self.last_metrics: dict[str, float] = previous.get("last_metrics", {})
        self.started = time.perf_counter()
        self.args_dict = args_to_dict(self.args)
        self.args_dict["num_local_modules"] = model.num_local_modules
        if self.writer:
            write_args_yaml(self.path("args.yaml"), {**self.args_dict, "mixed_precision": accelerator.mixed_precision,
                                                     "world_size": accelerator.num_processes})
            self.summary = SummaryCsv(self.path("summary.csv"), summary_columns(model.num_local_modules), self.start_epoch)
        if self.args.log_with:
            accelerator.init_trackers(os.path.basename(self.dir), config=_flat(self.args_dict))
        accelerator.print(f"run folder: {self.dir}\n{model.num_local_modules} local modules "
                          f"({model.split_kind} split, cuts {list(model.cuts)}), {accelerator.num_processes} "
                          f"process(es) on {accelerator.device}, mixed precision {accelerator.mixed_precision}, "
                          f"lr {self.args.lr:g}")

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    # ------------------------------------------------------------------ per epoch
    def start_epoch_timer(self) -> None:
        reset_peak_memory(self.accelerator.device)
        self._epoch_start = time.perf_counter()

    def stop_epoch_timer(self) -> float:
        """Seconds since :meth:`start_epoch_timer` (called after a host sync, so device work is included)."""
        return time.perf_counter() - self._epoch_start

    def end_epoch(self, epoch: int, monitor: LossMonitor, metrics: dict[str, float], *, lr: float,
                  train_time: float, optimizer, scheduler, model_ema: Optional[torch.nn.Module] = None) -> None:
        """Summary row, tracker log, ``last.pth.tar`` (and ``model_best.pth.tar``), one log line.

        ``metrics`` are the EMA's when there is one (``model_ema``, saved as ``state_dict_ema``), as in timm.
        """
        acc = self.accelerator
        losses = torch.tensor(monitor.mean_losses(), device=acc.device)
        counts = torch.tensor([float(monitor.samples), float(monitor.steps)], device=acc.device)
        memory = torch.tensor([peak_memory_mb(acc.device)], device=acc.device)
        if acc.num_processes > 1:
            losses = acc.reduce(losses, reduction="mean")
            counts = acc.reduce(counts, reduction="sum")
            torch.distributed.all_reduce(memory, op=torch.distributed.ReduceOp.MAX)
        samples, steps = counts.tolist()
        row = summary_row(epoch, losses.tolist(), metrics, lr=lr, train_time=train_time, samples=samples,
                          peak_memory=memory.item())
        self.record_epoch(epoch, row, metrics, steps_per_sec=steps / acc.num_processes / max(train_time, 1e-9),
                          train_top1=monitor.train_top1(),
                          checkpoint=lambda rng_states: build_checkpoint(
                              epoch=epoch, arch=self.arch, model=self.model, optimizer=optimizer, scheduler=scheduler,
                              args=self.args_dict, model_kwargs=dict(self.args_dict["model_kwargs"]),
                              metric=metrics["eval_top1"], rng_states=rng_states, amp_scaler=acc.scaler,
                              model_ema=model_ema))

    def record_epoch(self, epoch: int, row: dict[str, float], metrics: dict[str, float], *, steps_per_sec: float,
                     train_top1: float, checkpoint: Callable[[list], dict]) -> None:
        """Best-so-far, ``last.pth.tar`` (and ``model_best.pth.tar``), the summary row, tracker log, one log line.

        ``row`` is the summary row and ``metrics`` the run's eval metrics (every rank passes the same);
        ``checkpoint(rng_states)`` builds the checkpoint dict and is called on the writer only. Every rank takes
        part (the RNG states are gathered).
        """
        acc = self.accelerator
        self.history["images_per_sec"].append(row["images_per_sec"])
        self.history["peak_memory_mb"].append(row["peak_memory_mb"])
        self.history["steps_per_sec"].append(steps_per_sec)
        is_best = self.best_metric is None or metrics["eval_top1"] > self.best_metric
        if is_best:
            self.best_metric, self.best_epoch = metrics["eval_top1"], epoch
        self.last_metrics = metrics
        rng_states = gather_objects(acc, capture_rng_states())
        if self.writer:
            saved = checkpoint(rng_states)
            saved["run_state"] = self._run_state()
            atomic_save(saved, self.path(LAST))
            if is_best:
                atomic_save(saved, self.path(BEST))
            self.summary.append(row)  # only once the epoch's checkpoint is on disk
        if self.args.log_with:
            acc.log({k: v for k, v in row.items() if k != "epoch"} | {"train_top1": train_top1}, step=epoch)
        acc.print(self._epoch_line(epoch, row, train_top1))
        acc.wait_for_everyone()

    def _epoch_line(self, epoch: int, row: dict, train_top1: float) -> str:
        losses = " ".join(f"{row[f'train_loss_m{k}']:.3f}" for k in range(self.model.num_local_modules))
        line = (f"epoch {epoch + 1}/{self.args.epochs}: train losses [{losses}] "
                f"train top1 {train_top1:.2f} | "
                f"eval top1 {row['eval_top1']:.2f} top5 {row['eval_top5']:.2f} loss {row['eval_loss']:.4f} | "
                f"lr {row['lr']:.4g} | {row['epoch_time']:.1f}s {row['images_per_sec']:.0f} img/s | "
                f"peak {row['peak_memory_mb']:.0f} MB")
        if self.loader_batches_per_sec is not None:
            steps = self.history["steps_per_sec"][-1]
            line += f" | loader {self.loader_batches_per_sec:.3g} batches/s vs train {steps:.3g} steps/s"
            if self.loader_batches_per_sec < 1.5 * steps:
                line += " (WARNING: the input pipeline may be the bottleneck)"
        return line

    def _run_state(self) -> dict[str, Any]:
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch, "last_metrics": self.last_metrics,
                "wall_time_s": self.wall_time_before + time.perf_counter() - self.started, "resumes": self.resumes,
                **self.history}

    # ------------------------------------------------------------------ end
    def finish(self) -> dict[str, Any]:
        """Write ``results.json`` (main process) and close the trackers; return the results on every rank."""
        acc, state = self.accelerator, self._run_state()
        versions = package_versions()
        results = {
            "model": self.args.model,
            "model_kwargs": self.args_dict["model_kwargs"],
            "dataset": self.args.dataset,
            "num_local_modules": self.model.num_local_modules,
            "epochs": self.args.epochs,
            "top1_final": self.last_metrics.get("eval_top1"),
            "top5_final": self.last_metrics.get("eval_top5"),
            "top1_best": self.best_metric,
            "best_epoch": self.best_epoch,
            "eval_loss_final": self.last_metrics.get("eval_loss"),
            "train_images_per_sec": _median(state["images_per_sec"]),
            "peak_memory_mb": max(state["peak_memory_mb"], default=None),
            "wall_time_s": state["wall_time_s"],
            "num_params": self.num_params,
            "device": device_name(acc.device),
            "threads": torch.get_num_threads(),
            **versions,
            "command": shlex.join([os.path.basename(sys.executable)] + sys.argv),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "train_steps_per_sec": _median(state["steps_per_sec"]),
            "loader_batches_per_sec": self.loader_batches_per_sec,
            "world_size": acc.num_processes,
            "mixed_precision": acc.mixed_precision,
            "resumes": self.resumes,  # [{epoch, changed: {flag: [old, new]}}] for every resume
            **self.extra_results,
        }
        if self.writer:
            write_json(self.path(RESULTS), results)
        if self.args.log_with:
            acc.end_training()
        if self.best_metric is not None:
            acc.print(f"done: eval top-1 {results['top1_final']:.2f}% after {self.args.epochs} epochs (best "
                      f"{self.best_metric:.2f}% at epoch {self.best_epoch + 1}); results in {self.path(RESULTS)}, "
                      f"weights in {self.path(BEST)}")
        return results


def _median(values: list) -> Optional[float]:
    return statistics.median(values) if values else None


def _flat(config: dict) -> dict:
    """Tracker hyper-parameters: only bool/str/int/float (TensorBoard), others as strings."""
    return {k: v if isinstance(v, (bool, str, int, float)) else str(v) for k, v in config.items()}
