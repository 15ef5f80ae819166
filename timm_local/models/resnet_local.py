"""ImageNet ResNets and ResNeXts (timm's own ``ResNet`` class; METHODS.md §1.2) with every local method.

``{resnet34,resnet50,resnet101,resnet152,resnext101_32x8d}_{e2e,greedy,dgl,infopro,man,mlaan}``. The
backbone *is* ``timm.create_model(arch)``, so its parameter names are timm's and timm's ImageNet weights
fill it; each name's cfg points at those weights (``resnet101_infopro.a1h_in1k`` →
``timm/resnet101.a1h_in1k``)::

    import timm, timm_local
    model = timm.create_model("resnet101_infopro", num_local_modules=2)                  # random init
    model = timm.create_model("resnet50_man", pretrained=True)                           # timm's weights
    model = timm.create_model("resnet50_man", pretrained=True, pretrained_cfg_overlay=dict(file="w.pth"))

Pretrained weights fill the backbone only; aux nets and momentum copies keep their initialisation (the
momentum copies were copied from the backbone *before* loading). ``img_size`` (default 224) is the
training image size the aux nets are built for; inference accepts any size, as timm's ResNet does.

``describe_resnet`` (registered for timm's ``ResNet``) also lets ``timm_local.localize`` cut any timm
ResNet variant (``resnet18d``, ``seresnext50_32x4d``, ...).
"""
from __future__ import annotations

import re
from functools import partial
from typing import Optional, Sequence

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import ResNet

from ..hub.registry import tag_info
from ..local import BackboneLayout, BoundCall, LocalNet, register_describer
from .cifar_resnet_local import METHOD_NAMES, PAPERS
from .timm_backbone import create_local_timm_model, upstream_cfg

# timm architecture → the tag of its default ImageNet-1k weights in timm, which our names carry.
UPSTREAM_TAGS = {
    "resnet34": "a1_in1k", "resnet50": "a1_in1k", "resnet101": "a1h_in1k", "resnet152": "a1h_in1k",
    "resnext101_32x8d": "tv_in1k",
}
# Blocks per stage of the published backbones (tables below only apply to exactly these).
REFERENCE_LAYERS = {
    "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3),
    "resnext101_32x8d": (3, 4, 23, 3),
}
# Published K = 2 splits as the [stage, block] end of module 0 (METHODS.md §2.5): InfoPro R101 / R152 /
# ResNeXt, MAN R34 (MAN's ResNeXt ends at [2, 0]; pass split=[4] for it). MLAAN's one block per module
# (R34 K = 16, R101 K = 33) is added by ``paper_splits``.
PAPER_MODULE_ENDS = {
    "resnet34": {2: [(2, 0)]},
    "resnet101": {2: [(2, 0)]},
    "resnet152": {2: [(2, 5)]},
    "resnext101_32x8d": {2: [(2, 2)]},
}
ONE_BLOCK_PER_MODULE = ("resnet34", "resnet101")
# The ImageNet recipes' method options (METHODS.md §3.4, §5, §6.3, §9 B7): CE instead of SupCon, MAN's
# hard-coded 5 / 0.75 weights, MLAAN's 3 laminae with independently initialised clones.
IMAGENET_RECIPES = {
    "infopro": dict(local_loss="ce"),
    "man": dict(recon_weights=(5.0, 5.0), task_weights=(0.75, 0.75)),
    "mlaan": dict(laminae=3, clone_init="random"),
}


def resnet_stages(model: ResNet) -> list[torch.nn.Sequential]:
    """``layer1``, ``layer2``, ... in order (timm's group_matcher pattern)."""
    return [m for name, m in model.named_children() if re.fullmatch(r"layer\d+", name)]


def forward_resnet_stem(model: ResNet, x: torch.Tensor) -> torch.Tensor:
    """conv1 → bn1 → act1 → maxpool, as ``ResNet.forward_features`` starts."""
    return model.maxpool(model.act1(model.bn1(model.conv1(x))))


def paper_splits(arch: str, layers: Sequence[int]) -> dict[str, dict[int, tuple[int, ...]]]:
    """The published splits (METHODS.md §2.5) as cuts, when ``layers`` are the published backbone's."""
    if REFERENCE_LAYERS.get(arch) != tuple(layers):
        return {}
    offsets = [sum(layers[:s]) for s in range(len(layers))]
    paper = {k: tuple(offsets[s - 1] + b + 1 for s, b in ends) for k, ends in PAPER_MODULE_ENDS.get(arch, {}).items()}
    if arch in ONE_BLOCK_PER_MODULE:
        paper[sum(layers)] = tuple(range(1, sum(layers)))
    return {"paper": paper} if paper else {}


