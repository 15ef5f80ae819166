"""Model statistics for the card, counted by running the inference network on one image.

Definitions (the ones timm's model cards use):

* params: elements of the inference network's parameters (aux nets excluded); ``train_params`` counts
  every parameter of the LocalNet (aux nets and momentum copies included).
* MACs: multiply-accumulates of one forward pass = FLOPs / 2, with FLOPs from
  ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products; normalisation,
  activations and pooling are not counted).
* activations: output elements of every ``Conv*d`` and ``Linear`` layer in one forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..local import LocalNet

_COUNTED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class ModelStats:
    params: int
    train_params: int
    macs: int
    activations: int
    input_size: tuple[int, ...]


def count_stats(model: LocalNet) -> ModelStats:
    """Params, MACs and activations of ``model.forward`` on one image of ``model.pretrained_cfg['input_size']``."""
    input_size = tuple(model.pretrained_cfg["input_size"])
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.numel()))
             for m in model.backbone.modules() if isinstance(m, _COUNTED_LAYERS)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_size))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return ModelStats(
        params=sum(p.numel() for p in model.backbone.parameters()),
        train_params=sum(p.numel() for p in model.parameters()),
        macs=counter.get_total_flops() // 2,
        activations=sum(outputs),
        input_size=input_size,
    )
