"""One live process per run folder: ``<output>/.locks/<name>.pid`` holds the owner's pid and host.

A lock is live when its host is this host and its pid is a running ``train`` process; any other
lock (the process died, the machine was restarted) is stale and is taken over. Locks from another
host are respected: the sweep cannot tell whether that process is alive.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Optional


class RunLock:
    """The lock file of one run of a sweep."""

    def __init__(self, output: Path, name: str):
        self.path = output / ".locks" / f"{name}.pid"

    def owner(self) -> Optional[str]:
        """``'pid@host'`` of a live owner, or None when the run is free (no lock or a stale one)."""
        try:
            pid_text, _, host = self.path.read_text().strip().partition("@")
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        if host != socket.gethostname():
            return f"{pid}@{host}"
        return f"{pid}@{host}" if _is_train_process(pid) else None

    def acquire(self, pid: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{pid}@{socket.gethostname()}\n")
        os.replace(tmp, self.path)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def _is_train_process(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ")
    except OSError:
        return False
    return b"timm_local.train" in cmdline or b"train.py" in cmdline
