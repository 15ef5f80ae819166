"""``localize``: turn a backbone described as (stem, ordered blocks, head) into a LocalNet."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from torch import nn

from ..methods import create_method
from .layout import BackboneLayout
from .net import LocalNet
from .split import SplitSpec

_DESCRIBERS: list[tuple[type, Callable[[nn.Module], BackboneLayout]]] = []


def register_describer(cls: type, describe: Callable[[nn.Module], BackboneLayout]) -> None:
    """Teach :func:`describe_backbone` how to cut instances of ``cls`` (e.g. timm's ResNet)."""
    _DESCRIBERS.append((cls, describe))


def describe_backbone(model: nn.Module) -> BackboneLayout:
    """The model's own ``local_layout()`` if it has one, else a registered describer for its class."""
    if hasattr(model, "local_layout"):
        return model.local_layout()
    for cls, describe in reversed(_DESCRIBERS):
        if isinstance(model, cls):
            return describe(model)
    known = ", ".join(cls.__name__ for cls, _ in _DESCRIBERS) or "none registered"
    raise ValueError(f"timm_local does not know how to cut a {type(model).__name__} into local modules: it needs "
                     f"a stem, an ordered list of blocks and a head. Give the model a local_layout() method "
                     f"returning timm_local.BackboneLayout, or pass describe=... to localize() "
                     f"(known backbones: {known})")


def localize(model: nn.Module, method: str = "infopro", num_local_modules: Optional[int] = None,
             split: SplitSpec = None, describe: Optional[Callable[[nn.Module], BackboneLayout]] = None,
             mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
             **method_options) -> LocalNet:
    """Wrap ``model`` for local learning with ``method`` cut into ``num_local_modules`` modules.

    The returned :class:`LocalNet` shares ``model``'s modules and parameter names, so its state dict
    is ``model``'s plus ``aux.*``. ``mean``/``std`` default to ``model.pretrained_cfg``'s.

    Example::

        net = timm_local.localize(my_backbone, method="man", num_local_modules=4, momentum=0.995)
    """
    options = create_method(method, **method_options)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(mean if mean is not None else cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(std if std is not None else cfg.get("std", (0.229, 0.224, 0.225)))
    return LocalNet(model, describe or describe_backbone, options, num_local_modules, split, mean, std)
