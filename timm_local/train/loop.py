"""The training loop: interleaved local learning with Accelerate (DESIGN.md "Data, training, publishing").

:func:`train` reads top to bottom like Accelerate's examples; set-up, outputs and resume live in
named helpers (:mod:`.setup`, :mod:`.run_folder`).
"""
from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
from accelerate import Accelerator
from timm.utils import dispatch_clip_grad
from tqdm.auto import tqdm

from ..errors import run_command
from ..local import LocalNet, LocalStepOutput
from .args import parse_args
from .distributed import GradientSync, prepare_local_modules
from .metrics import LossMonitor, NonFiniteLossError, evaluate
from ..pipeline.link import PipelineError
from .optim import create_optimizer, create_scheduler
from .resume import ResumeState, finished_results, load_resume_state, restore_rng, resume_training
from .run_folder import LAST, RunFolder, count_summary_rows
from .setup import build_data, create_accelerator, create_local_model, create_mixup, create_model_ema, measure_loader


@dataclass(frozen=True)
class StepOptions:
    """How :func:`train_step` treats gradients: timm's ``--clip-grad``/``--clip-mode`` and ``--smoothing``."""

    clip_grad: Optional[float] = None
    clip_mode: str = "norm"
    label_smoothing: float = 0.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "StepOptions":
        return cls(clip_grad=args.clip_grad, clip_mode=args.clip_mode, label_smoothing=args.smoothing)


def accumulation_plan(num_batches: int, accum_steps: int) -> Iterator[tuple[int, bool]]:
    """``(divisor, step_now)`` for each batch of an epoch, as timm's train.py accumulates.

    Batches are taken in groups of ``accum_steps``; the epoch's last group may be shorter and is divided by
    its own length, so every optimizer step sees the mean gradient of the micro-batches it accumulated.
    ``step_now`` is True on the last batch of each group.
    """
    for start in range(0, num_batches, accum_steps):
        size = min(accum_steps, num_batches - start)
        for i in range(size):
            yield size, i == size - 1


def train_step(model: LocalNet, modules: Sequence[torch.nn.Module], optimizer: torch.optim.Optimizer,
               sync: GradientSync, accelerator: Accelerator, x: torch.Tensor, y: torch.Tensor,
               options: StepOptions = StepOptions(), divisor: int = 1, step_now: bool = True) -> LocalStepOutput:
    """One micro-batch: every module's forward + local backward in turn; then, if ``step_now``, the update.

    Each local loss is divided by ``divisor`` before its backward, so that gradients accumulated over
    ``divisor`` micro-batches are their mean (``--grad-accum-steps``); on the micro-batches before the last,
    DDP's all-reduce is skipped (``no_sync`` on every prepared module). The update: gradient sync,
    ``--clip-grad`` of every local module's param group on its own (after all modules' backward passes,
    after fp16 unscaling), momentum copies, optimizer step. The returned losses are not divided.
    """
    backward = accelerator.backward if divisor == 1 else (lambda loss, **kw: accelerator.backward(loss / divisor, **kw))
    with contextlib.ExitStack() as stack:
        if not step_now:
            for module in modules:
                stack.enter_context(accelerator.no_sync(module))
        out = model.local_step(x, y, backward=backward, modules=modules, label_smoothing=options.label_smoothing)
    if not step_now:
        return out
    sync()  # averages gradients across processes when per-module DDP cannot (MLAAN's cascade); else a no-op
    if options.clip_grad is not None:
        if accelerator.scaler is not None:
            accelerator.unscale_gradients()
        for group in optimizer.param_groups:  # one group per local module
            dispatch_clip_grad(group["params"], options.clip_grad, mode=options.clip_mode)
    model.momentum_update()  # MAN/MLAAN: θ_ema ← m·θ_ema + (1 − m)·θ, with the pre-step θ (METHODS.md §9 B8)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out


def train(args: argparse.Namespace) -> dict:
    """Train ``args.model`` on ``args.dataset``; write the run folder; return the results dict.

    With ``--resume`` the model comes from the checkpoint and the schedule from the flags
    (:mod:`.resume`); a run that has already finished every epoch asked for is left as it is.
    """
    state = load_resume_state(args) if args.resume else None
    finished = state and finished_results(state, args)
    if finished:
        print(f"nothing to do: {args.resume} has finished all {state.epoch} epochs (results.json is there); "
              f"give --epochs {state.epoch + 1} or more to train longer")
        return finished
    loop = _train_in
    if args.pipeline:  # the pipelined loop (imported here: timm_local.pipeline imports this package's modules)
        from .pipelined import join_pipeline_processes, train_pipelined

        join_pipeline_processes(args)
        loop = train_pipelined
    run = RunFolder(args)  # <output>/<experiment>, the same on every rank, locked by this run
    try:
        return loop(run, args, state)
    finally:
        run.release()


