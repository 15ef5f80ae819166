"""One process's stage of a pipeline: its local modules' steps, its optimizer step, its links (docs/PIPELINE.md).

Per training micro-batch t (1-based), stage s of replica d:

1. takes (x, y) from the loader (stage 0) or receives (h, x, y) of step t from stage s − 1;
2. runs :meth:`LocalNet.local_step_range` over its modules: each module's forward, local loss and
   backward, exactly as ``local_step`` runs them;
3. sends the detached output (h', x, y) to stage s + 1 (at most ``max_in_flight`` unreceived per link);
4. averages its gradients over the stage's D replicas, applies its momentum copies' EMA and its optimizer
   step: its weights after t updates, from micro-batches 1 .. t, as in the sequential step.

No gradient travels backward. Stage s's modules depend only on their own weights and their input, so a stage
computes step t with the weights after t − 1 updates whatever the other stages are doing: the pipelined run
computes what sequential ``local_step`` training computes. The one exception is a momentum copy (MAN) whose
source block belongs to the next stage: stage s + 1 sends that block's parameters back after each optimizer
step, and stage s applies the EMA of step t + 1 with them (its pre-step θ_t, as the sequential step does).

Each process keeps only its stage's tensors: the other stages' parameters and buffers are replaced by empty
tensors after the optimizer exists and any checkpoint is loaded (mirrored source blocks excepted).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterable, Optional, Sequence

import torch
import torch.distributed as dist
from timm.utils import dispatch_clip_grad
from torch import nn

from ..local import LocalNet
from ..train.distributed import GradientSync
from ..train.metrics import eval_totals
from ..train.resume import load_optimizer_state
from .layout import ProcessLayout
from .link import DATA, END, EVAL, Link, PipelineError, PipelineStopped, Watchdog
from .plan import StagePlan

DATA_TAG, PARAMS_TAG = 0, 1  # the forward data channel and the momentum-source channel (backward)


@dataclass
class StageStats:
    """One epoch of one stage: steps, samples, per-module loss sums, and where the time went.

    ``busy_s`` is wall time outside communication waits (compute, and the host work of posting messages);
    ``idle_s`` the time blocked waiting for a neighbour (or for the in-flight bound).
    """

    modules: range
    steps: int = 0
    samples: int = 0
    loss_sums: list[float] = field(default_factory=list)
    correct: int = 0
    wall_s: float = 0.0
    idle_s: float = 0.0

    @property
    def busy_s(self) -> float:
        return self.wall_s - self.idle_s

    @property
    def idle_fraction(self) -> float:
        return self.idle_s / self.wall_s if self.wall_s > 0 else 0.0


def momentum_sources_elsewhere(model: LocalNet, plan: StagePlan, stage: int) -> list[nn.Parameter]:
    """Parameters of the source blocks of ``stage``'s momentum copies that another stage owns, in a fixed order.

    Only the next stage may own them (MAN's B_next is the first block of the module after the copy's).
    """
    own = {id(p) for k in plan.modules_of(stage) for p in model.local_modules[k].parameters()}
    owner = {id(p): plan.stage_of(k) for k, m in enumerate(model.local_modules) for p in m.parameters()}
    params = []
    for k in plan.modules_of(stage):
        objective = model.local_modules[k].objective
        for _, source, _ in (objective.momentum_pairs() if objective is not None else []):
            for p in source.parameters():
                if id(p) in own:
                    continue
                if owner[id(p)] != stage + 1:
                    raise ValueError(f"module {k}'s momentum copy follows a block of stage {owner[id(p)]}, not of the "
                                     f"next stage: only the next stage can send it back; move the stage cut")
                params.append(p)
    return params


def release_other_stages(model: LocalNet, plan: StagePlan, stage: int, keep: Sequence[torch.Tensor]) -> None:
    """Replace the parameters and buffers of every module outside ``stage`` by empty tensors (except ``keep``)."""
    kept = {id(t) for t in keep}
    for k, module in enumerate(model.local_modules):
        if k in plan.modules_of(stage):
            continue
        for t in (*module.parameters(), *module.buffers()):
            if id(t) not in kept:
                t.data = torch.empty(0, dtype=t.dtype, device=t.device)


def owned_state_keys(model: LocalNet, plan: StagePlan, stage: int) -> list[str]:
    """The ``model.state_dict()`` keys whose tensors belong to ``stage``'s modules."""
    own = {id(t) for k in plan.modules_of(stage) for t in model.local_modules[k].state_dict(keep_vars=True).values()}
    return [name for name, t in model.state_dict(keep_vars=True).items() if id(t) in own]


