"""CIFAR-size ResNets (He et al. 2016; METHODS.md §1.1) registered in timm with every local method.

``resnet{32,110}_{e2e,greedy,dgl,infopro,man,mlaan}`` with tags ``cifar10``, ``svhn`` and ``stl10``:

    import timm, timm_local
    model = timm.create_model("resnet32_man", num_local_modules=15)  # MAN's "K=16": one block per module
"""
from __future__ import annotations

from functools import partial
from typing import Optional, Sequence, Union

import torch
from torch import nn
from timm.layers import DropPath, create_classifier, get_device_dtype
from timm.models import build_model_with_cfg, generate_default_cfgs, get_pretrained_cfg, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq

from ..constants import CIFAR10_LABELS, CIFAR10_MEAN, CIFAR10_STD, HALF_MEAN, HALF_STD, STL10_LABELS, SVHN_LABELS
from ..hub.registry import parse_tag, published_cfg_sources, tag_info
from ..local import BackboneLayout, BoundCall, LocalNet, localize
from ..local.layout import reset_parameters_like_resnet
from ..methods import METHODS, reject_unknown_options

STAGE_WIDTHS = (16, 32, 64)
DEFAULT_NUM_LOCAL_MODULES = 4
# E2E is one module; MAN's stage rule leaves modules of a 3- or 4-module split with no objective (λ = 0, an
# error at construction), so its default is the smallest split of its tables, K = 8
METHOD_DEFAULT_NUM_LOCAL_MODULES = {"e2e": 1, "man": 8}
BLOCKS_PER_STAGE = {32: 5, 110: 18}


