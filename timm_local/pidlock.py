"""A lock file that names its owner, ``pid@host``, and is taken over when that owner is gone.

A lock is *live* when its host is this host and ``is_alive(pid)`` holds; a lock whose process has
died (killed, machine restarted) is stale and is taken over. A lock written on another host is
always treated as live: this process cannot tell whether its owner still runs. Used by the trainer
(one live run per run folder) and the sweep runner (one live process per run of a sweep).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable, Optional


def process_exists(pid: int) -> bool:
    """True when a process with this pid runs on this host (``kill(pid, 0)``)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


class PidLock:
    """The lock file ``path``; ``is_alive(pid)`` decides whether a same-host owner still runs."""

    def __init__(self, path: str | os.PathLike, is_alive: Callable[[int], bool] = process_exists):
        self.path, self.is_alive = Path(path), is_alive

    def owner(self) -> Optional[str]:
        """``'pid@host'`` of a live owner, or None when the lock is free (no file, or a stale one)."""
        try:
            pid_text, _, host = self.path.read_text().strip().partition("@")
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        if host != socket.gethostname() or self.is_alive(pid):
            return f"{pid}@{host}"
        return None

    def try_acquire(self) -> Optional[str]:
        """Take the lock for this process unless a live owner holds it: None once taken, else that owner.

        Creation is atomic (a complete file is hard-linked into place, which fails if one exists), so of
        two processes starting together exactly one gets it. Taking over a stale lock is not atomic
        against a second process taking over the same stale lock at the same instant.
        """
        me = f"{os.getpid()}@{socket.gethostname()}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_text(me + "\n")
        try:
            for _ in range(2):
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    owner = self.owner()
                    if owner is not None and owner != me:
                        return owner
                    self.path.unlink(missing_ok=True)  # stale, or our own from an earlier run in this process
                    continue
                return None
        finally:
            tmp.unlink(missing_ok=True)
        return self.owner() or "another process"

    def acquire(self, pid: Optional[int] = None) -> None:
        """Write ``pid@host`` (default: this process) atomically, replacing any previous content."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_text(f"{os.getpid() if pid is None else pid}@{socket.gethostname()}\n")
        os.replace(tmp, self.path)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
