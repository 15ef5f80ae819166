"""Training-loss bookkeeping without per-step host syncs, the non-finite-loss stop, and evaluation."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm


class NonFiniteLossError(RuntimeError):
    """A local loss became NaN or inf; the message names the module and the step."""


class LossMonitor:
    """Per-module training losses and train top-1 of one epoch, accumulated on the device.

    ``update`` queues nothing to the host; ``check`` (every ``--log-interval`` steps and at the end
    of the epoch) makes one host sync: it reads whether any queued loss was NaN/inf (combined over
    all processes) and raises :class:`NonFiniteLossError` naming the first offending module and step.
    """

    def __init__(self, num_modules: int, device: torch.device, accelerator: Optional[Accelerator] = None):
        self.accelerator = accelerator
        self.loss_sum = torch.zeros(num_modules, device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.float64)
        self.steps = 0
        self.samples = 0
        self._pending: list[torch.Tensor] = []
        self._pending_steps: list[int] = []

    def update(self, step: int, losses: Sequence[torch.Tensor], logits: torch.Tensor, target: torch.Tensor) -> None:
        stacked = torch.stack([loss.float() for loss in losses])
        self._pending.append(stacked)
        self._pending_steps.append(step)
        self.loss_sum += stacked.double()
        self.correct += (logits.argmax(dim=-1) == target).sum()
        self.steps += 1
        self.samples += target.shape[0]

    def check(self, epoch: int) -> None:
        """Raise if any loss queued since the last check is not finite (on any process)."""
        if not self._pending:
            return
        losses = torch.stack(self._pending)
        bad = (~torch.isfinite(losses)).any().to(torch.int32)
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        steps, self._pending, self._pending_steps = self._pending_steps, [], []
        if not bad.item():
            return
        finite = torch.isfinite(losses).cpu()
        if finite.all():
            raise NonFiniteLossError(f"a local loss became NaN/inf on another process in epoch {epoch}, between steps "
                                     f"{steps[0]} and {steps[-1]}")
        row, module = (~finite).nonzero()[0].tolist()
        value = losses[row, module].item()
        raise NonFiniteLossError(f"the local loss of module {module} is {value} at epoch {epoch}, step {steps[row]} "
                                 f"(losses of that step: {[round(v, 4) for v in losses[row].tolist()]})")

    def mean_losses(self) -> list[float]:
        """Mean loss of every module over this process's steps so far (one host sync)."""
        return (self.loss_sum / max(self.steps, 1)).tolist()

    def train_top1(self) -> float:
        return 100.0 * self.correct.item() / max(self.samples, 1)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, accelerator: Accelerator) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean CE of the plain backbone ``model(x)``, over every process's shard.

    Shows a progress bar on the main process (removed when done). Runs under ``accelerator.autocast()`` (the model is not a prepared module, so nothing else applies
    mixed precision to it) and in eval mode (BatchNorm running statistics, no aux nets).
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, device=accelerator.device, dtype=torch.float64)  # loss sum, top-1, top-5, count
    for x, y in tqdm(loader, desc="eval", leave=False, dynamic_ncols=True, disable=not accelerator.is_main_process):
        with accelerator.autocast():
            logits = model(x)
        totals += eval_totals(logits, y)
    if accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    model.train(was_training)
    return metrics_from_totals(totals.tolist())


def eval_totals(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """float64 ``[CE sum, top-1 hits, top-5 hits, count]`` of one batch (logits taken in fp32)."""
    logits = logits.float()
    hits = logits.topk(min(5, logits.shape[-1]), dim=-1).indices == y[:, None]
    return torch.stack([F.cross_entropy(logits, y, reduction="sum").double(), hits[:, 0].sum().double(),
                        hits.any(dim=-1).sum().double(),
                        torch.tensor(float(y.shape[0]), device=y.device, dtype=torch.float64)])


def metrics_from_totals(totals: Sequence[float]) -> dict[str, float]:
    """``[CE sum, top-1 hits, top-5 hits, count]`` → mean CE and top-1 / top-5 accuracy (%)."""
    loss, top1, top5, count = totals
    count = max(count, 1.0)
    return {"eval_loss": loss / count, "eval_top1": 100.0 * top1 / count, "eval_top5": 100.0 * top5 / count}