class BasicBlock(nn.Module):
    """conv3x3(stride) → BN → ReLU → conv3x3 → BN → drop-path, + shortcut (1x1 conv + BN on a shape change) → ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1, drop_rate: float = 0.0,
                 drop_path: float = 0.0, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(channels, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(channels, **dd)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False, **dd),
                                            nn.BatchNorm2d(channels, **dd))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.drop(self.act1(self.bn1(self.conv1(x))))))
        return self.act2(self.drop_path(out) + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32 px (CIFAR-10, SVHN) and 96 px (STL-10) images, timm-style.

    Stem conv3x3(in_chans → 16) → BN → ReLU (no max-pool); three stages of n BasicBlocks with widths
    16, 32, 64 and strides 1, 2, 2; global average pooling → Linear(64 → num_classes). ``drop_path_rate``
    is stochastic depth on the residual branches, rising linearly to it over the blocks as in timm's
    ResNet. ``device`` and ``dtype`` are timm's factory kwargs: every parameter and buffer is created there.
    """

    def __init__(self, depth: int = 32, num_classes: int = 10, in_chans: int = 3, global_pool: str = "avg",
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, img_size: int | Sequence[int] = 32,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"depth={depth} is not a CIFAR ResNet we ship: choose one of {sorted(BLOCKS_PER_STAGE)}")
        self.depth = depth
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        n = BLOCKS_PER_STAGE[depth]
        self.conv1 = nn.Conv2d(in_chans, STAGE_WIDTHS[0], 3, padding=1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0], **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=STAGE_WIDTHS[0], reduction=1, module="act1")]
        in_channels = STAGE_WIDTHS[0]
        stages = []
        num_blocks = n * len(STAGE_WIDTHS)
        for i, width in enumerate(STAGE_WIDTHS):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(in_channels if b == 0 else width, width, stride if b == 0 else 1,
                                 drop_path=drop_path_rate * (i * n + b) / (num_blocks - 1), **dd)
                      for b in range(n)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
            self.feature_info.append(dict(num_chs=width, reduction=2 ** i, module=f"layer{i + 1}"))
        self.layer1, self.layer2, self.layer3 = stages
        self.num_features = self.head_hidden_size = STAGE_WIDTHS[-1]
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        reset_parameters_like_resnet(self)

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^conv1|bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier on the model's device, in its dtype and mode (as timm's ResNet); pool kept if None."""
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.num_classes = num_classes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool,
                                                      **get_device_dtype(self))
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv1(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and the three stages. TorchScript compiles none of the code under ``not is_scripting()``."""
        if not torch.jit.is_scripting():
            if not isinstance(x, torch.fx.Proxy) and x.shape[1] != self.in_chans:  # fx tracing has no shape
                raise ValueError(f"expected {self.in_chans}-channel images, got a batch of shape {tuple(x.shape)}: "
                                 f"create the model with in_chans={x.shape[1]} or convert the images")
        x = self.forward_stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            for stage in self.stages():
                x = checkpoint_seq(stage, x)
            return x
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, Sequence[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False
                              ) -> Union[list[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]:
        """timm's ``forward_intermediates`` over ``feature_info`` (stem, layer1..3), as timm's ResNet.

        ``indices``: the last n features if an int, all if None, else those indices; ``norm`` is a no-op
        (no final norm); ``stop_early`` skips the stages after the last one taken.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: CifarResNet features are NCHW only")
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        x = self.forward_stem(x)
        intermediates = [x] if 0 in take_indices else []
        stages = self.stages()[:max_index] if stop_early else self.stages()
        for i, stage in enumerate(stages, start=1):
            x = checkpoint_seq(stage, x) if self.grad_checkpointing and not torch.jit.is_scripting() else stage(x)
            if i in take_indices:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def local_layout(self) -> BackboneLayout:
        """Stem (conv1, bn1), the 3n blocks in order, head (pool, dropout, fc) and the paper split tables."""
        blocks = [block for stage in self.stages() for block in stage]
        return BackboneLayout(
            stem=BoundCall(self.forward_stem, modules=[self.conv1, self.bn1, self.act1]),
            blocks=blocks,
            head=BoundCall(self.forward_head, modules=[self.global_pool, self.head_drop, self.fc]),
            block_stages=[s + 1 for s, stage in enumerate(self.stages()) for _ in stage],
            input_size=(self.in_chans, *self.img_size),
            final_channels=STAGE_WIDTHS[-1],
            arch=f"resnet{self.depth}",
            paper_splits=paper_splits(self.depth, stl10=self.img_size == (96, 96)),
        )


def _cuts(n: int, ends: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    """Module-end positions [stage, block] (stage 0 = the stem) → cuts (first block of the next module)."""
    return tuple(0 if s == 0 else (s - 1) * n + b + 1 for s, b in ends)


def paper_splits(depth: int, stl10: bool = False) -> dict[str, dict[int, tuple[int, ...]]]:
    """The published split tables (METHODS.md §2.2–2.4) as cuts.

    'paper': InfoPro's tables (K ∈ {2, 3, 4, 8, 16}) plus MAN/MLAAN's ResNet-110 K = 32. One block per
    module (MAN/MLAAN's ResNet-32 "16" = 15 and ResNet-110 54) is the automatic split for K = #blocks.
    'balanced': InfoPro*'s memory-balanced ResNet-110 tables (the STL-10 table at 96 px).
    """
    n = BLOCKS_PER_STAGE[depth]
    if depth == 32:
        paper = {
            2: _cuts(n, [(2, 1)]),
            3: _cuts(n, [(1, 4), (2, 4)]),
            4: _cuts(n, [(1, 2), (2, 1), (3, 0)]),
            8: _cuts(n, [(1, 0), (1, 2), (1, 4), (2, 1), (2, 3), (3, 0), (3, 2)]),
            16: _cuts(n, [(0, 0)] + [(s, b) for s in (1, 2, 3) for b in range(5)][:-1]),
        }
        return {"paper": paper}
    paper = {
        2: _cuts(n, [(2, 8)]),
        3: _cuts(n, [(1, 17), (2, 17)]),
        4: _cuts(n, [(1, 11), (2, 7), (3, 3)]),
        8: _cuts(n, [(1, 4), (1, 11), (2, 0), (2, 7), (2, 14), (3, 3), (3, 10)]),
        16: _cuts(n, [(1, 1), (1, 4), (1, 7), (1, 10), (1, 13), (1, 16), (2, 1), (2, 4), (2, 7), (2, 11), (2, 15),
                      (3, 1), (3, 5), (3, 9), (3, 13)]),
        32: _cuts(n, [(s, b) for s in (1, 2) for b in (1, 2, 4, 5, 7, 9, 11, 13, 14, 16, 17)]
                  + [(3, b) for b in (1, 3, 4, 6, 7, 9, 11, 13, 15)]),
    }
    balanced = {
        2: _cuts(n, [(1, 14)]),
        3: _cuts(n, [(1, 8), (2, 1)] if stl10 else [(1, 9), (2, 2)]),
        4: _cuts(n, [(1, 6), (1, 14), (2, 8)]),
    }
    return {"paper": paper, "balanced": balanced}


PAPERS = {
    "e2e": "arXiv:1512.03385",
    "greedy": "arXiv:1812.11446",
    "dgl": "arXiv:1901.08164",
    "infopro": "arXiv:2101.10832",
    "man": "arXiv:2407.05623",
    "mlaan": "arXiv:2406.16633",
}
METHOD_NAMES = tuple(PAPERS)


def _cfg(method: str, **kwargs) -> dict:
    return {
        "num_classes": 10, "input_size": (3, 32, 32), "pool_size": (8, 8), "crop_pct": 1.0,
        "interpolation": "bilinear", "fixed_input_size": True, "mean": CIFAR10_MEAN, "std": CIFAR10_STD,
        "first_conv": "conv1", "classifier": "fc", "license": "apache-2.0", "paper_ids": PAPERS[method],
        "label_names": CIFAR10_LABELS, **kwargs,
    }


def _tags(method: str) -> dict:
    return {
        "cifar10": _cfg(method),
        "svhn": _cfg(method, mean=HALF_MEAN, std=HALF_STD, label_names=SVHN_LABELS),
        "stl10": _cfg(method, input_size=(3, 96, 96), pool_size=(24, 24), mean=HALF_MEAN, std=HALF_STD,
                      label_names=STL10_LABELS),
    }


def _published_cfgs(arch: str, method: str) -> dict:
    """Tags with weights, e.g. ``k8_cpu10e_cifar10``: one per folder ``hub_cards/<arch>.<tag>/``
    (:mod:`timm_local.hub.registry`), with their dataset's cfg, the full ``hf_hub_id`` and, when the
    folder holds the weights, the local ``file`` timm loads first."""
    published = published_cfg_sources(arch)
    return {f"{arch}.{tag}": {**cfg, **sources} for dataset, cfg in _tags(method).items()
            for tag, sources in published.items() if parse_tag(tag).dataset == dataset}


default_cfgs = generate_default_cfgs({
    **{f"resnet{depth}_{method}.{tag}": cfg
       for depth in BLOCKS_PER_STAGE for method in METHOD_NAMES for tag, cfg in _tags(method).items()},
    **{name: cfg for depth in BLOCKS_PER_STAGE for method in METHOD_NAMES
       for name, cfg in _published_cfgs(f"resnet{depth}_{method}", method).items()},
})

_BACKBONE_ARGS = ("num_classes", "in_chans", "global_pool", "drop_rate", "drop_path_rate", "img_size", "device",
                  "dtype")


def _build_local_cifar_resnet(depth: int, method: str, tag_dataset: Optional[str] = None,
                              num_local_modules: Optional[int] = None, **kwargs) -> LocalNet:
    """Backbone + localize. The dataset (the ``dataset`` option, else the tag's) picks λ rows and the
    normalisation InfoPro's reconstruction target undoes. A misspelled keyword gets the closest valid name."""
    reject_unknown_options(kwargs, {"the local split": ("num_local_modules", "split"),
                                    f"method {method!r}": METHODS[method].option_names(),
                                    "the CifarResNet backbone": _BACKBONE_ARGS}, f"resnet{depth}_{method}")
    backbone_args = {k: kwargs.pop(k) for k in _BACKBONE_ARGS if k in kwargs}
    backbone = CifarResNet(depth=depth, **backbone_args)
    dataset = kwargs.get("dataset", tag_dataset)
    if method in ("infopro", "dgl", "greedy", "man") and dataset is not None:
        kwargs.setdefault("dataset", dataset)
    explicit_split = kwargs.get("split") is not None and not isinstance(kwargs.get("split"), str)
    if num_local_modules is None and not explicit_split:
        num_local_modules = METHOD_DEFAULT_NUM_LOCAL_MODULES.get(method, DEFAULT_NUM_LOCAL_MODULES)
    mean = HALF_MEAN if dataset in ("svhn", "stl10") else CIFAR10_MEAN
    std = HALF_STD if dataset in ("svhn", "stl10") else CIFAR10_STD
    return localize(backbone, method=method, num_local_modules=num_local_modules, mean=mean, std=std, **kwargs)


def _create(depth: int, method: str, pretrained: bool = False, **kwargs) -> LocalNet:
    variant = f"resnet{depth}_{method}"
    cfg = kwargs.get("pretrained_cfg")
    if cfg is None and pretrained:  # the bare name loads timm's default tag: build the K that tag was trained with
        cfg = get_pretrained_cfg(variant)
    tag = tag_info(cfg)  # e.g. 'k16_svhn': dataset 'svhn', 16 local modules
    dataset = tag.dataset if tag.dataset in ("cifar10", "svhn", "stl10") else None
    if tag.num_local_modules is not None:
        kwargs.setdefault("num_local_modules", tag.num_local_modules)
    return build_model_with_cfg(partial(_build_local_cifar_resnet, depth, method, dataset), variant, pretrained,
                                feature_cfg=dict(out_indices=(0, 1, 2, 3)), **kwargs)


@register_model
def resnet32_e2e(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-32 trained end to end (one module, CE): the baseline."""
    return _create(32, "e2e", pretrained, **kwargs)


@register_model
def resnet32_greedy(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-32, greedy supervised learning (GAP + Linear aux heads, CE)."""
    return _create(32, "greedy", pretrained, **kwargs)


@register_model
def resnet32_dgl(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-32, DGL (conv + MLP aux heads, CE)."""
    return _create(32, "dgl", pretrained, **kwargs)


@register_model
def resnet32_infopro(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-32, InfoPro (reconstruction + contrastive/CE aux objectives)."""
    return _create(32, "infopro", pretrained, **kwargs)


@register_model
def resnet32_man(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-32, MAN (InfoPro or DGL aux nets fed by learnable + momentum copies of the next block)."""
    return _create(32, "man", pretrained, **kwargs)


@register_model
def resnet32_mlaan(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-32, MLAAN (cascaded multilaminar losses through leap chains of cloned blocks)."""
    return _create(32, "mlaan", pretrained, **kwargs)


@register_model
def resnet110_e2e(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-110 trained end to end (one module, CE): the baseline."""
    return _create(110, "e2e", pretrained, **kwargs)


@register_model
def resnet110_greedy(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-110, greedy supervised learning (GAP + Linear aux heads, CE)."""
    return _create(110, "greedy", pretrained, **kwargs)


@register_model
def resnet110_dgl(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-110, DGL (conv + MLP aux heads, CE)."""
    return _create(110, "dgl", pretrained, **kwargs)


@register_model
def resnet110_infopro(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-110, InfoPro (reconstruction + contrastive/CE aux objectives)."""
    return _create(110, "infopro", pretrained, **kwargs)


@register_model
def resnet110_man(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-110, MAN (InfoPro or DGL aux nets fed by learnable + momentum copies of the next block)."""
    return _create(110, "man", pretrained, **kwargs)


@register_model
def resnet110_mlaan(pretrained: bool = False, **kwargs) -> LocalNet:
    """ResNet-110, MLAAN (cascaded multilaminar losses through leap chains of cloned blocks)."""
    return _create(110, "mlaan", pretrained, **kwargs)