def describe_resnet(model: ResNet, input_size: Optional[Sequence[int]] = None,
                    arch: Optional[str] = None) -> BackboneLayout:
    """Stem (conv1, bn1, act1, maxpool), every residual block in order, head (pool, dropout, fc).

    ``input_size`` (C, H, W) defaults to the model's pretrained cfg; ``arch`` to the cfg's architecture,
    which selects the published split tables and MLAAN chains when the blocks per stage match them.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    stages = resnet_stages(model)
    layers = [len(stage) for stage in stages]
    arch = arch or cfg.get("architecture") or "resnet"
    if arch in REFERENCE_LAYERS and REFERENCE_LAYERS[arch] != tuple(layers):
        arch = f"{arch}-{'-'.join(map(str, layers))}"  # not the published backbone: no tables, no chains
    return BackboneLayout(
        stem=BoundCall(partial(forward_resnet_stem, model),
                       modules=[model.conv1, model.bn1, model.act1, model.maxpool]),
        blocks=[block for stage in stages for block in stage],
        head=BoundCall(model.forward_head, modules=[model.global_pool, model.fc]),
        block_stages=[s + 1 for s, n in enumerate(layers) for _ in range(n)],
        input_size=tuple(input_size or cfg.get("input_size", (model.in_chans, 224, 224))),
        final_channels=model.num_features,
        arch=arch,
        paper_splits=paper_splits(arch, layers),
        feature_format="cnn_imagenet",
    )


register_describer(ResNet, describe_resnet)


def default_num_local_modules(method: str, layout: BackboneLayout) -> int:
    """MLAAN: one block per module (its ImageNet tables); the others: K = 2 (InfoPro's and MAN's)."""
    return layout.num_blocks if method == "mlaan" else 2


default_cfgs = generate_default_cfgs({
    f"{arch}_{method}.{tag}": upstream_cfg(f"{arch}.{tag}", PAPERS[method])
    for arch, tag in UPSTREAM_TAGS.items() for method in METHOD_NAMES
})


def _build_local_resnet(arch: str, method: str, img_size: int | Sequence[int] = 224, **kwargs) -> LocalNet:
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    describe = partial(describe_resnet, input_size=(kwargs.get("in_chans", 3), *size), arch=arch)
    return create_local_timm_model(arch, ResNet, method, describe, IMAGENET_RECIPES.get(method, {}),
                                   partial(default_num_local_modules, method), consumed=("img_size",), **kwargs)


def _create(arch: str, method: str, pretrained: bool = False, **kwargs) -> LocalNet:
    k = tag_info(kwargs.get("pretrained_cfg")).num_local_modules  # a published tag such as 'k2_in1k' names K
    if k is not None:
        kwargs.setdefault("num_local_modules", k)
    return build_model_with_cfg(partial(_build_local_resnet, arch, method), f"{arch}_{method}", pretrained,
                                **kwargs)


@register_model
def resnet34_e2e(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-34, trained end to end (one module, CE): the baseline."""
    return _create("resnet34", "e2e", pretrained, **kwargs)


