"""Point-to-point links between stages: bounded in-flight messages, receive deadlines, a shared abort flag.

A message is a fixed-size int64 *header* (kind, step, and the dtype and shape of up to three tensors),
then the tensors, each sent with ``isend`` and received with ``irecv`` in the same order (gloo on the CPU,
NCCL on GPUs, which orders messages per pair as posted). A sender keeps at most ``max_in_flight`` messages
outstanding: the next ``send`` first waits for the oldest to be received, so memory stays bounded.

Every post and wait goes through :class:`Watchdog`: a wait gives up after ``timeout_s`` with a
:class:`PipelineError` naming this stage, the step and the peer. A failing stage first sets an abort flag
in the process group's store, then exits; its exit closes its connections, which fails its neighbours' waits
at once, and they report the flag's message and exit in turn, so a crash or a NaN anywhere stops every stage
with the failing stage's own message instead of a hang.
"""
from __future__ import annotations

import datetime
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist

ABORT_KEY = "timm_local/pipeline/abort"
MAX_TENSORS, MAX_DIMS = 3, 5
HEADER_LEN = 3 + MAX_TENSORS * (2 + MAX_DIMS)
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8,
          torch.bool)
DATA, EVAL, END = 1, 2, 3  # message kinds: a training micro-batch, an evaluation batch, the end of an epoch


class PipelineError(RuntimeError):
    """A pipeline stage failed or timed out; the message names the stage, and the module and step where known."""


class PipelineStopped(PipelineError):
    """This stage stopped because another stage failed (its message is included)."""


@dataclass
class Message:
    kind: int
    step: int
    tensors: list[torch.Tensor]


class Watchdog:
    """Waits on communication with a deadline, counts the time spent waiting, and shares failures.

    ``where`` describes this process in messages ('stage 1 (rank 1, modules 2-3)'). A wait returns when the
    operation completes, and raises :class:`PipelineError` when it fails (a peer that crashed closes its
    connections, which wakes the wait at once) or after ``timeout_s`` (a peer that hangs). Before raising, the
    abort flag is read: when another stage failed first, its message is what this stage reports
    (:class:`PipelineStopped`).
    """

    def __init__(self, where: str, timeout_s: float, store: Optional[dist.Store] = None):
        self.where, self.timeout_s = where, timeout_s
        self.store = store if store is not None else dist.distributed_c10d._get_default_store()
        self.idle_s = 0.0

    def post(self, start: Callable[[], dist.Work], what: str) -> dist.Work:
        """``start()`` (an ``isend`` / ``irecv``), its failure (the peer is gone) reported as by :meth:`wait`."""
        try:
            return start()
        except RuntimeError as error:
            raise self._failure(what, error) from None

    def wait(self, work: dist.Work, what: str) -> None:
        """Block until ``work`` completes (at most ``timeout_s``); raise :class:`PipelineError` if it cannot."""
        start = time.perf_counter()
        try:
            work.wait(timeout=datetime.timedelta(seconds=self.timeout_s))
        except RuntimeError as error:
            raise self._failure(what, error, waited=time.perf_counter() - start) from None
        finally:
            self.idle_s += time.perf_counter() - start

    def _failure(self, what: str, error: RuntimeError, waited: float = 0.0) -> PipelineError:
        self.check_abort()
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "timed out" in reason.lower() or waited >= self.timeout_s:
            return PipelineError(f"{self.where} waited {self.timeout_s:g} s for {what}: that stage hangs or is far "
                                 f"slower (see its log); if a step legitimately takes longer, raise --pipeline-timeout")
        return PipelineError(f"{self.where}: {what} failed after {waited:.1f} s, the other process closed its "
                             f"connection (it crashed or was killed: see its log): {reason[:200]}")

    def check_abort(self) -> None:
        """Raise the failing stage's message if any stage has set the abort flag."""
        try:
            if not self.store.check([ABORT_KEY]):
                return
            message = self.store.get(ABORT_KEY).decode(errors="replace")
        except RuntimeError:  # the store lives on rank 0: it is gone when rank 0 died
            raise PipelineError(f"{self.where}: lost the rendezvous store (rank 0 exited or crashed; see its log)") \
                from None
        raise PipelineStopped(f"{self.where} stopped because {message}")

    def abort(self, message: str) -> None:
        """Tell every stage that this one failed (the first failure is kept); never raises."""
        try:
            self.store.compare_set(ABORT_KEY, "", message)
        except RuntimeError:
            pass