class PipelineStage:
    """This process's stage: build it on the whole model (same weights on every rank) and its optimizer.

    Args:
        model: the full :class:`LocalNet`, identical on every rank (same seed), in train mode.
        optimizer: over ``model.local_param_groups()`` (all K groups, built before this), so its state dict
            has the single-process layout; only this stage's parameters ever get gradients.
        plan, layout: the stages and this process's place (:mod:`.plan`, :mod:`.layout`).
        group: this stage's process group when D > 1 (:func:`.layout.stage_group`).
        state: a full checkpoint's ``(model state_dict, optimizer state_dict)`` to load before releasing
            the other stages' tensors (resume).
        backward: called on each local loss (default ``Tensor.backward``); ``autocast``: a context for the
            forward passes (e.g. ``accelerator.autocast``).
        timeout_s: the longest any wait may block (:class:`~.link.Watchdog`).
    """

    def __init__(self, model: LocalNet, optimizer: torch.optim.Optimizer, plan: StagePlan, layout: ProcessLayout,
                 device: torch.device, group: Optional[dist.ProcessGroup] = None,
                 state: Optional[tuple[dict, dict]] = None, backward: Optional[Callable] = None,
                 autocast: Callable[[], ContextManager] = contextlib.nullcontext, label_smoothing: float = 0.0,
                 clip_grad: Optional[float] = None, clip_mode: str = "norm", timeout_s: float = 300.0,
                 max_in_flight: int = 2):
        self.model, self.optimizer, self.plan, self.layout, self.device = model, optimizer, plan, layout, device
        self.modules = plan.modules_of(layout.stage)
        self.backward, self.autocast, self.label_smoothing = backward, autocast, label_smoothing
        self.clip_grad, self.clip_mode = clip_grad, clip_mode
        if state is not None:
            model.load_state_dict(state[0])
            load_optimizer_state(optimizer, _own_optimizer_state(optimizer, state[1], self._own_params()))
        self.mirror_in = momentum_sources_elsewhere(model, plan, layout.stage)
        self.mirror_out = momentum_sources_elsewhere(model, plan, layout.stage - 1) if not layout.is_first else []
        self.where = f"stage {layout.stage} (rank {layout.rank}, {_modules_text(self.modules)})"
        self.watchdog = Watchdog(self.where, timeout_s)
        own_modules = [model.local_modules[k] for k in self.modules]
        self.sync = GradientSync(own_modules, enabled=layout.replicas > 1, group=group)
        if layout.replicas > 1:
            self.sync.broadcast_parameters()
        release_other_stages(model, plan, layout.stage, keep=self.mirror_in)
        self.step_count = 0
        self.prev = self._link(layout.prev_rank, layout.stage - 1, DATA_TAG, max_in_flight)
        self.next = self._link(layout.next_rank, layout.stage + 1, DATA_TAG, max_in_flight)
        self.params_in = self._link(layout.next_rank, layout.stage + 1, PARAMS_TAG, 1) if self.mirror_in else None
        self.params_out = self._link(layout.prev_rank, layout.stage - 1, PARAMS_TAG, 1) if self.mirror_out else None
        self._pending_params: Optional[tuple[dist.Work, torch.Tensor]] = None

    def _link(self, peer: Optional[int], peer_stage: int, tag: int, max_in_flight: int) -> Optional[Link]:
        if peer is None:
            return None
        return Link(peer, f"stage {peer_stage} (rank {peer})", self.watchdog, self.device, tag, max_in_flight)

    def _own_params(self) -> set[int]:
        return {id(p) for k in self.modules for p in self.model.local_modules[k].parameters()}

    # ------------------------------------------------------------------ training
    def train_epoch(self, batches: Optional[Iterable] = None,
                    on_step: Optional[Callable[[int, list[torch.Tensor]], None]] = None) -> StageStats:
        """Train on one epoch of micro-batches: ``batches`` of ``(x, y)`` on stage 0, received elsewhere.

        ``on_step(step, losses)`` is called after each optimizer step with this stage's detached losses.
        The model's train/eval mode is the caller's (call ``model.train()`` first, as a training loop does).
        Returns this stage's :class:`StageStats`; every stage has drained its links when it returns.
        """
        stats = StageStats(modules=self.modules, loss_sums=[0.0] * len(self.modules))
        start, idle_before = time.perf_counter(), self.watchdog.idle_s
        with self._failures():
            for h, x, y in self._inputs(batches, DATA):
                self.step_count += 1
                losses = self._train_step(h, x, y, stats)
                if on_step is not None:
                    on_step(self.step_count, losses)
            self._drain()
        stats.wall_s = time.perf_counter() - start
        stats.idle_s = self.watchdog.idle_s - idle_before
        return stats

    def _inputs(self, batches: Optional[Iterable], kind: int):
        """The epoch's ``(h, x, y)`` micro-batches (stage 0: from ``batches``; later stages: received), one at a
        time, so a stage receives the next only after its step on the last (the step count names each receive)."""
        source = iter(batches) if self.layout.is_first else None
        while (item := self._next_input(source, kind)) is not None:
            yield item

    def _next_input(self, source, kind: int):
        """``(h, x, y)`` of the next micro-batch, or None at the end of the epoch (after forwarding the end)."""
        if self.layout.is_first:
            batch = next(source, None)
            if batch is None:
                self._send(END, [])
                return None
            x, y = batch
            return x, x, y
        message = self.prev.recv(self.step_count + 1 if kind == DATA else None)
        if message.kind == END:
            self._send(END, [])
            return None
        if message.kind != kind:
            raise PipelineError(f"{self.where} expected a {'training' if kind == DATA else 'evaluation'} batch from "
                                f"stage {self.layout.stage - 1} but got message kind {message.kind}")
        return tuple(message.tensors) if kind == DATA else (message.tensors[0], None, message.tensors[1])

    def _send(self, kind: int, tensors: Sequence[torch.Tensor]) -> None:
        if self.next is not None:
            self.next.send(kind, self.step_count, tensors)

    def _train_step(self, h: torch.Tensor, x: torch.Tensor, y: torch.Tensor, stats: StageStats) -> list[torch.Tensor]:
        with self.autocast():
            out = self.model.local_step_range(h, x, y, self.modules.start, self.modules.stop, backward=self.backward,
                                              label_smoothing=self.label_smoothing)
        if self.next is not None:
            self._send(DATA, [out.logits, x, y])
        losses = [loss.float() for loss in out.losses]
        self._check_finite(losses)
        self.sync()
        if self.clip_grad is not None:  # each local module's group on its own, as train_step clips
            for group in self.optimizer.param_groups:
                if group.get("local_module") in self.modules:
                    dispatch_clip_grad(group["params"], self.clip_grad, mode=self.clip_mode)
        self._receive_momentum_sources()
        self.model.momentum_update(self.modules)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._exchange_momentum_sources()
        stats.steps += 1
        stats.samples += y.shape[0]
        for i, loss in enumerate(losses):
            stats.loss_sums[i] += loss.item()
        if self.layout.is_last and y.dim() == 1:
            stats.correct += int((out.logits.argmax(dim=-1) == y).sum())
        return losses

    def _check_finite(self, losses: list[torch.Tensor]) -> None:
        values = torch.stack(losses).tolist()
        for k, value in zip(self.modules, values):
            if not math.isfinite(value):
                raise PipelineError(f"{self.where}: the local loss of module {k} is {value} at step {self.step_count} "
                                    f"(losses of modules {_modules_text(self.modules, bare=True)}: "
                                    f"{[round(v, 4) for v in values]}); lower --lr (or fix the model)")

    def _receive_momentum_sources(self) -> None:
        """Copy θ_{t−1} of the next stage's source blocks into their mirrors (sent after its step t − 1)."""
        if self._pending_params is None:
            return
        work, flat = self._pending_params
        self.watchdog.wait(work, f"the momentum-source parameters of step {self.step_count - 1} from stage "
                                 f"{self.layout.stage + 1}")
        self._pending_params = None
        with torch.no_grad():
            offset = 0
            for p in self.mirror_in:
                p.copy_(flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()

    def _exchange_momentum_sources(self) -> None:
        """After the optimizer step: post the receive of the next stage's θ_t, send this stage's θ_t back."""
        if self.mirror_in:
            flat = torch.empty(sum(p.numel() for p in self.mirror_in), dtype=self.mirror_in[0].dtype,
                               device=self.device)
            self._pending_params = (self.params_in.post_recv_tensor(flat), flat)
        if self.mirror_out:
            with torch.no_grad():
                flat = torch.cat([p.detach().reshape(-1) for p in self.mirror_out])
            self.params_out.send_tensor(self.step_count, flat)

    def _drain(self) -> None:
        """End of an epoch: receive the last θ from the next stage, and wait until every message sent is received."""
        self._receive_momentum_sources()
        for link in (self.next, self.params_out):
            if link is not None:
                link.flush()

    @contextlib.contextmanager
    def _failures(self):
        """Turn any failure here into a :class:`PipelineError` that every other stage reports too."""
        try:
            yield
        except PipelineStopped:
            raise
        except PipelineError as error:
            self.watchdog.abort(str(error))
            raise
        except Exception as error:
            message = (f"{self.where} failed at step {self.step_count}: {type(error).__name__}: "
                       f"{str(error).splitlines()[0][:300] if str(error) else ''}")
            self.watchdog.abort(message)
            raise PipelineError(message) from error
        except BaseException:  # Ctrl-C: the other stages stop too
            self.watchdog.abort(f"{self.where} was interrupted at step {self.step_count}")
            raise

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, batches: Optional[Iterable] = None) -> Optional[torch.Tensor]:
        """The plain backbone forward, stage by stage, over ``batches`` (stage 0's loader).

        Returns, on the last stage, float64 totals ``[CE sum, top-1 hits, top-5 hits, count]`` of this replica's
        shard (as :func:`timm_local.train.metrics.evaluate` sums them); None elsewhere.
        """
        was_training = self.model.training
        self.model.eval()
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)
        with self._failures():
            for h, _, y in self._inputs(batches, EVAL):
                with self.autocast():
                    h = self.model.forward_range(h, self.modules.start, self.modules.stop)
                if self.next is not None:
                    self._send(EVAL, [h, y])
                    continue
                totals += eval_totals(h, y)
            if self.next is not None:
                self.next.flush()
        self.model.train(was_training)
        return totals if self.layout.is_last else None

    # ------------------------------------------------------------------ state
    def local_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """This stage's part of the full state: its model tensors and its parameters' optimizer state."""
        keys = owned_state_keys(self.model, self.plan, self.layout.stage)
        full = self.model.state_dict()
        model_state = {k: full[k].detach().cpu().clone() for k in keys}
        optimizer_state = self.optimizer.state_dict()
        index = _param_indices(self.optimizer)
        own = {index[id(p)] for p in self._own_params_list() if id(p) in index}
        states = {i: {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                  for i, s in optimizer_state["state"].items() if i in own}
        return model_state, {"state": states, "param_groups": optimizer_state["param_groups"]}

    def _own_params_list(self) -> list[nn.Parameter]:
        return [p for k in self.modules for p in self.model.local_modules[k].parameters()]

    def gather_state(self) -> Optional[tuple[dict[str, torch.Tensor], dict]]:
        """The full ``(model state_dict, optimizer state_dict)`` on the writer rank (None elsewhere), in the
        single-process layout, so a checkpoint of a pipelined run is a normal checkpoint. Every rank must call it."""
        mine = self.local_state() if self.layout.replica == 0 else None
        gathered = [None] * dist.get_world_size() if self.layout.rank == self.layout.writer_rank else None
        dist.gather_object(mine, gathered, dst=self.layout.writer_rank)
        if gathered is None:
            return None
        model_state, optimizer_state = {}, {"state": {}, "param_groups": None}
        for part in gathered:
            if part is None:
                continue
            model_state.update(part[0])
            optimizer_state["state"].update(part[1]["state"])
            optimizer_state["param_groups"] = part[1]["param_groups"]
        order = list(self.model.state_dict().keys())
        return {k: model_state[k] for k in order}, optimizer_state


def _param_indices(optimizer: torch.optim.Optimizer) -> dict[int, int]:
    """id(parameter) → its index in ``optimizer.state_dict()`` (groups in order, parameters in order)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {id(p): i for i, p in enumerate(params)}


def _own_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict, own: set[int]) -> dict:
    """``saved`` with the per-parameter state of other stages' parameters dropped (they are not kept here)."""
    index = _param_indices(optimizer)
    keep = {index[i] for i in own if i in index}
    return {"state": {i: s for i, s in saved["state"].items() if int(i) in keep}, "param_groups": saved["param_groups"]}


def _modules_text(modules: range, bare: bool = False) -> str:
    text = f"{modules.start}-{modules.stop - 1}" if len(modules) > 1 else f"{modules.start}"
    return text if bare else f"module{'s' if len(modules) > 1 else ''} {text}"
