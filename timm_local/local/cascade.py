"""Losses that span several local modules (MLAAN's cascade, METHODS.md §6, §10.2): the engine's two ways to run them.

With ``cascade_depth`` L > 1, module k's objective returns a :class:`~timm_local.local.context.CascadeLoss`
``own + cascade``: ``own`` trains module k only, ``cascade`` trains modules f_k .. k with
f_k = max(0, k − L + 1). A module j therefore receives

    ∂L_own,j/∂θ_j + Σ_{i = j .. j+L−1} ∂L_cascade,i/∂θ_j        (gradient stops at the input of module f_i).

* Interleaved (:func:`run_shared`, what ``local_step`` runs): each module runs **once**, on a leaf copy of
  the previous module's output, and keeps its graph while a later cascade may still need it (at most L
  modules' graphs at a time). For cascade i the gradient g at h_i is routed by hand: g is added to the
  pending output gradient G_i of module i, then g ← J_iᵀ g (an input-only backward through module i) is
  added to G_{i−1}, and so on down to module f_i. ``own`` adds its gradient at h_i to G_i. When no later
  cascade spans module m, one backward of h_m with G_m gives module m's parameters everything at once and
  frees its graph. The backward passes per middle module are one input-only pass per cascade that goes
  beyond it, plus one parameter pass.
* Joint (:func:`run_joint`, ``forward_local``): ``ctx.cascade(k, h)`` re-evaluates modules f_k .. k from the
  stored detached input of module f_k (for f_k = 0, the stem's output: the stem runs once), so one backward
  of Σ L_k gives every part its reach.

BatchNorm running statistics: the reference evaluates every block of module j once per cascade that spans
it plus once on its own path (1 + L times for a middle block, §9 B13), the stem once; joint mode does the
same. The interleaved step evaluates each block once and gives its BatchNorm layers the effect of those
n identical updates (:func:`repeated_bn_updates`), so both modes end a step with the reference's statistics.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .context import CascadeLoss, LocalContext


def cascade_starts(has_objective: Sequence[bool], depth: int) -> list[Optional[int]]:
    """f_k = max(0, k − L + 1), the first module cascade k reaches, for modules with an objective; else None."""
    return [max(0, k - depth + 1) if has else None for k, has in enumerate(has_objective)]


def reference_evaluations(starts: Sequence[Optional[int]]) -> list[int]:
    """n_j = 1 + #{i : f_i < i, f_i ≤ j ≤ i}: how often the reference runs module j's blocks per step."""
    return [1 + sum(1 for i, f in enumerate(starts) if f is not None and f < i and f <= j <= i)
            for j in range(len(starts))]


@contextmanager
def repeated_bn_updates(module: nn.Module, n: int) -> Iterator[None]:
    """Make one train-mode forward of ``module`` update its BatchNorm statistics as n identical forwards would.

    n updates with the same batch statistic μ give r ← (1 − m)ⁿ·r + (1 − (1 − m)ⁿ)·μ, so the momentum is
    set to 1 − (1 − m)ⁿ for this forward and ``num_batches_tracked`` advances by n.
    """
    norms = [b for b in module.modules() if isinstance(b, _BatchNorm) and b.training and b.track_running_stats]
    if n == 1 or not norms:
        yield
        return
    if any(b.momentum is None for b in norms):
        raise ValueError("MLAAN's interleaved step needs BatchNorm layers with a momentum (momentum=None, a "
                         "cumulative average, is not supported): give the backbone's BatchNorm a momentum")
    momenta = [b.momentum for b in norms]
    for b, m in zip(norms, momenta):
        b.momentum = 1.0 - (1.0 - m) ** n
    try:
        yield
    finally:
        for b, m in zip(norms, momenta):
            b.momentum = m
    for b in norms:
        b.num_batches_tracked.add_(n - 1)


@dataclass
class _Live:
    """A module whose graph a later cascade may still need."""

    inputs: torch.Tensor  # the tensor it ran on: a leaf copy of the previous output (k ≥ 1)
    output: torch.Tensor
    params: list[torch.nn.Parameter]
    grad: Optional[torch.Tensor] = None  # G: Σ of the gradients at ``output`` not yet given to its parameters

    def add(self, grad: torch.Tensor) -> None:
        self.grad = grad if self.grad is None else self.grad + grad

    def release(self) -> None:
        """One backward of ``output`` with G into the module's parameters; frees its graph."""
        if self.grad is not None and self.params:
            torch.autograd.backward(self.output, self.grad, inputs=self.params)
        self.output.grad = self.grad = None


def _grad_at(backward: Callable, loss: torch.Tensor, output: torch.Tensor, aux: list) -> torch.Tensor:
    """Back-propagate ``loss`` into the aux nets and stop at ``output``; return ∂loss/∂output.

    A non-leaf in ``inputs`` makes autograd run (and by default free) the node that produced it, which the
    module's later passes still need, hence ``retain_graph``: the aux graph is freed with the loss tensor.
    It also makes ``output`` keep its gradient in every later pass through it (as ``retain_grad`` does);
    those copies are dropped at once (:func:`_route`, :meth:`_Live.release`).
    """
    backward(loss, inputs=[output, *aux], retain_graph=True)
    grad, output.grad = output.grad, None
    return grad


