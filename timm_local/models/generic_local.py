"""A describer for timm CNNs built as ``stem`` → ``stages`` → ``norm_pre`` → ``forward_head`` (ConvNeXt, ...).

Registered for every ``nn.Module``, so it is the fallback: describers registered later for specific
classes (timm's ResNet and VisionTransformer, or the user's own) win. Each stage is cut into its
blocks when it is timm's ``downsample`` + ``blocks`` pattern (the downsample joins the first block),
and is one block otherwise. The cut is checked before it is returned: the stem, blocks and head run in
order must give the model's own logits, and every parameter must belong to one of them. Anything
else gets a ValueError that says what is needed::

    net = timm_local.localize(timm.create_model("convnext_tiny"), method="dgl", num_local_modules=4)
"""
from __future__ import annotations

from functools import partial
from typing import Optional, Sequence

import torch
from torch import nn

from ..local import BackboneLayout, BoundCall, register_describer

NEEDS = ("it needs `stem`, `stages` and `forward_head` with forward_features = norm_pre(stages(stem(x))), "
         "as timm's ConvNeXt has (timm's ResNet and VisionTransformer have their own describers); otherwise give "
         "the model a local_layout() method returning timm_local.BackboneLayout, or pass describe=... to localize()")


def stage_blocks(stage: nn.Module) -> list[nn.Module]:
    """A ``downsample`` + ``blocks`` stage as [downsample → block 0, block 1, ...]; any other stage whole."""
    blocks = getattr(stage, "blocks", None)
    downsample = getattr(stage, "downsample", None)
    if not isinstance(blocks, nn.Sequential) or not isinstance(downsample, nn.Module) or not len(blocks):
        return [stage]
    return [nn.Sequential(downsample, blocks[0]), *blocks[1:]]


def forward_generic_head(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    norm_pre = getattr(model, "norm_pre", None)
    return model.forward_head(norm_pre(x) if norm_pre is not None else x)


def check_layout(model: nn.Module, layout: BackboneLayout) -> None:
    """Raise ValueError unless every parameter is in the layout and stem → blocks → head == model (eval mode)."""
    owned = {id(p) for part in (layout.stem, *layout.blocks, layout.head) for p in part.parameters()}
    unowned = [n for n, p in model.named_parameters() if id(p) not in owned]
    if unowned:
        raise ValueError(f"cannot cut a {type(model).__name__} into local modules: parameters {unowned[:4]} are "
                         f"outside its stem, stages and head; {NEEDS}")
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        x = torch.randn(2, *layout.input_size, generator=torch.Generator().manual_seed(0)).to(param)
        with torch.no_grad():
            h = layout.stem(x)
            for block in layout.blocks:
                h = block(h)
            ok = torch.allclose(layout.head(h), model(x), rtol=1e-4, atol=1e-5)
    finally:
        model.train(was_training)
    if not ok:
        raise ValueError(f"cannot cut a {type(model).__name__} into local modules: running its stem, stages and "
                         f"head in order does not reproduce model(x); {NEEDS}")


def describe_stages(model: nn.Module, input_size: Optional[Sequence[int]] = None) -> BackboneLayout:
    """Stem, every block of every stage, head (``norm_pre`` + ``forward_head``), checked by :func:`check_layout`."""
    missing = [name for name in ("stem", "stages", "forward_head") if not hasattr(model, name)]
    if missing:
        raise ValueError(f"timm_local does not know how to cut a {type(model).__name__} into local modules (it has "
                         f"no {', '.join(map(repr, missing))}): {NEEDS}")
    if getattr(model, "output_fmt", "NCHW") != "NCHW":
        raise ValueError(f"cannot cut a {type(model).__name__}: its features are {model.output_fmt}, the aux nets "
                         f"of the generic describer read NCHW; {NEEDS}")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    blocks, block_stages = [], []
    for s, stage in enumerate(model.stages):
        parts = stage_blocks(stage)
        blocks += parts
        block_stages += [s + 1] * len(parts)
    head_modules = [m for name, m in model.named_children() if name not in ("stem", "stages")]
    layout = BackboneLayout(
        stem=model.stem,
        blocks=blocks,
        head=BoundCall(partial(forward_generic_head, model), modules=head_modules),
        block_stages=block_stages,
        input_size=tuple(input_size or cfg.get("input_size", (3, 224, 224))),
        final_channels=model.num_features,
        arch=cfg.get("architecture", type(model).__name__.lower()),
        feature_format="cnn_imagenet",
    )
    check_layout(model, layout)
    return layout


register_describer(nn.Module, describe_stages)
