"""One live process per run of a sweep: ``<output>/.locks/<name>.pid`` holds the owner's pid and host.

A same-host lock is live while its pid is a running ``train`` process; a lock of a dead process is
stale and taken over; a lock from another host is respected (see :mod:`timm_local.pidlock`).
"""
from __future__ import annotations

from pathlib import Path

from ..pidlock import PidLock


class RunLock(PidLock):
    """The lock file of one run of a sweep."""

    def __init__(self, output: Path, name: str):
        super().__init__(output / ".locks" / f"{name}.pid", is_alive=_is_train_process)


def _is_train_process(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ")
    except OSError:
        return False
    return b"timm_local.train" in cmdline or b"train.py" in cmdline