def _train_in(run: RunFolder, args: argparse.Namespace, state: Optional[ResumeState]) -> dict:
    accelerator = create_accelerator(args, project_dir=run.dir)
    model = create_local_model(args, accelerator)
    data = build_data(args, accelerator)
    optimizer = create_optimizer(model, args)
    scheduler = create_scheduler(optimizer, args)  # from this command's flags, also when resuming
    if state:
        resume_training(state, args.resume, model, optimizer, accelerator)
    mixup = create_mixup(args, model)
    model_ema = create_model_ema(args, model)  # from the resumed weights; then the saved EMA, if there is one
    if state and model_ema is not None and "state_dict_ema" in state.checkpoint:
        model_ema.module.load_state_dict(state.checkpoint["state_dict_ema"])
    modules, optimizer, sync = prepare_local_modules(accelerator, model, optimizer)
    run.begin(model, accelerator, resume=state)
    run.loader_batches_per_sec = measure_loader(data.train, args.bench_loader_batches, accelerator.device)
    restore_rng(state, accelerator)
    options = StepOptions.from_args(args)

    for epoch in range(run.start_epoch, args.epochs):
        scheduler.step(epoch)  # per-epoch lr (METHODS.md §7.1)
        data.train.set_epoch(epoch)  # the epoch's shuffle and augmentation: a function of (seed, epoch, rank)
        model.train()
        monitor = LossMonitor(model.num_local_modules, accelerator.device, accelerator)
        run.start_epoch_timer()
        progress = tqdm(data.train, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not accelerator.is_main_process,
                        dynamic_ncols=True)
        plan = accumulation_plan(len(data.train), args.grad_accum_steps)
        for step, ((x, y), (divisor, step_now)) in enumerate(zip(progress, plan)):
            target = y
            if mixup is not None:
                x, target = mixup(x, y)  # soft targets; train top-1 below counts against the unmixed labels
            out = train_step(model, modules, optimizer, sync, accelerator, x, target, options, divisor, step_now)
            if step_now and model_ema is not None:
                model_ema.update(model.backbone)
            monitor.update(step, out.losses, out.logits, y)
            if (step + 1) % args.log_interval == 0:
                monitor.check(epoch)  # one host sync: stops on a NaN/inf local loss, naming module and step
                progress.set_postfix(loss=f"{monitor.mean_losses()[-1]:.3f}", top1=f"{monitor.train_top1():.1f}")
        monitor.check(epoch)
        train_time = run.stop_epoch_timer()

        metrics = evaluate(model, data.eval, accelerator)
        if model_ema is not None:  # as timm: the EMA's metrics are the run's, the model's are printed
            accelerator.print(f"epoch {epoch + 1}: model without EMA: eval top1 {metrics['eval_top1']:.2f} "
                              f"loss {metrics['eval_loss']:.4f}")
            metrics = evaluate(model_ema.module, data.eval, accelerator)
        run.end_epoch(epoch, monitor, metrics, lr=optimizer.param_groups[0]["lr"], train_time=train_time,
                      optimizer=optimizer, scheduler=scheduler,
                      model_ema=model_ema.module if model_ema is not None else None)
        scheduler.step(epoch + 1, metrics["eval_top1"])  # timm's convention (the plateau scheduler needs the metric)

    return run.finish()


def resume_hint(args: argparse.Namespace, error: BaseException) -> str:
    """How to continue after a stop: the run folder's ``last.pth.tar`` if one was written, else start again."""
    folder = os.path.join(args.output, args.experiment) if args.experiment else ""
    last = os.path.join(folder, LAST)
    lower_lr = " with a lower --lr (or fix the model)" if isinstance(error, NonFiniteLossError) else ""
    if folder and os.path.isfile(last):
        return (f"the last checkpoint, written before this, is intact: resume{lower_lr} with --resume {last} "
                f"({count_summary_rows(folder)} epoch(s) done)")
    return f"no checkpoint was written (the first epoch had not finished): start the run again{lower_lr}"


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python train.py [--config file.yaml] [flags]``: see ``--help``. Expected errors are one line (``--debug``)."""
    args = parse_args(argv)
    # a pipelined process leaves at once after an error: the other stages may be gone (docs/PIPELINE.md §4)
    run_command(lambda: train(args), debug=args.debug, recovery=lambda error: resume_hint(args, error),
                stopped=(NonFiniteLossError, PipelineError), abandon=(Exception, KeyboardInterrupt) if args.pipeline else ())
