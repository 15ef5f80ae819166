"""Size part 2 from the probe: how many jobs at once, and the longest same-for-all schedule that fits.

Model of a run's wall time (declared, not fitted): ``startup_s + epochs * epoch_s``, where
``epoch_s = steps_per_epoch / steps_per_s * EPOCH_OVERHEAD``; ``EPOCH_OVERHEAD`` (1.15) covers the
per-epoch evaluation of the 10,000 test images (about a tenth of a training epoch's forward work) and the
checkpoint writes. Two measured ways to run ``n`` runs:

- ``sequential`` (one job): the runs one after another at their solo rates, ``sum(startup_s + E * epoch_s)``;
- ``concurrent`` (``n`` jobs on the one GPU): all at once at the rates measured all at once,
  ``startup_s + E * max(epoch_s)`` (conservative: runs that finish early free the GPU for the others).

:func:`choose_schedule` keeps the papers' schedules (each run's own epochs) when they fit either way,
else the way that fits more epochs; a tie goes to one job (concurrency did not measurably pay off).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

EPOCH_OVERHEAD = 1.15


@dataclass(frozen=True)
class ProbedRun:
    """A run's probe figures: training steps/s alone and with all runs at once, and its papers' epochs."""

    name: str
    paper_epochs: int
    solo_steps_per_s: float
    concurrent_steps_per_s: float


@dataclass(frozen=True)
class Schedule:
    """The decision: ``epochs`` for every run (None: the papers' own), ``jobs`` at once, predicted wall time."""

    epochs: Optional[int]
    jobs: int
    mode: str
    predicted_s: float
    fits: bool
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def _epoch_s(steps_per_epoch: int, steps_per_s: float) -> float:
    return steps_per_epoch / steps_per_s * EPOCH_OVERHEAD


def predicted_seconds(runs: Sequence[ProbedRun], epochs: Sequence[int], steps_per_epoch: int, startup_s: float,
                      concurrent: bool) -> float:
    """Wall time of the runs for per-run ``epochs`` under the module's model."""
    if concurrent:
        return startup_s + max(e * _epoch_s(steps_per_epoch, r.concurrent_steps_per_s) for r, e in zip(runs, epochs))
    return sum(startup_s + e * _epoch_s(steps_per_epoch, r.solo_steps_per_s) for r, e in zip(runs, epochs))


def choose_schedule(runs: Sequence[ProbedRun], steps_per_epoch: int, seconds: float, startup_s: float,
                    max_epochs: Optional[int] = None) -> Schedule:
    """The schedule for ``runs`` within ``seconds`` (see the module docstring); at least one epoch.

    ``max_epochs`` caps the same-for-all schedule (the smoke's tiny runs would otherwise train for
    hundreds of epochs). Raises ValueError for an empty run list or a non-positive rate.
    """
    if not runs or any(min(r.solo_steps_per_s, r.concurrent_steps_per_s) <= 0 for r in runs):
        raise ValueError(f"choose_schedule needs runs with positive probe rates, got {list(runs)}")
    n = len(runs)
    paper = [r.paper_epochs for r in runs]
    for concurrent in (False, True):
        wall = predicted_seconds(runs, paper, steps_per_epoch, startup_s, concurrent)
        if wall <= seconds and max_epochs is None:
            return Schedule(None, n if concurrent else 1, "concurrent" if concurrent else "sequential", wall, True,
                            "the papers' schedules fit")
    per_epoch_seq = sum(_epoch_s(steps_per_epoch, r.solo_steps_per_s) for r in runs)
    per_epoch_conc = max(_epoch_s(steps_per_epoch, r.concurrent_steps_per_s) for r in runs)
    seq = math.floor((seconds - n * startup_s) / per_epoch_seq)
    conc = math.floor((seconds - startup_s) / per_epoch_conc)
    concurrent = conc > seq
    epochs = max(seq, conc)
    if max_epochs is not None:
        epochs = min(epochs, max_epochs)
    fits = epochs >= 1
    epochs = max(epochs, 1)
    wall = predicted_seconds(runs, [epochs] * n, steps_per_epoch, startup_s, concurrent)
    reason = (f"{n} jobs at once fit {conc} epochs, one job at a time {seq}: "
              f"{'concurrency pays off' if concurrent else 'concurrency did not measurably pay off'}")
    if not fits:
        reason += "; not even one epoch fits the time left, one is run anyway (the last may be cut)"
    return Schedule(epochs, n if concurrent else 1, "concurrent" if concurrent else "sequential", wall, fits, reason)
