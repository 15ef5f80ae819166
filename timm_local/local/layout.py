"""How a backbone describes itself to the local-learning engine: (stem, ordered blocks, head).

A backbone never knows about methods. It hands the engine a :class:`BackboneLayout`: a stem module
(image -> first feature), the ordered list of blocks (feature -> feature), a head module (last
feature -> logits), the stage of every block, and optionally the split tables its papers published.
The engine cuts the block list into K local modules; methods attach aux nets at the cuts.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import nn


class BoundCall(nn.Module):
    """Run ``fn`` (usually a bound method of the backbone) while owning ``modules`` and ``params``.

    The owned modules and parameters are the ones ``fn`` uses; registering them here makes them part
    of the local module that holds this object (for the optimizer's param groups and DDP), while the
    backbone keeps its own names for them (so state dicts stay timm's).
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], modules: Sequence[nn.Module] = (),
                 params: Sequence[nn.Parameter] = ()):
        super().__init__()
        self.fn = fn
        self.owned_modules = nn.ModuleList(modules)
        self.owned_params = nn.ParameterList(params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def reset_parameters_like_resnet(module: nn.Module) -> None:
    """Re-draw a cloned block's weights the way the ResNets of all three papers initialise.

    Conv2d: w ~ N(0, sqrt(2 / (k_h * k_w * C_out))) (He, fan-out); BatchNorm: weight 1, bias 0;
    Linear and anything else with ``reset_parameters``: PyTorch's default (METHODS.md §1.1).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif m is not module and hasattr(m, "reset_parameters") and not list(m.children()):
            m.reset_parameters()


FEATURE_FORMATS = ("cnn_cifar", "cnn_imagenet", "tokens")


@dataclass(frozen=True)
class TokenFormat:
    """How a token backbone (ViT) lays out its (B, N, C) features, so aux nets can read them.

    Attributes:
        pool: how the backbone pools its last tokens: 'token' (the class token) or 'avg' (mean of the
            patch tokens).
        num_prefix_tokens: class / register tokens in front of the patch tokens.
        patch_size: (p_h, p_w) pixels per patch token.
        grid_size: (g_h, g_w) patch tokens per column / row; N = num_prefix_tokens + g_h · g_w.
    """

    pool: str
    num_prefix_tokens: int
    patch_size: tuple[int, int]
    grid_size: tuple[int, int]


@dataclass
class BackboneLayout:
    """A backbone cut into stem, blocks and head.

    Attributes:
        stem: image -> feature before the first block (owns the stem parameters).
        blocks: the ordered blocks; block j maps the feature at position j to position j + 1.
        head: feature after the last block -> logits (final norm, pooling, classifier).
        block_stages: 1-based stage index of every block (used by split tables and MAN's λ rule).
        input_size: (C, H, W) the model is built for; aux nets are sized from it.
        paper_splits: published split tables, ``{variant: {K: cuts}}`` with variant 'paper' or
            'balanced' and ``cuts`` the first block index of modules 1..K-1 (see ``split.py``).
        reinit_block: re-draws a cloned block's weights (MAN/MLAAN 'random' initialisations).
        final_channels: channel count of the last stage (the InfoPro aux-head width rule).
        arch: the backbone's name (e.g. 'resnet32'), which methods use to look up published
            hyper-parameters.
        feature_format: what the features between blocks look like, so that methods pick aux nets
            that fit: 'cnn_cifar' (NCHW, CIFAR-size ResNets), 'cnn_imagenet' (NCHW, ImageNet-style
            stages down to stride 32) or 'tokens' (B, N, C), which also needs ``tokens``.
        tokens: the token layout when ``feature_format == 'tokens'``.
    """

    stem: nn.Module
    blocks: Sequence[nn.Module]
    head: nn.Module
    block_stages: Sequence[int]
    input_size: tuple[int, int, int]
    final_channels: int
    arch: str = ""
    paper_splits: Mapping[str, Mapping[int, tuple[int, ...]]] = field(default_factory=dict)
    reinit_block: Callable[[nn.Module], None] = reset_parameters_like_resnet
    feature_format: str = "cnn_cifar"
    tokens: Optional[TokenFormat] = None

    def __post_init__(self):
        if len(self.block_stages) != len(self.blocks):
            raise ValueError(f"block_stages has {len(self.block_stages)} entries for {len(self.blocks)} blocks")
        if self.feature_format not in FEATURE_FORMATS:
            raise ValueError(f"feature_format={self.feature_format!r}: choose one of {', '.join(FEATURE_FORMATS)}")
        if (self.feature_format == "tokens") != (self.tokens is not None):
            raise ValueError("a layout with feature_format='tokens' needs tokens=TokenFormat(...), and only it")

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)


@dataclass(frozen=True)
class FeatureProbe:
    """Output shape (without batch) and saved-for-backward bytes per sample at every position.

    Position 0 is the stem output, position j + 1 the output of block j.
    """

    shapes: tuple[tuple[int, ...], ...]
    stem_bytes: int
    block_bytes: tuple[int, ...]


PROBE_CACHE_SIZE = 128
_probe_cache: "OrderedDict[tuple, FeatureProbe]" = OrderedDict()  # see probe_features


def _probe_key(layout: BackboneLayout, batch_size: int, device: torch.device, dtype: torch.dtype) -> tuple:
    """What a probe's result depends on: input size, batch, device type, dtype and the modules' structure.

    The structure is ``repr`` of the stem and blocks (module types, channels, kernels, strides, ...), so
    two models of one architecture share a key whatever their weights.
    """
    structure = hashlib.sha256(repr([layout.stem, *layout.blocks]).encode()).hexdigest()
    return tuple(layout.input_size), batch_size, device.type, dtype, structure


def probe_features(layout: BackboneLayout, batch_size: int = 2) -> FeatureProbe:
    """Feature shapes and activation bytes of the stem and blocks, from one forward on zeros (cached).

    The result is cached by :func:`_probe_key` (the last :data:`PROBE_CACHE_SIZE` keys), so creating
    the same architecture again runs no forward pass.

    Bytes are those autograd saves for backward (counted once per storage through
    ``torch.autograd.graph.saved_tensors_hooks``, parameters excluded), divided by the batch size. The backbone is put
    in eval mode for the probe so BatchNorm running statistics are not touched, then restored.
    """
    param = next(layout.stem.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    key = _probe_key(layout, batch_size, device, dtype)
    if key not in _probe_cache:
        _probe_cache[key] = _run_probe(layout, batch_size, device, dtype)
        while len(_probe_cache) > PROBE_CACHE_SIZE:
            _probe_cache.popitem(last=False)
    _probe_cache.move_to_end(key)
    return _probe_cache[key]


def _run_probe(layout: BackboneLayout, batch_size: int, device: torch.device, dtype: torch.dtype) -> FeatureProbe:
    modules = [layout.stem, *layout.blocks]
    was_training = [m.training for m in modules]
    x = torch.zeros(batch_size, *layout.input_size, device=device, dtype=dtype, requires_grad=True)
    shapes, costs = [], []
    try:
        for m in modules:
            m.eval()
        for m in modules:
            seen: set[int] = {p.untyped_storage().data_ptr() for p in m.parameters()}
            total = [0]

            def pack(t: torch.Tensor):
                ptr = t.untyped_storage().data_ptr()
                if ptr not in seen:
                    seen.add(ptr)
                    total[0] += t.untyped_storage().nbytes()
                return t.detach()  # not t: a saved output holding its own grad_fn is a cycle GC cannot free

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                x = m(x)
            shapes.append(tuple(x.shape[1:]))
            costs.append(total[0] // batch_size)
            x = x.detach().requires_grad_(True)
    finally:
        for m, mode in zip(modules, was_training):
            m.train(mode)
    return FeatureProbe(shapes=tuple(shapes), stem_bytes=costs[0], block_bytes=tuple(costs[1:]))