def _header(kind: int, step: int, tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    if len(tensors) > MAX_TENSORS:
        raise ValueError(f"a pipeline message carries at most {MAX_TENSORS} tensors, got {len(tensors)}")
    values = [kind, step, len(tensors)]
    for t in tensors:
        if t.dim() > MAX_DIMS or t.dtype not in DTYPES:
            raise ValueError(f"cannot send a {t.dtype} tensor of shape {tuple(t.shape)} between pipeline stages "
                             f"(at most {MAX_DIMS} dimensions, dtypes {', '.join(map(str, DTYPES))})")
        values += [DTYPES.index(t.dtype), t.dim(), *t.shape, *[0] * (MAX_DIMS - t.dim())]
    values += [0] * (HEADER_LEN - len(values))
    return torch.tensor(values, dtype=torch.int64, device=device)


def _parse_header(header: torch.Tensor) -> tuple[int, int, list[tuple[torch.dtype, tuple[int, ...]]]]:
    values = header.tolist()
    kind, step, count = values[:3]
    specs = []
    for i in range(count):
        dtype_code, ndim, *dims = values[3 + i * (2 + MAX_DIMS): 3 + (i + 1) * (2 + MAX_DIMS)]
        specs.append((DTYPES[dtype_code], tuple(dims[:ndim])))
    return kind, step, specs


class Link:
    """One direction between two ranks: this rank sends to ``peer`` or receives from it (``tag`` keeps channels apart).

    ``peer_name`` ('stage 2') is used in messages.
    """

    def __init__(self, peer: int, peer_name: str, watchdog: Watchdog, device: torch.device, tag: int = 0,
                 max_in_flight: int = 2):
        if max_in_flight < 1:
            raise ValueError(f"--pipeline-in-flight {max_in_flight}: at least 1 micro-batch must be in flight per link")
        self.peer, self.peer_name, self.watchdog, self.device = peer, peer_name, watchdog, device
        self.tag, self.max_in_flight = tag, max_in_flight
        self._outstanding: deque[tuple[int, list[dist.Work], list[torch.Tensor]]] = deque()

    def send(self, kind: int, step: int, tensors: Sequence[torch.Tensor]) -> None:
        """Post the message (header, then the tensors); at most ``max_in_flight`` stay unreceived."""
        tensors = [t.contiguous() for t in tensors]
        self._post(step, [_header(kind, step, tensors, self.device), *tensors])

    def send_tensor(self, step: int, tensor: torch.Tensor) -> None:
        """Post one tensor without a header, for a receiver that knows its shape (:meth:`post_recv_tensor`)."""
        self._post(step, [tensor.contiguous()])

    def post_recv_tensor(self, tensor: torch.Tensor) -> dist.Work:
        """Post the receive of a :meth:`send_tensor` into ``tensor``; wait on it with the watchdog."""
        return self.watchdog.post(lambda: dist.irecv(tensor, self.peer, tag=self.tag), f"a receive from {self.peer_name}")

    def _post(self, step: int, tensors: list[torch.Tensor]) -> None:
        while len(self._outstanding) >= self.max_in_flight:
            self._wait_oldest()
        what = f"sending step {step} to {self.peer_name}"
        works = [self.watchdog.post(lambda t=t: dist.isend(t, self.peer, tag=self.tag), what) for t in tensors]
        self._outstanding.append((step, works, tensors))  # the tensors live until received

    def flush(self) -> None:
        """Wait until every posted message has been received."""
        while self._outstanding:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        step, works, _ = self._outstanding[0]
        for work in works:
            self.watchdog.wait(work, f"{self.peer_name} to receive step {step}")
        self._outstanding.popleft()

    def recv(self, expected_step: Optional[int] = None) -> Message:
        """The next message (its tensors on this rank's device); ``expected_step`` is checked against its header."""
        what = f"step {expected_step}" if expected_step is not None else "a message"
        header = torch.empty(HEADER_LEN, dtype=torch.int64, device=self.device)
        self.watchdog.wait(self.post_recv_tensor(header), f"{what} from {self.peer_name}")
        kind, step, specs = _parse_header(header)
        if kind == DATA and expected_step is not None and step != expected_step:
            raise PipelineError(f"{self.watchdog.where} expected step {expected_step} from {self.peer_name} but got "
                                f"step {step}: the stages are out of step (different data or resumed checkpoints)")
        tensors = [torch.empty(shape, dtype=dtype, device=self.device) for dtype, shape in specs]
        works = [self.post_recv_tensor(t) for t in tensors]
        for work in works:
            self.watchdog.wait(work, f"the tensors of step {step} from {self.peer_name}")
        return Message(kind=kind, step=step, tensors=tensors)
