"""The training step the benchmark measures, exactly as a training loop runs it.

One step = ``local_step`` (forward, local loss and backward of every module in turn) →
``momentum_update`` → ``optimizer.step`` → ``zero_grad(set_to_none=True)``. E2E is the same code
with K = 1, so baselines and local methods go through one path.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import timm
import torch

from ..local import LocalNet
from ..methods import METHODS
from .config import BenchConfig


def create_model(config: BenchConfig) -> LocalNet:
    """The registered model of ``config`` on its device, in train mode, with its memory format and options."""
    kwargs = dict(num_local_modules=config.k, img_size=config.img_size)
    if config.split is not None:
        kwargs["split"] = config.split
    if "allow_untrained_modules" in METHODS[config.method].option_names():
        # memory and time, not learning, are measured: MAN@4's modules with λ = 0 cost what trained ones do
        kwargs["allow_untrained_modules"] = True
    model = timm.create_model(config.model_name, **kwargs)
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device=config.device, memory_format=memory_format).train()
    if config.compile:
        for module in model.local_modules:
            module.compile()
    return model


def create_optimizer(model: LocalNet, device: str) -> torch.optim.SGD:
    """The papers' SGD (Nesterov momentum 0.9, weight decay) with its momentum buffers created up front.

    Creating the state eagerly puts it in the memory baseline instead of in the first step's peak;
    a zero buffer is exactly what SGD's first step would start from. ``fused=True`` (one kernel for
    all parameters) where PyTorch has it for the device.
    """
    optimizer = torch.optim.SGD(model.local_param_groups(), lr=1e-3, momentum=0.9, nesterov=True,
                                weight_decay=1e-4, fused=torch.device(device).type in ("cuda", "cpu"))
    for group in optimizer.param_groups:
        for p in group["params"]:
            optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return optimizer


def synthetic_batch(config: BenchConfig, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random batch (normalised-image statistics) and labels on the device."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(config.batch_size, 3, config.img_size, config.img_size, generator=g)
    y = torch.randint(0, num_classes, (config.batch_size,), generator=g)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    return x.to(config.device, memory_format=memory_format), y.to(config.device)


def autocast(config: BenchConfig):
    """bf16 autocast for ``precision='bf16'``, else nothing."""
    if config.precision == "bf16":
        return torch.autocast(device_type=torch.device(config.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_step(config: BenchConfig, model: LocalNet, optimizer: torch.optim.Optimizer,
              x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """A closure running one full training step on the fixed batch (no host synchronisation)."""
    def step() -> None:
        with autocast(config):
            model.local_step(x, y)
        model.momentum_update()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step
