"""The pipelined training loop of ``train.py --pipeline S`` (docs/PIPELINE.md §6).

Each of the S × D processes is one stage (a contiguous group of local modules) of one replica's pipeline
(:mod:`timm_local.pipeline`). Stage 0 reads data shard ``replica`` of D from the usual loaders; the labels and
the image travel with the activations; the last stage evaluates (the plain forward, stage by stage). After
each epoch every rank shares its losses and counts, so every rank knows the summary row (the plateau schedule
needs the metric everywhere); the writer rank (last stage, replica 0) gathers the full model and optimizer state
in the single-process layout and writes the run folder through :class:`~.run_folder.RunFolder`, so a
pipelined checkpoint is an ordinary one. The lr schedule steps per epoch, as in :func:`~.loop.train`.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
from typing import Any, Optional

import torch.distributed as dist
from accelerate import Accelerator, PartialState
from tqdm.auto import tqdm

from ..pipeline import PipelineError, PipelineStage, StageStats, create_stage, process_layout
from .checkpoint import build_checkpoint
from .metrics import metrics_from_totals
from .optim import create_optimizer, create_scheduler
from .outputs import peak_memory_mb
from .resume import ResumeState, announce_resume, restore_rng
from .run_folder import RunFolder, summary_row
from .setup import build_data, create_accelerator, create_local_model, measure_loader


def train_pipelined(run: RunFolder, args: argparse.Namespace, state: Optional[ResumeState]) -> dict:
    """Train ``args.model`` as ``args.pipeline`` stages; write the run folder from the writer rank."""
    accelerator = create_accelerator(args, project_dir=run.dir)
    check_pipeline_precision(accelerator)
    layout = process_layout(args.pipeline, accelerator.num_processes, accelerator.process_index)
    model = create_local_model(args, accelerator)
    data = build_data(args, accelerator, shard=(layout.replica, layout.replicas))
    optimizer = create_optimizer(model, args)
    scheduler = create_scheduler(optimizer, args)  # from this command's flags, also when resuming
    run.begin(model, accelerator, resume=state, writer=layout.rank == layout.writer_rank)
    if state:
        announce_resume(state, args.resume, accelerator)
    measure = args.pipeline_cuts is None and args.pipeline > 1
    stage, costs = create_stage(
        model, optimizer, args.pipeline, accelerator.device, cuts=args.pipeline_cuts,
        probe_batch=next(iter(data.train)) if measure else None,  # every rank has one; rank 0 measures on it
        timeout_s=args.pipeline_timeout, max_in_flight=args.pipeline_in_flight,
        state=(state.checkpoint["state_dict"], state.checkpoint["optimizer"]) if state else None,
        backward=accelerator.backward, autocast=accelerator.autocast, label_smoothing=args.smoothing,
        clip_grad=args.clip_grad, clip_mode=args.clip_mode)
    seconds = [c.seconds for c in costs] if costs else None
    balance = f"; {stage.plan.balance_text(seconds)}" if seconds else ""
    accelerator.print(f"pipeline: {stage.plan.describe()}{balance}; {layout.num_stages} stage(s) x {layout.replicas} "
                      f"replica(s), run folder written by rank {layout.writer_rank}")
    run.extra_results["pipeline"] = {"stages": layout.num_stages, "replicas": layout.replicas,
                                     "cuts": list(stage.plan.cuts), "plan": stage.plan.describe(),
                                     "module_seconds": seconds,
                                     "speedup_bound": stage.plan.speedup_bound(seconds) if seconds else None}
    speed = [measure_loader(data.train, args.bench_loader_batches, accelerator.device) if layout.rank == 0 else None]
    dist.broadcast_object_list(speed, src=0)  # stage 0's loader feeds the pipeline; every rank reports it
    run.loader_batches_per_sec = speed[0]
    restore_rng(state, accelerator)

    for epoch in range(run.start_epoch, args.epochs):
        scheduler.step(epoch)  # per-epoch lr (METHODS.md §7.1)
        data.train.set_epoch(epoch)  # the epoch's shuffle and augmentation: a function of (seed, epoch, shard)
        model.train()
        run.start_epoch_timer()
        with tqdm(data.train, desc=f"epoch {epoch + 1}/{args.epochs}", dynamic_ncols=True,
                  disable=not accelerator.is_main_process) as progress:  # closed also when the epoch fails
            stats = stage.train_epoch(progress if layout.is_first else None)  # a NaN or a failed stage: PipelineError
        train_time = run.stop_epoch_timer()
        totals = stage.evaluate(data.eval if layout.is_first else None)
        with exchange_failures(stage, epoch):
            summary = EpochSummary.gather(stage, stats, totals, train_time, accelerator)
            full = stage.gather_state()  # the writer's, in the single-process layout
            row = summary_row(epoch, summary.losses, summary.metrics, lr=optimizer.param_groups[0]["lr"],
                              train_time=summary.train_time, samples=summary.samples, peak_memory=summary.peak_memory)
            run.record_epoch(epoch, row, summary.metrics, steps_per_sec=summary.steps / max(summary.train_time, 1e-9),
                             train_top1=summary.train_top1,
                             checkpoint=lambda rng_states: build_checkpoint(
                                 epoch=epoch, arch=run.arch, model=model, optimizer=optimizer, scheduler=scheduler,
                                 args=run.args_dict, model_kwargs=dict(run.args_dict["model_kwargs"]),
                                 metric=summary.metrics["eval_top1"], rng_states=rng_states, states=full))
        accelerator.print(summary.stage_line())
        scheduler.step(epoch + 1, summary.metrics["eval_top1"])  # timm's convention (plateau needs the metric)

    return run.finish()


def join_pipeline_processes(args: argparse.Namespace) -> None:
    """Join the launcher's process group before anything else talks to the other ranks (the run folder does), with
    ``--pipeline-timeout`` as its timeout: a collective waiting for a stage that died or hangs then fails as its
    links' waits do, instead of after torch's default 30 minutes."""
    PartialState(cpu=args.cpu, timeout=datetime.timedelta(seconds=args.pipeline_timeout))


def check_pipeline_precision(accelerator: Accelerator) -> None:
    """fp16 needs a GradScaler driven by a prepared optimizer; the stages step their own optimizers."""
    if accelerator.mixed_precision == "fp16":
        raise ValueError("--pipeline does not support fp16 mixed precision (the stages step their optimizers "
                         "without a GradScaler): use --mixed-precision bf16 or no")


@contextlib.contextmanager
def exchange_failures(stage: PipelineStage, epoch: int):
    """A collective of the end-of-epoch exchange that fails (a peer died or timed out) as a one-line
    :class:`PipelineError` naming this stage and the epoch, instead of a traceback."""
    try:
        yield
    except PipelineError:
        raise
    except RuntimeError as error:  # torch.distributed's errors (DistBackendError, ...) are RuntimeErrors
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise PipelineError(f"{stage.where}: the end-of-epoch exchange of epoch {epoch + 1} with the other stages "
                            f"failed ({first}); another stage has probably failed first: see its log") from error


class EpochSummary:
    """One epoch of the whole pipeline, the same on every rank (all-gathered from every stage and replica).

    Per-module train losses: the mean over the replicas of each replica's mean, as DDP's summary row averages
    its ranks; samples and steps are stage 0's; train top-1 and the eval totals are the last stage's; the epoch
    time and peak memory the slowest / largest process's.
    """

    def __init__(self, parts: list[dict[str, Any]], num_stages: int, num_modules: int):
        first = [p for p in parts if p["stage"] == 0]
        last = [p for p in parts if p["stage"] == num_stages - 1]
        sums: dict[int, list[float]] = {k: [] for k in range(num_modules)}
        for part in parts:
            for k, value in zip(part["modules"], part["loss_means"]):
                sums[k].append(value)
        self.losses = [sum(v) / len(v) for _, v in sorted(sums.items())]
        self.samples = float(sum(p["samples"] for p in first))
        self.steps = first[0]["steps"]
        self.train_top1 = 100.0 * sum(p["correct"] for p in last) / max(sum(p["samples"] for p in last), 1)
        self.metrics = metrics_from_totals([sum(p["eval"][i] for p in last) for i in range(4)])
        self.train_time = max(p["train_time"] for p in parts)
        self.peak_memory = max(p["peak_memory"] for p in parts)
        self.parts = parts

    @classmethod
    def gather(cls, stage: PipelineStage, stats: StageStats, totals, train_time: float,
               accelerator: Accelerator) -> "EpochSummary":
        mine = {"stage": stage.layout.stage, "replica": stage.layout.replica, "modules": list(stats.modules),
                "loss_means": [s / max(stats.steps, 1) for s in stats.loss_sums], "steps": stats.steps,
                "samples": stats.samples, "correct": stats.correct,
                "eval": totals.tolist() if totals is not None else None, "train_time": train_time,
                "idle_fraction": stats.idle_fraction, "peak_memory": peak_memory_mb(accelerator.device)}
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, mine)
        return cls(parts, stage.layout.num_stages, stage.model.num_local_modules)

    def stage_line(self) -> str:
        """``stages: 0 idle 12% 180 MB | 1 idle 3% 150 MB`` (replica 0 of each stage)."""
        return "stages: " + " | ".join(f"{p['stage']} idle {100 * p['idle_fraction']:.0f}% {p['peak_memory']:.0f} MB"
                                       for p in self.parts if p["replica"] == 0)
