"""Preparing the K local modules with Accelerate, and keeping DDP ranks in sync.

Interleaved local training runs forward_k → backward_k module by module. Under DDP each local
module is therefore prepared as its own ``DistributedDataParallel`` wrapper: its backward
all-reduces exactly that module's gradients (ECOSYSTEM.md §4.2, pattern D).

Methods whose losses span several modules (MLAAN's cascade, ``method.cascade_depth > 1``) are
prepared *without* a DDP wrapper (autocast and device placement only) and :class:`GradientSync`
averages every gradient across processes once, after all local backward passes, and broadcasts
rank 0's buffers (BatchNorm statistics) as DDP's ``broadcast_buffers`` does. (Per-module wrappers
let the replicas drift apart while every cascade re-ran earlier modules after their reducers had
finished; the shared-forward step gives each parameter its whole gradient in one pass, so they now
agree as well, ``tests/test_ddp.py``, but one all-reduce after the last backward is the simpler
contract for a loss that crosses modules.)
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from ..local import LocalNet

SUPPORTED = (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)


def check_distributed_type(accelerator: Accelerator) -> None:
    """Refuse launch configurations the interleaved local step cannot run under (FSDP, DeepSpeed, ...)."""
    kind = accelerator.distributed_type
    if kind not in SUPPORTED:
        raise ValueError(
            f"timm_local trains with one backward pass per local module, which {kind.value} does not support "
            f"(FSDP and DeepSpeed handle several backward passes per forward badly: pytorch#106637, #136861). "
            f"Launch with plain DDP instead: `accelerate launch --multi_gpu --num_processes N train.py ...` "
            f"(or `accelerate config` without FSDP/DeepSpeed). The models are small enough for DDP.")


def launched_processes(cmdline: Sequence[str]) -> Optional[int]:
    """The ``--num_processes`` / ``--num-processes`` of an ``accelerate launch`` command line, or None."""
    for i, arg in enumerate(cmdline):
        for flag in ("--num_processes", "--num-processes"):
            value = arg[len(flag) + 1:] if arg.startswith(flag + "=") else (
                cmdline[i + 1] if arg == flag and i + 1 < len(cmdline) else None)
            if value is not None and value.isdigit():
                return int(value)
    return None


def _parent_cmdline() -> list[str]:
    """The parent process's arguments (Linux ``/proc``; empty elsewhere)."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return []


def single_cpu_process_warning(num_processes: int, parent_cmdline: Optional[Sequence[str]] = None) -> Optional[str]:
    """A warning when ``accelerate launch --cpu --num_processes N`` (N > 1) started only this one process.

    Accelerate's simple launcher, which ``--cpu`` without ``--multi_gpu`` selects, drops ``--num_processes``
    and sets ``ACCELERATE_USE_CPU`` in the environment; the requested N is read from the parent
    ``accelerate launch`` command line (the only place it is left). Accelerate 1.x refuses ``--multi_gpu``
    together with its ``--cpu``; ``accelerate launch --multi_gpu --num_processes N train.py --cpu`` starts N
    CPU processes (gloo), checked by hand with N = 2.
    """
    if num_processes > 1 or os.environ.get("ACCELERATE_USE_CPU", "").lower() != "true":
        return None
    cmdline = list(_parent_cmdline() if parent_cmdline is None else parent_cmdline)
    asked = launched_processes(cmdline)
    if not asked or asked < 2 or "--multi_gpu" in cmdline or "--multi-gpu" in cmdline:
        return None
    return (f"warning: `accelerate launch --cpu --num_processes {asked}` started 1 process, not {asked}: without "
            f"--multi_gpu Accelerate uses its single-process launcher (and refuses --multi_gpu with its own --cpu). "
            f"For {asked} CPU processes give train.py the --cpu instead: `accelerate launch --multi_gpu "
            f"--num_processes {asked} train.py --cpu ...` (or `torchrun --nproc_per_node {asked} train.py --cpu ...`)")


