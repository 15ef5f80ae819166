"""Vision Transformers (timm's own ``VisionTransformer``) with every local method.

ImageNet: ``vit_{tiny,small,base}_patch16_224_{e2e,greedy,dgl,infopro,man,mlaan}``, whose cfgs point at
timm's ImageNet-1k weights (``pretrained=True`` fills the backbone; aux nets keep their initialisation).
Small images: ``vit_tiny_patch4_32_*`` and ``vit_small_patch4_32_*`` (tags ``cifar10``, ``svhn``) and
``vit_small_patch8_96_*`` (tag ``stl10``)::

    import timm, timm_local
    model = timm.create_model("vit_small_patch16_224_man")              # MAN++: K = 4, 3 blocks per module
    model = timm.create_model("vit_tiny_patch4_32_dgl.cifar10", num_local_modules=6)

Module 0 (the first) owns the patch embedding, the class token and the position embedding; the last module owns the
final norm and the head; the cuts fall between transformer blocks. The ``*_man`` names follow MAN++'s
ViT recipe (PUBLISHED_RESULTS.md): the aux net of module g is s·LB(x) + (2 − s)·EMA(x) over copies of the
next group's first block, one more copied block, then a LayerNorm + Linear classifier on the pooled tokens.

``describe_vit`` (registered for timm's ``VisionTransformer``) also lets ``timm_local.localize`` cut any
timm ViT built on that class (registers, average pooling, attention pooling).
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import FeatureGetterNet
from timm.models._manipulate import named_apply
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn, init_weights_vit_timm
from torch import nn

from ..constants import CIFAR10_LABELS, CIFAR10_MEAN, CIFAR10_STD, HALF_MEAN, HALF_STD, STL10_LABELS, SVHN_LABELS
from ..hub.registry import tag_info
from ..local import BackboneLayout, BoundCall, LocalNet, TokenFormat, register_describer
from .cifar_resnet_local import METHOD_NAMES, PAPERS
from .timm_backbone import create_local_timm_model, upstream_cfg

# ImageNet variants: the timm architecture and the tag of its default ImageNet-1k weights in timm.
IMAGENET_VARIANTS = {
    "vit_tiny_patch16_224": "augreg_in21k_ft_in1k",
    "vit_small_patch16_224": "augreg_in21k_ft_in1k",
    "vit_base_patch16_224": "augreg2_in21k_ft_in1k",
}
# Small-image variants: (timm architecture they are built on, patch size, image size, dataset tags).
SMALL_VARIANTS = {
    "vit_tiny_patch4_32": ("vit_tiny_patch16_224", 4, 32, ("cifar10", "svhn")),
    "vit_small_patch4_32": ("vit_small_patch16_224", 4, 32, ("cifar10", "svhn")),
    "vit_small_patch8_96": ("vit_small_patch16_224", 8, 96, ("stl10",)),
}
DATASETS = {  # tag → (mean, std, label names)
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD, CIFAR10_LABELS),
    "svhn": (HALF_MEAN, HALF_STD, SVHN_LABELS),
    "stl10": (HALF_MEAN, HALF_STD, STL10_LABELS),
}
DEFAULT_NUM_LOCAL_MODULES = 4  # MAN++ on ViT-Ti/S/B: K = 4, 3 blocks per module
# Method options of the ViT recipes: CE heads (no contrastive loss), MAN++'s learned mix and extra block.
VIT_RECIPES = {
    "infopro": dict(local_loss="ce"),
    "man": dict(base="dgl", mix="learned", extra_blocks=1, aux_config="0c1f"),
}


def forward_vit_stem(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Patch embedding → class / register tokens and position embedding → patch dropout → pre-norm."""
    return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))


