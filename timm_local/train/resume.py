"""Resuming a run: what comes from the checkpoint, what comes from the command (README "Resume").

The rule is timm's. The checkpoint restores the weights (momentum copies included), the optimizer
*state* (momentum buffers), the AMP scaler, the epoch and the RNG states. Everything else follows
the flags of the resuming command: the learning-rate schedule is rebuilt from ``--lr``, ``--epochs``,
``--sched``, ``--warmup-*``, and the optimizer's hyper-parameters (lr, weight decay, momentum) are
this command's. Every flag that differs from the checkpoint's run is printed at resume and recorded
in ``results.json`` (``resumes``). The model is the checkpoint's: ``--model`` / ``--model-kwargs``
default to its ``arch`` / ``model_kwargs`` and must match them when given.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from accelerate import Accelerator

from ..local import LocalNet
from .args import DEFAULT_MODEL, args_to_dict
from .checkpoint import load_checkpoint_file, restore_rng_states
from .run_folder import RESULTS

# flags that name where a run is written or what started it, not what it trains
NOT_COMPARED = frozenset({"resume", "config", "output", "experiment", "debug"})


class ResumeError(ValueError):
    """The checkpoint and the resuming command cannot continue the same run."""


@dataclass
class ResumeState:
    """A loaded checkpoint and what resuming from it means for this command."""

    checkpoint: dict[str, Any]
    changed: dict[str, list] = field(default_factory=dict)  # flag -> [checkpoint's value, this command's value]

    @property
    def epoch(self) -> int:
        """The first epoch still to run (0-based)."""
        return self.checkpoint["epoch"] + 1


def load_resume_state(args: argparse.Namespace) -> ResumeState:
    """Read ``args.resume``, take the model from it (see :func:`take_model_from_checkpoint`), check the epochs."""
    checkpoint = load_checkpoint_file(args.resume)
    take_model_from_checkpoint(args, checkpoint, args.resume)
    check_epochs_left(args, checkpoint, args.resume)
    return ResumeState(checkpoint=checkpoint, changed=changed_flags(args, checkpoint))


def take_model_from_checkpoint(args: argparse.Namespace, checkpoint: dict[str, Any], path: str) -> None:
    """Default ``args.model`` / ``args.model_kwargs`` to the checkpoint's; refuse a different model or K."""
    arch = checkpoint.get("arch") or DEFAULT_MODEL
    saved_kwargs = dict(checkpoint.get("model_kwargs") or {})
    asked_model, asked_kwargs = args.model, dict(args.model_kwargs)
    args.model = asked_model or arch
    args.model_kwargs = asked_kwargs or saved_kwargs
    if args.model != arch or args.model_kwargs != saved_kwargs:
        raise ResumeError(
            f"--resume {path} holds a {_describe(arch, saved_kwargs)}, but this command asks for a "
            f"{_describe(args.model, args.model_kwargs)}: drop --model / --model-kwargs (and any config file that sets "
            f"them) to take the checkpoint's, or start a new run without --resume")


def _describe(model: str, kwargs: dict) -> str:
    return model + (" with " + " ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items())) if kwargs else "")


def changed_flags(args: argparse.Namespace, checkpoint: dict[str, Any]) -> dict[str, list]:
    """``{flag: [checkpoint's value, this command's value]}`` for every training flag that differs."""
    saved, now = checkpoint.get("args") or {}, args_to_dict(args)
    return {key: [saved[key], value] for key, value in now.items()
            if key not in NOT_COMPARED and key in saved and saved[key] != value}


def describe_changes(changed: dict[str, list]) -> str:
    """``--lr 0.1 -> 0.0001, --epochs 2 -> 3``."""
    return ", ".join(f"--{key.replace('_', '-')} {old!r} -> {new!r}" for key, (old, new) in changed.items())


def check_epochs_left(args: argparse.Namespace, checkpoint: dict[str, Any], path: str) -> int:
    """Epochs this command still has to run; refuse ``--epochs`` below the epochs already done."""
    done = checkpoint["epoch"] + 1
    if args.epochs < done:
        raise ResumeError(f"--epochs {args.epochs} is below the {done} epochs --resume {path} has done: "
                          f"give --epochs {done + 1} or more to train longer (nothing was changed)")
    return args.epochs - done


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """The saved optimizer state (momentum buffers, step counts); hyper-parameters stay this command's.

    ``optimizer.load_state_dict`` would also put back the saved lr / weight decay / momentum of
    every param group, which would silently override the resuming command's flags.
    """
    hyper = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, values in zip(optimizer.param_groups, hyper):
        group.update(values)


def resume_training(state: ResumeState, path: str, model: LocalNet, optimizer: torch.optim.Optimizer,
                    accelerator: Accelerator) -> None:
    """Load the model (momentum copies included), optimizer state and AMP scaler; print what resumes.

    The scheduler's saved state is *not* loaded: the schedule is the one this command's flags define
    (the loop sets the lr of each epoch with ``scheduler.step(epoch)``).
    """
    checkpoint = state.checkpoint
    model.load_state_dict(checkpoint["state_dict"])
    load_optimizer_state(optimizer, checkpoint["optimizer"])
    if accelerator.scaler is not None and "amp_scaler" in checkpoint:
        accelerator.scaler.load_state_dict(checkpoint["amp_scaler"])
    announce_resume(state, path, accelerator)


def announce_resume(state: ResumeState, path: str, accelerator: Accelerator) -> None:
    """Print what resumes and which flags changed (a pipelined run loads the state itself, per stage)."""
    accelerator.print(f"resumed from {path}: {state.epoch} epoch(s) done")
    if state.changed:
        accelerator.print(f"resume: these flags differ from the checkpoint's run and apply from epoch "
                          f"{state.epoch + 1} on: {describe_changes(state.changed)}")


def restore_rng(state: Optional[ResumeState], accelerator: Accelerator) -> None:
    """Put back this rank's Python/NumPy/torch RNG states saved with the checkpoint (if resuming)."""
    if state is None:
        return
    saved = state.checkpoint.get("rng_states") or []
    if len(saved) != accelerator.num_processes:
        accelerator.print(f"warning: the checkpoint holds RNG states of {len(saved)} processes, this run has "
                          f"{accelerator.num_processes}: RNG states not restored (the data order still is)")
        return
    restore_rng_states(saved[accelerator.process_index])


def finished_results(state: ResumeState, args: argparse.Namespace) -> Optional[dict[str, Any]]:
    """The ``results.json`` of the checkpoint's run when it has finished every epoch ``args`` asks for, else None.

    A run killed after its last checkpoint but before ``results.json`` is not finished: resuming it
    writes ``results.json``.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(args.resume)), RESULTS)
    if state.epoch < args.epochs or not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