def needs_manual_sync(accelerator: Accelerator, model: LocalNet) -> bool:
    """True under DDP for methods whose losses reach into earlier modules (see the module docstring)."""
    return accelerator.num_processes > 1 and model.method.cascade_depth > 1


def prepare_local_modules(accelerator: Accelerator, model: LocalNet, optimizer: torch.optim.Optimizer):
    """Prepare each local module (its own DDP wrapper, or none, see above) and the optimizer.

    Returns ``(modules, optimizer, sync)``: the prepared modules to pass as
    ``model.local_step(..., modules=modules)``, the prepared optimizer, and a :class:`GradientSync`
    to call after the local step (a no-op unless it is needed).
    """
    check_distributed_type(accelerator)
    local_modules = list(model.local_modules)
    if needs_manual_sync(accelerator, model):
        modules = [accelerator.prepare_model(m, evaluation_mode=True) for m in local_modules]
        optimizer = accelerator.prepare_optimizer(optimizer)
        sync = GradientSync(local_modules, enabled=True)
        sync.broadcast_parameters()
    else:
        prepared = accelerator.prepare(*local_modules, optimizer)
        modules, optimizer = list(prepared[:-1]), prepared[-1]
        sync = GradientSync(local_modules, enabled=False)
    return modules, optimizer, sync


class GradientSync:
    """Average gradients over all processes (bucketed all-reduce) and broadcast rank 0's buffers.

    Called once per step, after every local backward and before the optimizer step. Gradients
    are averaged, as DDP does, so that the update equals a single-process update on the
    concatenated batch for losses that are means over the batch.
    """

    def __init__(self, modules: Sequence[nn.Module], enabled: bool, bucket_numel: int = 1 << 24,
                 group: Optional[dist.ProcessGroup] = None):
        """``group``: the processes to average over (default: all; a pipeline stage's replicas,
        :mod:`timm_local.pipeline`); buffers come from its first rank."""
        self.enabled = enabled
        self.modules = list(modules)
        self.params = [p for m in modules for p in m.parameters() if p.requires_grad]
        self.buffers = [b for m in modules for b in m.buffers()]
        self.bucket_numel = bucket_numel
        self.group = group

    def __call__(self) -> None:
        if not self.enabled:
            return
        grads = [p.grad for p in self.params if p.grad is not None]
        world = dist.get_world_size(self.group)
        for bucket in _buckets(grads, self.bucket_numel):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat, group=self.group)
            flat.div_(world)
            _unflatten_into(flat, bucket)
        self._broadcast(self.buffers)

    def broadcast_parameters(self) -> None:
        """Copy the first rank's parameters (momentum copies included) and buffers to every rank of the group, as DDP
        does when wrapping."""
        self._broadcast([p.data for m in self.modules for p in m.parameters()] + self.buffers)

    def _broadcast(self, tensors: Sequence[torch.Tensor]) -> None:
        src = 0 if self.group is None else dist.get_global_rank(self.group, 0)
        for bucket in _buckets([t for t in tensors if t.numel()], 1 << 24):
            flat = torch.cat([t.reshape(-1) for t in bucket])
            dist.broadcast(flat, src=src, group=self.group)
            _unflatten_into(flat, bucket)


def _buckets(tensors: Sequence[torch.Tensor], bucket_numel: int):
    """Consecutive groups of tensors with one dtype and device and at most ``bucket_numel`` elements (or one tensor)."""
    bucket: list[torch.Tensor] = []
    size = 0
    for t in tensors:
        if bucket and (size + t.numel() > bucket_numel or t.dtype != bucket[0].dtype or t.device != bucket[0].device):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel()
    if bucket:
        yield bucket


def _unflatten_into(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def gather_objects(accelerator: Accelerator, obj: Any) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` without distribution)."""
    if accelerator.num_processes == 1:
        return [obj]
    gathered = [None] * accelerator.num_processes
    dist.all_gather_object(gathered, obj)
    return gathered