def forward_vit_head(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Final norm, then timm's head (pool → fc_norm → dropout → Linear)."""
    return model.forward_head(model.norm(x))


def reinit_vit_block(block: nn.Module) -> None:
    """Re-draw a cloned block as timm initialises ViTs (truncated normal Linear, std 0.02; norms reset)."""
    named_apply(init_weights_vit_timm, block)


def describe_vit(model: VisionTransformer, arch: Optional[str] = None) -> BackboneLayout:
    """Stem (patch embedding, tokens, position embedding), every transformer block, head (norm, pool, fc).

    Raises ValueError for subclasses with parameters this layout would not own (e.g. distillation tokens).
    """
    stem_params = [p for p in (model.cls_token, model.reg_token, model.pos_embed) if p is not None]
    stem = BoundCall(partial(forward_vit_stem, model), modules=[model.patch_embed, model.pos_drop, model.patch_drop,
                                                                model.norm_pre], params=stem_params)
    head_modules = [model.norm, model.fc_norm, model.head_drop, model.head]
    if model.attn_pool is not None:
        head_modules.append(model.attn_pool)
    head = BoundCall(partial(forward_vit_head, model), modules=head_modules)
    owned = {id(p) for part in (stem, head, model.blocks) for p in part.parameters()}
    unowned = [n for n, p in model.named_parameters() if id(p) not in owned]
    if unowned:
        raise ValueError(f"cannot cut a {type(model).__name__}: parameters {unowned[:4]} are used outside "
                         f"VisionTransformer's stem / blocks / head; pass describe=... to localize()")
    depth = len(model.blocks)
    return BackboneLayout(
        stem=stem,
        blocks=list(model.blocks),
        head=head,
        block_stages=[1] * depth,
        input_size=(model.in_chans, *model.patch_embed.img_size),
        final_channels=model.embed_dim,
        arch=arch or (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or "vit",
        paper_splits={"paper": {4: (3, 6, 9)}} if depth == 12 else {},
        reinit_block=reinit_vit_block,
        feature_format="tokens",
        tokens=TokenFormat(pool="token" if model.global_pool == "token" else "avg",
                           num_prefix_tokens=model.num_prefix_tokens, patch_size=tuple(model.patch_embed.patch_size),
                           grid_size=tuple(model.patch_embed.grid_size)),
    )


register_describer(VisionTransformer, describe_vit)


def default_num_local_modules(layout: BackboneLayout) -> int:
    return min(DEFAULT_NUM_LOCAL_MODULES, layout.num_blocks)


def _small_cfg(method: str, size: int, tag: str) -> dict:
    mean, std, labels = DATASETS[tag]
    return {
        "num_classes": 10, "input_size": (3, size, size), "pool_size": None, "crop_pct": 1.0,
        "interpolation": "bicubic", "fixed_input_size": True, "mean": mean, "std": std,
        "first_conv": "patch_embed.proj", "classifier": "head", "license": "apache-2.0",
        "paper_ids": (PAPERS[method], "arXiv:2010.11929"), "label_names": labels,
    }


default_cfgs = generate_default_cfgs({
    **{f"{arch}_{method}.{tag}": upstream_cfg(f"{arch}.{tag}", PAPERS[method])
       for arch, tag in IMAGENET_VARIANTS.items() for method in METHOD_NAMES},
    **{f"{arch}_{method}.{tag}": _small_cfg(method, size, tag)
       for arch, (_, _, size, tags) in SMALL_VARIANTS.items() for method in METHOD_NAMES for tag in tags},
})


def filter_vit_checkpoint(state_dict: dict, model: LocalNet) -> dict:
    """timm's ViT checkpoint filter (position-embedding resampling, ...) applied against the backbone."""
    return checkpoint_filter_fn(state_dict, model.backbone)


def backbone_features(model: LocalNet, **feature_cfg) -> FeatureGetterNet:
    """``features_only=True``: timm's feature getter over the backbone (a feature extractor trains nothing)."""
    return FeatureGetterNet(model.backbone, **feature_cfg)


def _build_local_vit(arch: str, method: str, dataset: Optional[str] = None, **kwargs) -> LocalNet:
    timm_name, patch_size, _, tags = SMALL_VARIANTS.get(arch, (arch, None, None, ()))
    dataset = dataset if dataset in tags else (tags[0] if tags else None)
    mean, std, _ = DATASETS.get(dataset, (None, None, None))  # None: the backbone's (ImageNet variants)
    defaults = {"use_naflex": False, **({"patch_size": patch_size} if patch_size else {})}
    return create_local_timm_model(timm_name, VisionTransformer, method, partial(describe_vit, arch=arch),
                                   VIT_RECIPES.get(method, {}), default_num_local_modules, defaults,
                                   mean=mean, std=std, **kwargs)


def _create(arch: str, method: str, pretrained: bool = False, **kwargs) -> LocalNet:
    tag = tag_info(kwargs.get("pretrained_cfg"))  # e.g. 'k4_cifar10': dataset 'cifar10', 4 local modules
    if tag.num_local_modules is not None:
        kwargs.setdefault("num_local_modules", tag.num_local_modules)
    return build_model_with_cfg(partial(_build_local_vit, arch, method, tag.dataset), f"{arch}_{method}",
                                pretrained, pretrained_filter_fn=filter_vit_checkpoint,
                                feature_cfg=dict(out_indices=3, feature_cls=backbone_features), **kwargs)


@register_model
def vit_tiny_patch16_224_e2e(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-Ti/16 (224 px), trained end to end (one module, CE): the baseline."""
    return _create("vit_tiny_patch16_224", "e2e", pretrained, **kwargs)


@register_model
def vit_tiny_patch16_224_greedy(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-Ti/16 (224 px), greedy supervised learning (pooled-token Linear aux heads, CE)."""
    return _create("vit_tiny_patch16_224", "greedy", pretrained, **kwargs)


@register_model
def vit_tiny_patch16_224_dgl(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-Ti/16 (224 px), DGL (pooled-token MLP aux heads, CE)."""
    return _create("vit_tiny_patch16_224", "dgl", pretrained, **kwargs)


@register_model
def vit_tiny_patch16_224_infopro(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-Ti/16 (224 px), InfoPro (patch-to-pixel decoder + pooled-token MLP head, CE)."""
    return _create("vit_tiny_patch16_224", "infopro", pretrained, **kwargs)


@register_model
def vit_tiny_patch16_224_man(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-Ti/16 (224 px), MAN++ (learned mix of learnable + momentum copies of the next block, then one more block)."""
    return _create("vit_tiny_patch16_224", "man", pretrained, **kwargs)


@register_model
def vit_tiny_patch16_224_mlaan(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-Ti/16 (224 px), MLAAN (cascaded multilaminar losses through leap chains of cloned blocks)."""
    return _create("vit_tiny_patch16_224", "mlaan", pretrained, **kwargs)


@register_model
def vit_small_patch16_224_e2e(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-S/16 (224 px), trained end to end (one module, CE): the baseline."""
    return _create("vit_small_patch16_224", "e2e", pretrained, **kwargs)


@register_model
def vit_small_patch16_224_greedy(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-S/16 (224 px), greedy supervised learning (pooled-token Linear aux heads, CE)."""
    return _create("vit_small_patch16_224", "greedy", pretrained, **kwargs)


@register_model
def vit_small_patch16_224_dgl(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-S/16 (224 px), DGL (pooled-token MLP aux heads, CE)."""
    return _create("vit_small_patch16_224", "dgl", pretrained, **kwargs)


@register_model
def vit_small_patch16_224_infopro(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-S/16 (224 px), InfoPro (patch-to-pixel decoder + pooled-token MLP head, CE)."""
    return _create("vit_small_patch16_224", "infopro", pretrained, **kwargs)


@register_model
def vit_small_patch16_224_man(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-S/16 (224 px), MAN++ (learned mix of learnable + momentum copies of the next block, then one more block)."""
    return _create("vit_small_patch16_224", "man", pretrained, **kwargs)


@register_model
def vit_small_patch16_224_mlaan(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-S/16 (224 px), MLAAN (cascaded multilaminar losses through leap chains of cloned blocks)."""
    return _create("vit_small_patch16_224", "mlaan", pretrained, **kwargs)


@register_model
def vit_base_patch16_224_e2e(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-B/16 (224 px), trained end to end (one module, CE): the baseline."""
    return _create("vit_base_patch16_224", "e2e", pretrained, **kwargs)


@register_model
def vit_base_patch16_224_greedy(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-B/16 (224 px), greedy supervised learning (pooled-token Linear aux heads, CE)."""
    return _create("vit_base_patch16_224", "greedy", pretrained, **kwargs)


@register_model
def vit_base_patch16_224_dgl(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-B/16 (224 px), DGL (pooled-token MLP aux heads, CE)."""
    return _create("vit_base_patch16_224", "dgl", pretrained, **kwargs)


@register_model
def vit_base_patch16_224_infopro(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-B/16 (224 px), InfoPro (patch-to-pixel decoder + pooled-token MLP head, CE)."""
    return _create("vit_base_patch16_224", "infopro", pretrained, **kwargs)


@register_model
def vit_base_patch16_224_man(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-B/16 (224 px), MAN++ (learned mix of learnable + momentum copies of the next block, then one more block)."""
    return _create("vit_base_patch16_224", "man", pretrained, **kwargs)


@register_model
def vit_base_patch16_224_mlaan(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-B/16 (224 px), MLAAN (cascaded multilaminar losses through leap chains of cloned blocks)."""
    return _create("vit_base_patch16_224", "mlaan", pretrained, **kwargs)


@register_model
def vit_tiny_patch4_32_e2e(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-Ti/4 (32 px), trained end to end (one module, CE): the baseline."""
    return _create("vit_tiny_patch4_32", "e2e", pretrained, **kwargs)


@register_model
def vit_tiny_patch4_32_greedy(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-Ti/4 (32 px), greedy supervised learning (pooled-token Linear aux heads, CE)."""
    return _create("vit_tiny_patch4_32", "greedy", pretrained, **kwargs)


@register_model
def vit_tiny_patch4_32_dgl(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-Ti/4 (32 px), DGL (pooled-token MLP aux heads, CE)."""
    return _create("vit_tiny_patch4_32", "dgl", pretrained, **kwargs)


@register_model
def vit_tiny_patch4_32_infopro(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-Ti/4 (32 px), InfoPro (patch-to-pixel decoder + pooled-token MLP head, CE)."""
    return _create("vit_tiny_patch4_32", "infopro", pretrained, **kwargs)


@register_model
def vit_tiny_patch4_32_man(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-Ti/4 (32 px), MAN++ (learned mix of learnable + momentum copies of the next block, then one more block)."""
    return _create("vit_tiny_patch4_32", "man", pretrained, **kwargs)


@register_model
def vit_tiny_patch4_32_mlaan(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-Ti/4 (32 px), MLAAN (cascaded multilaminar losses through leap chains of cloned blocks)."""
    return _create("vit_tiny_patch4_32", "mlaan", pretrained, **kwargs)


@register_model
def vit_small_patch4_32_e2e(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-S/4 (32 px), trained end to end (one module, CE): the baseline."""
    return _create("vit_small_patch4_32", "e2e", pretrained, **kwargs)


@register_model
def vit_small_patch4_32_greedy(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-S/4 (32 px), greedy supervised learning (pooled-token Linear aux heads, CE)."""
    return _create("vit_small_patch4_32", "greedy", pretrained, **kwargs)


@register_model
def vit_small_patch4_32_dgl(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-S/4 (32 px), DGL (pooled-token MLP aux heads, CE)."""
    return _create("vit_small_patch4_32", "dgl", pretrained, **kwargs)


@register_model
def vit_small_patch4_32_infopro(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-S/4 (32 px), InfoPro (patch-to-pixel decoder + pooled-token MLP head, CE)."""
    return _create("vit_small_patch4_32", "infopro", pretrained, **kwargs)


@register_model
def vit_small_patch4_32_man(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-S/4 (32 px), MAN++ (learned mix of learnable + momentum copies of the next block, then one more block)."""
    return _create("vit_small_patch4_32", "man", pretrained, **kwargs)


@register_model
def vit_small_patch4_32_mlaan(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-S/4 (32 px), MLAAN (cascaded multilaminar losses through leap chains of cloned blocks)."""
    return _create("vit_small_patch4_32", "mlaan", pretrained, **kwargs)


@register_model
def vit_small_patch8_96_e2e(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-S/8 (96 px), trained end to end (one module, CE): the baseline."""
    return _create("vit_small_patch8_96", "e2e", pretrained, **kwargs)


@register_model
def vit_small_patch8_96_greedy(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-S/8 (96 px), greedy supervised learning (pooled-token Linear aux heads, CE)."""
    return _create("vit_small_patch8_96", "greedy", pretrained, **kwargs)


@register_model
def vit_small_patch8_96_dgl(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-S/8 (96 px), DGL (pooled-token MLP aux heads, CE)."""
    return _create("vit_small_patch8_96", "dgl", pretrained, **kwargs)


@register_model
def vit_small_patch8_96_infopro(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-S/8 (96 px), InfoPro (patch-to-pixel decoder + pooled-token MLP head, CE)."""
    return _create("vit_small_patch8_96", "infopro", pretrained, **kwargs)


@register_model
def vit_small_patch8_96_man(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-S/8 (96 px), MAN++ (learned mix of learnable + momentum copies of the next block, then one more block)."""
    return _create("vit_small_patch8_96", "man", pretrained, **kwargs)


@register_model
def vit_small_patch8_96_mlaan(pretrained: bool = False, **kwargs) -> LocalNet:
    """ViT-S/8 (96 px), MLAAN (cascaded multilaminar losses through leap chains of cloned blocks)."""
    return _create("vit_small_patch8_96", "mlaan", pretrained, **kwargs)
