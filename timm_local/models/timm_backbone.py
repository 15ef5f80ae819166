"""Build a registered local model over one of timm's own backbones (ResNet, VisionTransformer).

The registered entrypoints (``resnet_local.py``, ``vit_local.py``) hand their ``create_model`` kwargs
here: method options go to the method, everything else to timm's backbone class, and anything that
fits neither is rejected with both lists of valid names.
"""
from __future__ import annotations

import inspect
from typing import Callable, Mapping, Optional, Sequence

import timm
from timm.models import get_pretrained_cfg
from torch import nn

from ..local import BackboneLayout, LocalNet, localize
from ..methods import METHODS, reject_unknown_options

LOCALIZE_ARGS = ("num_local_modules", "split")


# ``notes`` entry of every tag whose weights are timm's end-to-end checkpoint (see :func:`upstream_cfg`)
BACKBONE_INIT_NOTE = ("backbone initialisation: timm's end-to-end ImageNet weights fill the backbone; the aux nets "
                      "are not pretrained and no local learning has been done")


def upstream_cfg(name: str, method_paper: str) -> dict:
    """timm's pretrained cfg of ``name`` ('arch.tag'), weights from its Hub id only, our method's paper first.

    The source is narrowed to ``hf_hub_id`` (timm's PyTorch weights): timm's ``url`` may point at a
    foreign format (ViT .npz) that only timm's own class can read (``custom_load``). Its ``notes`` start
    with :data:`BACKBONE_INIT_NOTE`: these weights initialise a local-learning run, they are not the
    method's weights (``timm_local.list_pretrained`` leaves them out unless asked).
    """
    cfg = get_pretrained_cfg(name).to_dict()
    for key in ("architecture", "tag", "url", "custom_load"):
        cfg.pop(key, None)
    papers = cfg.get("paper_ids") or ()
    cfg["paper_ids"] = (method_paper, *((papers,) if isinstance(papers, str) else papers))
    cfg["notes"] = (BACKBONE_INIT_NOTE, *(cfg.get("notes") or ()))
    return cfg


def is_backbone_init(name: str) -> bool:
    """Whether the pretrained tag ``name`` carries timm's end-to-end weights (:data:`BACKBONE_INIT_NOTE`)."""
    return BACKBONE_INIT_NOTE in (get_pretrained_cfg(name).notes or ())


def route_kwargs(method: str, backbone_cls: type, kwargs: dict, consumed: Sequence[str] = (),
                 what: Optional[str] = None) -> tuple[dict, dict]:
    """Split ``kwargs`` into (backbone kwargs, method kwargs incl. ``num_local_modules`` / ``split``).

    A name neither takes raises :class:`~timm_local.methods.UnknownOptionError` naming ``what`` is built and
    suggesting the closest valid name; ``consumed`` are the registered variant's own arguments (e.g.
    ``img_size``), listed as valid too.
    """
    method_names = set(METHODS[method].option_names()) | set(LOCALIZE_ARGS)
    backbone_names = (set(inspect.signature(backbone_cls).parameters) - {"self", "kwargs"}) | set(consumed)
    reject_unknown_options(kwargs, {"the local split": LOCALIZE_ARGS,
                                    f"method {method!r}": METHODS[method].option_names(),
                                    f"the {backbone_cls.__name__} backbone": backbone_names},
                           what or f"a {backbone_cls.__name__} localized with {method!r}")
    method_kwargs = {k: v for k, v in kwargs.items() if k in method_names}
    backbone_kwargs = {k: v for k, v in kwargs.items() if k not in method_names}
    return backbone_kwargs, method_kwargs


def create_local_timm_model(timm_name: str, backbone_cls: type, method: str,
                            describe: Callable[[nn.Module], BackboneLayout], recipe: Mapping[str, object],
                            default_num_local_modules: Callable[[BackboneLayout], int],
                            backbone_defaults: Optional[Mapping[str, object]] = None,
                            mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                            consumed: Sequence[str] = (), **kwargs) -> LocalNet:
    """``timm.create_model(timm_name, **backbone kwargs)`` localized with ``method``.

    Args:
        timm_name: the timm architecture the backbone is (its class, arguments and parameter names).
        backbone_cls: that architecture's class, whose constructor arguments are accepted here.
        describe: cuts the backbone into stem / blocks / head (e.g. a ``partial`` fixing the image size).
        recipe: the method options the papers used for this backbone family; the caller's kwargs win.
        default_num_local_modules: K when neither ``num_local_modules`` nor an explicit split is given.
        backbone_defaults: backbone arguments of this registered variant (e.g. a smaller patch size).
        mean, std: the input normalisation (InfoPro's reconstruction target); default: the backbone's cfg.
        consumed: arguments the registered entrypoint took itself (``img_size`` of the ResNets), for the
            list of valid names an unknown one gets.
    """
    backbone_kwargs, method_kwargs = route_kwargs(method, backbone_cls, kwargs, consumed,
                                                  what=f"{timm_name} localized with {method!r}")
    backbone = timm.create_model(timm_name, pretrained=False, **{**(backbone_defaults or {}), **backbone_kwargs})
    num_local_modules = method_kwargs.pop("num_local_modules", None)
    split = method_kwargs.get("split")
    if num_local_modules is None and (split is None or isinstance(split, str)):
        num_local_modules = 1 if method == "e2e" else default_num_local_modules(describe(backbone))
    return localize(backbone, method=method, num_local_modules=num_local_modules, describe=describe,
                    mean=mean, std=std, **{**recipe, **method_kwargs})
