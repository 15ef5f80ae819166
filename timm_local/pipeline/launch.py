"""Start N local processes of one command as a torch.distributed job (what torchrun does, minus its restarts).

As under torchrun, the rendezvous store is served by the launching process (``TORCHELASTIC_USE_AGENT_STORE``),
not by rank 0, so it outlives any worker. Unlike torchrun, a worker that dies is not followed by SIGTERM to the
others, so a caller (a test, the benchmark) sees how every stage itself reacts to a failed one.
"""
from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch.distributed as dist


@dataclass
class ProcessResult:
    rank: int
    returncode: int
    stdout: str
    stderr: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_local_job(command: Sequence[str], world_size: int, timeout_s: float,
                  env: Optional[Mapping[str, str]] = None) -> list[ProcessResult]:
    """Run ``command`` as ranks 0 .. world_size − 1 (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT set) and wait.

    A process still running after ``timeout_s`` is killed (its return code is then negative).
    """
    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)  # noqa: F841 (kept alive)
    base = {**os.environ, **(env or {}), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "WORLD_SIZE": str(world_size), "LOCAL_WORLD_SIZE": str(world_size), "TORCHELASTIC_USE_AGENT_STORE": "True"}
    deadline = time.monotonic() + timeout_s
    with tempfile.TemporaryDirectory(prefix="timm_local_job_") as logs:
        files = [(open(os.path.join(logs, f"{r}.out"), "w+"), open(os.path.join(logs, f"{r}.err"), "w+"))
                 for r in range(world_size)]
        procs = [subprocess.Popen(list(command), env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                                  stdout=out, stderr=err, text=True) for r, (out, err) in enumerate(files)]
        results = []
        for rank, (proc, (out, err)) in enumerate(zip(procs, files)):
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            out.seek(0)
            err.seek(0)
            results.append(ProcessResult(rank, proc.returncode, out.read(), err.read()))
            out.close()
            err.close()
    return results
