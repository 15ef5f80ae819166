"""Build aux nets where the backbone lives: timm 1.0.31's ``device=`` / ``dtype=`` for modules we construct.

timm threads factory kwargs (``dd = {'device': ..., 'dtype': ...}``) through every layer constructor and,
when it rebuilds a part later (``ResNet.reset_classifier``), reads them back from the module's first
parameter (``timm.layers.get_device_dtype``). Aux nets are built by many method files from plain
``nn.Conv2d`` / ``nn.Linear`` / ``torch.ones`` calls, so instead of threading ``dd`` through each of them
the engine builds them inside :func:`factory_defaults`, which makes every tensor created without an
explicit device or dtype start on the backbone's device and in its floating dtype: no CPU float32 copy
is made first (``device='meta'`` allocates nothing).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn


@contextmanager
def factory_defaults(device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> Iterator[None]:
    """Within the block, tensor factories default to ``device`` and floating tensors to ``dtype``.

    ``device`` uses PyTorch's device context (``with torch.device(...)``); ``dtype`` sets the default
    floating dtype and restores the previous one on exit (as Hugging Face transformers does while it
    builds a model with ``torch_dtype``). ``None`` leaves that default alone. Not thread-safe: the
    default dtype is process-wide while the block runs.
    """
    previous = torch.get_default_dtype()
    if dtype is not None:
        if not dtype.is_floating_point:
            raise ValueError(f"dtype={dtype} is not a floating dtype: pass dtype=torch.float32, torch.bfloat16 or "
                             f"torch.float16")
        torch.set_default_dtype(dtype)
    try:
        if device is None:
            yield
        else:
            with torch.device(device):
                yield
    finally:
        torch.set_default_dtype(previous)


def is_on_meta(module: nn.Module) -> bool:
    """True when any parameter or buffer of ``module`` is on ``device='meta'`` (shapes only, no storage)."""
    return any(t.is_meta for t in (*module.parameters(), *module.buffers()))


def zero_filled_cpu_copy(module: nn.Module) -> nn.Module:
    """A CPU copy of ``module`` with the same structure, shapes and dtypes, every tensor zero.

    What a measurement needs of a ``device='meta'`` model, which cannot run: the bytes autograd saves per
    sample depend on shapes and dtypes only, so the copy measures what the real model would.
    """
    stand_in = copy.deepcopy(module).to_empty(device="cpu")
    with torch.no_grad():
        for t in (*stand_in.parameters(), *stand_in.buffers()):
            t.zero_()
    return stand_in
