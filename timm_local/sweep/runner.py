"""Start, resume and supervise the train.py processes of a sweep, ``jobs`` at a time.

Every run is ``python -m timm_local.train --config <output>/.configs/<name>.yaml --output <output>
--experiment <name>`` (plus ``--resume <output>/<name>/last.pth.tar`` when the folder holds one), with
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` = ``threads_per_job`` and, given ``gpus``, one
``CUDA_VISIBLE_DEVICES`` per job slot (slots share GPUs round-robin when there are fewer GPUs than
jobs). A finished run (``results.json``) is never started again.

Kill-safety: the trainer writes its checkpoints atomically at the end of every epoch, so killing the
sweep at any moment loses at most the epoch in progress; the next invocation resumes every partial
run. SIGTERM/SIGINT stop the children and write the table; the children also get SIGTERM if the
sweep process dies without that chance (Linux ``PR_SET_PDEATHSIG``). A lock per run
(:class:`~timm_local.sweep.lock.RunLock`) keeps a second sweep from starting a run that is still
being trained.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, TextIO

from .lock import RunLock
from .spec import RunSpec, SweepSpec, write_run_config
from .status import LAST, RunStatus, read_status
from .table import write_table

_PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 60.0
TABLE_REFRESH_S = 60.0  # the table is rewritten this often while runs progress, and whenever one ends


@dataclass
class _Job:
    run: RunSpec
    process: subprocess.Popen
    lock: RunLock
    log: TextIO
    slot: int


class SweepRunner:
    """Runs a :class:`~timm_local.sweep.spec.SweepSpec`; :meth:`run` returns the process exit code."""

    def __init__(self, sweep: SweepSpec, jobs: int = 1, threads_per_job: int = 1, gpus: Optional[Sequence[str]] = None,
                 export_to: Optional[Path] = None, python: str = sys.executable, poll_s: float = 2.0,
                 echo: Callable[[str], None] = print):
        if jobs < 1 or threads_per_job < 1:
            raise ValueError(f"--jobs ({jobs}) and --threads-per-job ({threads_per_job}) must be >= 1")
        self.sweep, self.jobs, self.threads = sweep, jobs, threads_per_job
        self.gpus = list(gpus or [])
        self.export_to, self.python, self.poll_s, self.echo = export_to, python, poll_s, echo
        self.output = sweep.output
        self.failed: set[str] = set()
        self._stop_signal: Optional[int] = None

    # ------------------------------------------------------------------ state
    def folder(self, run: RunSpec) -> Path:
        return self.output / run.name

    def statuses(self, active: Sequence[str] = ()) -> list[RunStatus]:
        """Every run's status from its folder; runs owned by a live process show as ``running``."""
        statuses = []
        for run in self.sweep.runs:
            status = read_status(run.name, self.folder(run), run.config.get("epochs"))
            if status.state != "done":
                if run.name in active or RunLock(self.output, run.name).owner():
                    status.state = "running"
                elif run.name in self.failed:
                    status.state = "failed"
            statuses.append(status)
        return statuses

    def write_table(self, active: Sequence[str] = ()) -> str:
        return write_table(self.statuses(active), self.output)

    # ------------------------------------------------------------------ running
    def run(self) -> int:
        """Run every unfinished run once; 0 when all are done, 1 if any failed, 128 + signal when stopped."""
        self.output.mkdir(parents=True, exist_ok=True)
        statuses = self.statuses()
        queue = [r for r, s in zip(self.sweep.runs, statuses) if s.state in ("pending", "partial")]
        busy = [s.name for s in statuses if s.state == "running"]
        for name in busy:
            self.echo(f"{name}: owned by a live process ({RunLock(self.output, name).owner()}); left alone")
        previous = {signal.SIGINT: signal.signal(signal.SIGINT, self._on_signal),
                    signal.SIGTERM: signal.signal(signal.SIGTERM, self._on_signal)}
        active: dict[str, _Job] = {}
        try:
            self.echo(self.write_table())
            refreshed = time.monotonic()
            while (queue or active) and self._stop_signal is None:
                while queue and len(active) < self.jobs and self._stop_signal is None:
                    run = queue.pop(0)
                    job = self._start(run, slot=self._free_slot(active))
                    if job is not None:
                        active[run.name] = job
                for name, job in list(active.items()):
                    if job.process.poll() is not None:
                        del active[name]
                        self._finish(job)
                        self.echo(self.write_table(list(active)))
                if time.monotonic() - refreshed > TABLE_REFRESH_S:
                    self.write_table(list(active))
                    refreshed = time.monotonic()
                time.sleep(self.poll_s)
        finally:
            if active:
                self._stop_all(list(active.values()))
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.echo(self.write_table())
        if self._stop_signal is not None:
            self.echo(f"sweep stopped by signal {self._stop_signal}; run it again to resume the unfinished runs")
            return 128 + self._stop_signal
        states = [s.state for s in self.statuses()]
        return 0 if all(s == "done" for s in states) else 1

    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    def _free_slot(self, active: dict[str, _Job]) -> int:
        used = {job.slot for job in active.values()}
        return next(i for i in range(self.jobs) if i not in used)

    def command(self, run: RunSpec, resume: bool) -> list[str]:
        """The train.py command line of ``run`` (resuming from its ``last.pth.tar`` when ``resume``)."""
        config = write_run_config(run, self.output / ".configs")
        cmd = [self.python, "-m", "timm_local.train", "--config", str(config), "--output", str(self.output),
               "--experiment", run.name]
        return cmd + (["--resume", str(self.folder(run) / LAST)] if resume else [])

    def environment(self, slot: int) -> dict[str, str]:
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads),
                   TQDM_MININTERVAL="60", PYTHONUNBUFFERED="1")
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        return env

    def _start(self, run: RunSpec, slot: int) -> Optional[_Job]:
        lock = RunLock(self.output, run.name)
        owner = lock.owner()
        if owner:
            self.echo(f"{run.name}: owned by a live process ({owner}); left alone")
            return None
        status = read_status(run.name, self.folder(run))
        if status.state == "done":
            return None
        cmd = self.command(run, resume=status.resumable)
        log_path = self.output / "logs" / f"{run.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a")
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        log.flush()
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=self.environment(slot), preexec_fn=_die_with_parent)
        lock.acquire(process.pid)
        what = f"resuming after epoch {status.epochs_done}" if status.resumable else "starting"
        self.echo(f"{run.name}: {what} (pid {process.pid}, slot {slot}, log {log_path})")
        return _Job(run=run, process=process, lock=lock, log=log, slot=slot)

    def _finish(self, job: _Job) -> None:
        job.log.close()
        job.lock.release()
        code = job.process.returncode
        status = read_status(job.run.name, self.folder(job.run))
        if code == 0 and status.state == "done":
            self.echo(f"{job.run.name}: done")
            self.failed.discard(job.run.name)
            if self.export_to is not None and job.run.hub_name:
                self._export(job.run)
        else:
            self.failed.add(job.run.name)
            self.echo(f"{job.run.name}: FAILED (exit code {code}); see {self.output / 'logs' / (job.run.name + '.log')}")

    def _export(self, run: RunSpec) -> None:
        cmd = [self.python, "-m", "timm_local.hub", "export", str(self.folder(run)), "--name", run.hub_name,
               "--hub-dir", str(self.export_to)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode == 0:
            self.echo(f"{run.name}: exported to {self.export_to / run.hub_name}")
        else:
            self.echo(f"{run.name}: export FAILED: {result.stderr.strip().splitlines()[-1:]}")

    def _stop_all(self, jobs: list[_Job]) -> None:
        """SIGTERM every child, wait up to :data:`STOP_GRACE_S`, then SIGKILL; release their locks."""
        for job in jobs:
            if job.process.poll() is None:
                job.process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for job in jobs:
            try:
                job.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                job.process.kill()
                job.process.wait()
            job.log.close()
            job.lock.release()


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the sweep process dies (no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
