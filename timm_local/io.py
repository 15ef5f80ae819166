"""Small file helpers shared by the data cache and the trainer."""
from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
from typing import Any

import torch

from .errors import no_space_error


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace`` it onto ``path``.

    A run killed while saving, or a full disk, leaves the previous file intact. The object is serialised
    in memory first, so a full disk is an ``OSError(ENOSPC)`` naming ``path`` (torch's own writer reports
    it as an opaque ``enforce fail ... unexpected pos``).
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    except OSError as error:
        raise no_space_error(path, error) if error.errno == errno.ENOSPC else error
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            write_bytes(f, buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise no_space_error(path, error) from error
        raise


def write_bytes(f: Any, data: memoryview) -> None:
    """``f.write(data)`` (its own function so that tests can make the disk full)."""
    f.write(data)
