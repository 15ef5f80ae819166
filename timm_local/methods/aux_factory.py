"""The one place where methods pick aux nets that fit the backbone's features.

A backbone states its ``feature_format`` in its :class:`~timm_local.local.layout.BackboneLayout`; the
methods own the aux nets. :func:`aux_family` maps the format to a family, and every method builds its
heads and decoders through it::

    family = aux_family(plan)
    family.task_head(plan, shape, config, out_features, widen, feature_dim)  # InfoPro / DGL head
    family.linear_head(plan, shape, out_features)                            # greedy / MLAAN light head
    family.decoder(plan, shape, widen)                                       # InfoPro reconstruction

``shape`` is the per-sample shape of the features the net reads: (C, H, W) for CNNs, (N, C) for tokens.

* ``cnn_cifar`` (METHODS.md §3.1, §3.2): ``aux_classifier(config)``; GAP → Linear; resize to the image
  size → two convs (``aux_nets.py``).
* ``cnn_imagenet`` (§3.4): ``ImageNetHead`` (GAP → fcs for '0c*' configs); MLAAN's light head (1x1 convs
  below 256 channels) → GAP → Linear; ``ImageNetDecoder`` (``aux_imagenet.py``).
* ``tokens``: pool → LayerNorm → MLP with the config's fc count; pool → LayerNorm → Linear; LayerNorm →
  Linear per patch → pixels (``aux_tokens.py``).
"""
from __future__ import annotations

from typing import Protocol, Sequence

from torch import nn

from .aux_imagenet import ImageNetAux
from .aux_nets import ReconstructionDecoder, aux_classifier
from .aux_tokens import TokenAux
from .base import LocalPlan


class AuxFamily(Protocol):
    """Builders of the aux nets for one feature format."""

    def task_head(self, plan: LocalPlan, shape: Sequence[int], config: str, out_features: int, widen: float,
                  feature_dim: int) -> nn.Module: ...

    def linear_head(self, plan: LocalPlan, shape: Sequence[int], out_features: int) -> nn.Module: ...

    def decoder(self, plan: LocalPlan, shape: Sequence[int], widen: float) -> nn.Module: ...


class CifarAux:
    """The aux-net family for ``feature_format='cnn_cifar'``: InfoPro's CIFAR nets (``aux_nets.py``)."""

    @staticmethod
    def task_head(plan, shape, config: str, out_features: int, widen: float, feature_dim: int) -> nn.Module:
        return aux_classifier(shape[0], config, out_features, plan.layout.final_channels, widen, feature_dim)

    @staticmethod
    def linear_head(plan, shape, out_features: int) -> nn.Module:
        return aux_classifier(shape[0], "0c1f", out_features, plan.layout.final_channels)

    @staticmethod
    def decoder(plan, shape, widen: float) -> nn.Module:
        image_channels, image_h, image_w = plan.layout.input_size
        return ReconstructionDecoder(shape[0], (image_h, image_w), image_channels, widen)


AUX_FAMILIES: dict[str, AuxFamily] = {"cnn_cifar": CifarAux(), "cnn_imagenet": ImageNetAux(), "tokens": TokenAux()}


def aux_family(plan: LocalPlan) -> AuxFamily:
    """The aux-net builders for ``plan.layout.feature_format``."""
    return AUX_FAMILIES[plan.layout.feature_format]
