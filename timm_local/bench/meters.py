"""Memory meters for one training step: allocator peaks (GPU, CPU), saved-for-backward bytes, resident memory.

Every meter here measures a step the caller runs inside it; none changes what the step computes.

* :class:`SavedTensorMeter`: peak bytes of activation storage that autograd holds for backward
  (device-independent and deterministic; what local learning actually frees).
* :func:`cpu_allocation_peak`: the CPU analogue of ``torch.cuda.max_memory_allocated()``: peak of
  the bytes allocated by PyTorch's CPU allocator during the step, read from the profiler's
  allocation events, plus what was already allocated when the step began.
* :func:`rss_now`, :func:`rss_peak`, :func:`reset_rss_peak`: the process's current and peak resident memory.
"""
from __future__ import annotations

import resource
import sys
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import nn

MiB = 2 ** 20


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a storage shared by two tensors counts once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor in the optimizer's per-parameter state (momentum buffers, Adam moments, steps)."""
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def static_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Weights, buffers and optimizer state: what stays allocated between training steps."""
    return storage_bytes([*model.parameters(), *model.buffers(), *optimizer_state_tensors(optimizer)])


class _Saved:
    """One reference autograd holds to a saved tensor; counts its storage while any reference lives.

    It keeps ``tensor.detach()`` (same storage), not the tensor: a tensor saved by its own ``grad_fn`` (ReLU
    saves its output) would otherwise make the cycle tensor → grad_fn → this object → tensor, which Python's
    GC cannot see through autograd's C++ edges, so a graph kept with ``retain_graph=True`` and then dropped
    (MLAAN's aux graphs) was never freed and counted until the process ended.
    """

    __slots__ = ("tensor", "ptr", "meter")

    def __init__(self, tensor: torch.Tensor, ptr: int, meter: "SavedTensorMeter"):
        self.tensor, self.ptr, self.meter = tensor.detach(), ptr, meter
        meter._acquire(ptr, tensor.untyped_storage().nbytes())

    def __del__(self):
        self.meter._release(self.ptr, self.tensor.untyped_storage().nbytes())


class SavedTensorMeter:
    """Peak bytes of activation storage held for backward, via ``torch.autograd.graph.saved_tensors_hooks``.

    Each saved tensor's storage is counted once while at least one saved reference to it is alive;
    a reference dies when autograd frees the part of the graph that holds it. Parameters and
    buffers of ``model`` are excluded (they are not activations). Use as a context manager around
    the step; ``peak`` is in bytes.
    """

    def __init__(self, model: nn.Module):
        self.excluded = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
        self.refs: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def _acquire(self, ptr: int, nbytes: int) -> None:
        if self.refs.get(ptr, 0) == 0:
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        self.refs[ptr] = self.refs.get(ptr, 0) + 1

    def _release(self, ptr: int, nbytes: int) -> None:
        self.refs[ptr] -= 1
        if self.refs[ptr] == 0:
            del self.refs[ptr]
            self.live -= nbytes

    def _pack(self, tensor: torch.Tensor):
        ptr = tensor.untyped_storage().data_ptr()
        return tensor if ptr in self.excluded else _Saved(tensor, ptr, self)

    @staticmethod
    def _unpack(saved) -> torch.Tensor:
        return saved.tensor if isinstance(saved, _Saved) else saved

    @contextmanager
    def measure(self) -> Iterator["SavedTensorMeter"]:
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            yield self


def cpu_allocation_peak(step: Callable[[], None], allocated_before: int) -> Optional[int]:
    """Peak bytes allocated on the CPU while ``step()`` runs, or ``None`` if the profiler gives no events.

    Runs ``step`` once under ``torch.profiler`` with ``profile_memory=True`` and replays the CPU
    allocator's allocation (+bytes) and free (−bytes) events in time order; the peak of that running
    sum, plus ``allocated_before`` (the bytes live when the step starts, e.g. :func:`static_bytes`),
    is the CPU counterpart of ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``.
    It counts every tensor PyTorch allocates (activations, gradients, workspaces, optimizer temporaries),
    not the allocator's or libraries' caches. Deterministic for a given step.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    if not events:
        return None
    live = peak = 0
    for _, nbytes in sorted(events, key=lambda e: e[0]):
        live += nbytes
        peak = max(peak, live)
    return allocated_before + peak


def rss_now() -> int:
    """Current resident set size of this process in bytes (Linux ``/proc/self/statm``; else the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return rss_peak()


def rss_peak() -> int:
    """Peak resident set size of this process in bytes (``getrusage`` ``ru_maxrss``): over its lifetime, or
    since the last successful :func:`reset_rss_peak`."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_rss_peak() -> bool:
    """Reset the peak resident set size to the current one (Linux: ``5`` to ``/proc/self/clear_refs``).

    Returns False where that is not possible; ``ru_maxrss`` then stays the lifetime peak (including
    whatever import or model construction briefly used).
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
