"""timm_local: supervised local learning (InfoPro, MAN, MLAAN, DGL, greedy SL) for timm models.

``import timm_local`` registers the models in timm's registry::

    import timm, timm_local
    model = timm.create_model("resnet32_man", num_local_modules=15)  # MAN's "K=16": one block per module
"""
from . import models  # noqa: F401  (registers the models in timm)
from .local import BackboneLayout, BoundCall, LocalModule, LocalNet, localize, register_describer
from .methods import METHODS, create_method

__version__ = "0.1.0"


def list_models(filter: str = "*", **kwargs) -> list[str]:
    """The model names timm_local registers (a filter over ``timm.list_models``)."""
    import timm

    return timm.list_models(filter, module=["cifar_resnet_local", "resnet_local", "vit_local"], **kwargs)


def list_pretrained(filter: str = "*", include_backbone_init: bool = False) -> list[str]:
    """The ``arch.tag`` names with weights trained by local learning here: one per folder in hub_cards/
    (see ``timm_local.hub``).

    ``include_backbone_init=True`` adds the ImageNet tags whose weights are timm's own end-to-end
    checkpoints (e.g. ``resnet50_man.a1_in1k`` from ``timm/resnet50.a1_in1k``): they load as the
    backbone's initialisation, with untrained aux nets, and their ``pretrained_cfg.notes`` say so.
    """
    from .models.timm_backbone import is_backbone_init

    names = list_models(filter, pretrained=True)
    return names if include_backbone_init else [name for name in names if not is_backbone_init(name)]


__all__ = ["BackboneLayout", "BoundCall", "LocalModule", "LocalNet", "METHODS", "create_method", "list_models",
           "list_pretrained", "localize", "register_describer", "__version__"]