@register_model
def resnet34_greedy(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-34, greedy supervised learning (GAP + Linear aux heads, CE)."""
    return _create("resnet34", "greedy", pretrained, **kwargs)


@register_model
def resnet34_dgl(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-34, DGL (InfoPro's ImageNet aux head, CE)."""
    return _create("resnet34", "dgl", pretrained, **kwargs)


@register_model
def resnet34_infopro(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-34, InfoPro (ImageNet decoder + aux head, CE)."""
    return _create("resnet34", "infopro", pretrained, **kwargs)


@register_model
def resnet34_man(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-34, MAN (InfoPro's ImageNet aux nets fed by learnable + momentum copies of the next block)."""
    return _create("resnet34", "man", pretrained, **kwargs)


@register_model
def resnet34_mlaan(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-34, MLAAN (3-laminar cascaded losses through leap chains of cloned blocks)."""
    return _create("resnet34", "mlaan", pretrained, **kwargs)


@register_model
def resnet50_e2e(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-50, trained end to end (one module, CE): the baseline."""
    return _create("resnet50", "e2e", pretrained, **kwargs)


@register_model
def resnet50_greedy(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-50, greedy supervised learning (GAP + Linear aux heads, CE)."""
    return _create("resnet50", "greedy", pretrained, **kwargs)


@register_model
def resnet50_dgl(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-50, DGL (InfoPro's ImageNet aux head, CE)."""
    return _create("resnet50", "dgl", pretrained, **kwargs)


@register_model
def resnet50_infopro(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-50, InfoPro (ImageNet decoder + aux head, CE)."""
    return _create("resnet50", "infopro", pretrained, **kwargs)


@register_model
def resnet50_man(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-50, MAN (InfoPro's ImageNet aux nets fed by learnable + momentum copies of the next block)."""
    return _create("resnet50", "man", pretrained, **kwargs)


@register_model
def resnet50_mlaan(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-50, MLAAN (3-laminar cascaded losses through leap chains of cloned blocks)."""
    return _create("resnet50", "mlaan", pretrained, **kwargs)


@register_model
def resnet101_e2e(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-101, trained end to end (one module, CE): the baseline."""
    return _create("resnet101", "e2e", pretrained, **kwargs)


@register_model
def resnet101_greedy(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-101, greedy supervised learning (GAP + Linear aux heads, CE)."""
    return _create("resnet101", "greedy", pretrained, **kwargs)


@register_model
def resnet101_dgl(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-101, DGL (InfoPro's ImageNet aux head, CE)."""
    return _create("resnet101", "dgl", pretrained, **kwargs)


@register_model
def resnet101_infopro(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-101, InfoPro (ImageNet decoder + aux head, CE)."""
    return _create("resnet101", "infopro", pretrained, **kwargs)


@register_model
def resnet101_man(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-101, MAN (InfoPro's ImageNet aux nets fed by learnable + momentum copies of the next block)."""
    return _create("resnet101", "man", pretrained, **kwargs)


@register_model
def resnet101_mlaan(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-101, MLAAN (3-laminar cascaded losses through leap chains of cloned blocks)."""
    return _create("resnet101", "mlaan", pretrained, **kwargs)


@register_model
def resnet152_e2e(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-152, trained end to end (one module, CE): the baseline."""
    return _create("resnet152", "e2e", pretrained, **kwargs)


@register_model
def resnet152_greedy(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-152, greedy supervised learning (GAP + Linear aux heads, CE)."""
    return _create("resnet152", "greedy", pretrained, **kwargs)


@register_model
def resnet152_dgl(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-152, DGL (InfoPro's ImageNet aux head, CE)."""
    return _create("resnet152", "dgl", pretrained, **kwargs)


@register_model
def resnet152_infopro(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-152, InfoPro (ImageNet decoder + aux head, CE)."""
    return _create("resnet152", "infopro", pretrained, **kwargs)


@register_model
def resnet152_man(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-152, MAN (InfoPro's ImageNet aux nets fed by learnable + momentum copies of the next block)."""
    return _create("resnet152", "man", pretrained, **kwargs)


@register_model
def resnet152_mlaan(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-152, MLAAN (3-laminar cascaded losses through leap chains of cloned blocks)."""
    return _create("resnet152", "mlaan", pretrained, **kwargs)


@register_model
def resnext101_32x8d_e2e(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNeXt-101 32x8d, trained end to end (one module, CE): the baseline."""
    return _create("resnext101_32x8d", "e2e", pretrained, **kwargs)


@register_model
def resnext101_32x8d_greedy(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNeXt-101 32x8d, greedy supervised learning (GAP + Linear aux heads, CE)."""
    return _create("resnext101_32x8d", "greedy", pretrained, **kwargs)


@register_model
def resnext101_32x8d_dgl(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNeXt-101 32x8d, DGL (InfoPro's ImageNet aux head, CE)."""
    return _create("resnext101_32x8d", "dgl", pretrained, **kwargs)


@register_model
def resnext101_32x8d_infopro(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNeXt-101 32x8d, InfoPro (ImageNet decoder + aux head, CE)."""
    return _create("resnext101_32x8d", "infopro", pretrained, **kwargs)


@register_model
def resnext101_32x8d_man(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNeXt-101 32x8d, MAN (InfoPro's ImageNet aux nets fed by learnable + momentum copies of the next block)."""
    return _create("resnext101_32x8d", "man", pretrained, **kwargs)


@register_model
def resnext101_32x8d_mlaan(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNeXt-101 32x8d, MLAAN (3-laminar cascaded losses through leap chains of cloned blocks)."""
    return _create("resnext101_32x8d", "mlaan", pretrained, **kwargs)