def _route(live: dict[int, _Live], first: int, k: int, grad: torch.Tensor) -> None:
    """Add a cascade's gradient at h_k to G_k, J_kᵀ·g to G_{k−1}, …, down to module ``first``."""
    for m in range(k, first - 1, -1):
        live[m].add(grad)
        if m > first:
            grad, = torch.autograd.grad(live[m].output, live[m].inputs, grad, retain_graph=True)
            live[m].output.grad = None


@contextmanager
def objective_inputs(local: Sequence[nn.Module]) -> Iterator[dict[int, torch.Tensor]]:
    """Record, per module index, the tensor each local objective was called on.

    A prepared module's ``forward`` may hand back a different tensor than its objective saw: Accelerate's
    mixed precision returns ``h.float()`` of the bf16/fp16 output. A loss depends only on the tensor its
    objective saw, so that is the one the interleaved step differentiates against and routes through.
    """
    seen: dict[int, torch.Tensor] = {}
    hooks = [m.objective.register_forward_pre_hook(lambda _, args, k=k: seen.__setitem__(k, args[0]))
             for k, m in enumerate(local) if m.objective is not None]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def run_shared(net, x: torch.Tensor, ctx: LocalContext, modules: Sequence[nn.Module], backward: Callable,
               depth: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The interleaved step for ``cascade_depth`` > 1 (module docstring): returns detached logits and losses."""
    local = net.local_modules
    starts = cascade_starts([m.objective is not None for m in local], depth)
    counts = reference_evaluations(starts)
    live: dict[int, _Live] = {}
    losses, h, last = [], x, len(modules) - 1
    autocast_cache = torch.is_autocast_enabled(x.device.type)
    with objective_inputs(local) as seen:
        for k, module in enumerate(modules):
            inputs = h if k == 0 else h.detach().requires_grad_()
            with repeated_bn_updates(local[k].blocks, counts[k]):
                returned, loss = module(inputs, ctx)
            out = seen.pop(k, returned)  # the tensor the loss depends on (objective_inputs)
            live[k] = _Live(inputs, out, [p for p in local[k].parameters() if p.requires_grad])
            if loss is None:
                losses.append(torch.zeros((), device=x.device))
            elif not isinstance(loss, CascadeLoss):
                raise TypeError(f"module {k}'s objective returned a {type(loss).__name__}: with cascade_depth > 1 "
                                f"objectives must return CascadeLoss(own, cascade) so each part gets its reach")
            else:
                aux = [p for p in local[k].objective.parameters() if p.requires_grad]
                _route(live, starts[k], k, _grad_at(backward, loss.cascade, out, aux))
                if loss.own is not None:
                    live[k].add(_grad_at(backward, loss.own, out, aux))
                losses.append(loss.total().detach())
                del loss  # frees the aux nets' graph before module k + 1 runs
            for m in [m for m in live if m <= k - depth + 1 or k == last]:
                live.pop(m).release()
            if autocast_cache:
                torch.clear_autocast_cache()
            h = out
    return returned.detach(), losses


class Reevaluation:
    """``ctx.cascade`` in joint mode: modules f_k .. k re-run from the stored input of module f_k."""

    def __init__(self, modules: Sequence[nn.Module], starts: Sequence[Optional[int]]):
        self.modules, self.starts = modules, starts
        self.inputs: dict[int, torch.Tensor] = {}

    def __call__(self, k: int, h: torch.Tensor) -> torch.Tensor:
        first = self.starts[k]
        if first == k:
            return h
        z = self.inputs[first]
        for j in range(first, k + 1):
            z = self.modules[j].body(z, with_stem=False)
        return z


def run_joint(net, x: torch.Tensor, ctx: LocalContext, depth: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Joint mode for ``cascade_depth`` > 1: every loss differentiable, the cascades re-evaluated."""
    local = net.local_modules
    reevaluate = Reevaluation(local, cascade_starts([m.objective is not None for m in local], depth))
    ctx.cascade = reevaluate
    losses, h, last = [], x, len(local) - 1
    for k, module in enumerate(local):
        if module.stem is not None:
            h = module.stem(h)  # once, with its graph: the first cascade starts from its output
        reevaluate.inputs[k] = h
        if module.objective is None:
            with torch.no_grad():
                out = module.body(h, with_stem=False)
            losses.append(torch.zeros((), device=x.device))
        else:
            out = module.body(h, with_stem=False)
            loss = module.objective(out, ctx)
            losses.append(loss.total() if isinstance(loss, CascadeLoss) else loss)
        h = out.detach() if k < last else out
    return h, losses
