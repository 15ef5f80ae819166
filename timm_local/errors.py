"""One-line errors for the command-line tools: ``error: <what> — <how to fix>`` (docs/ERRORS.md).

:func:`run_command` runs a tool's body and turns the errors a user can cause (bad arguments, bad data,
bad checkpoints, a full disk, out of memory, Ctrl-C) into one line on stderr and a non-zero exit code;
``--debug`` shows the traceback instead. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno
import os
import sys
from typing import Callable, TypeVar

import torch

T = TypeVar("T")

EXIT_ERROR, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130
# errors whose message already says what is wrong and what to do (bad argument, data or checkpoint)
BAD_INPUT = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def no_space_error(path: str, cause: OSError) -> OSError:
    """An ``OSError(ENOSPC)`` whose message names the file that could not be written."""
    error = OSError(errno.ENOSPC, f"no space left on device at {path}", path)
    error.__cause__ = cause
    return error


def describe(error: BaseException, recovery: str = "",
             stopped: tuple[type[BaseException], ...] = ()) -> tuple[str, int]:
    """The one-line message and exit code for an expected ``error``, or ``("", 0)`` for a bug.

    ``recovery`` (e.g. "resume with --resume <run>/last.pth.tar") is appended where a run stopped
    part-way; ``stopped`` are extra error types that stop a run (the trainer's NaN stop).
    """
    tail = f"; {recovery}" if recovery else ""
    if isinstance(error, KeyboardInterrupt):
        return f"interrupted{tail}", EXIT_INTERRUPTED
    if isinstance(error, stopped):
        return f"error: training stopped: {error}{tail}", EXIT_ERROR
    if isinstance(error, torch.OutOfMemoryError):
        return (f"error: out of memory — lower --batch-size, add --grad-checkpointing or use more local "
                f"modules{tail}"), EXIT_ERROR
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return f"error: {error.strerror} — free some space or choose another --output{tail}", EXIT_ERROR
    if isinstance(error, BAD_INPUT):
        return f"error: {error}", EXIT_BAD_INPUT
    return "", 0


def run_command(body: Callable[[], T], debug: bool = False,
                recovery: Callable[[BaseException], str] = lambda error: "",
                stopped: tuple[type[BaseException], ...] = (),
                abandon: tuple[type[BaseException], ...] = ()) -> T:
    """``body()``; an expected error becomes one line on stderr and ``sys.exit(code)`` (see :func:`describe`).

    ``recovery(error)`` says how to continue after a run stopped part-way. After an error of an ``abandon``
    type (a failed pipeline stage) the process leaves with ``os._exit(code)`` once the line is written: its
    peers may be gone, and the interpreter's shutdown could wait on the process group they left.
    """
    try:
        return body()
    except BaseException as error:  # noqa: BLE001 - re-raised below unless it is one we can explain
        if debug or isinstance(error, SystemExit):
            raise
        message, code = describe(error, "" if isinstance(error, BAD_INPUT) else recovery(error), stopped)
        if not code:
            raise
        print(message, file=sys.stderr, flush=True)
        if isinstance(error, abandon):
            sys.stdout.flush()
            os._exit(code)
        sys.exit(code)
