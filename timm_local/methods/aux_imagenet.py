"""Auxiliary networks for ImageNet-style convolutional features (METHODS.md §3.4), any split point.

The references only ship nets for the 512×28×28 output of ResNet layer2 (InfoPro, MAN) and for the
stage widths of ResNet-34/101 (MLAAN). Here each is written as a rule over the input's channels C and
resolution h × w, the final feature's resolution and channels, and the image size, so that it fits
any split of any ImageNet-style CNN and reproduces the published nets at the published points:

* :class:`ImageNetHead` (InfoPro's classifier): conv1x1(C → C/4) → [conv3x3 stride 2, doubling the width
  up to C_final/4] while the map is larger than the final one → conv1x1(→ C_final) → GAP → Linear.
  C = 512 at 28×28 of a ResNet-101 (final 2048×7×7) gives 512→128→256→512→2048, the published head.
* :class:`ImageNetDecoder` (InfoPro's decoder): conv1x1(C → C/4, bias) → BN → ReLU, then ×2 bilinear
  upsamplings (align_corners) up to the image size, each followed by conv3x3 with width max(w/4, 12)
  → BN → ReLU, the last one by conv3x3(→ image channels). From 28×28 at 224 px: 128→32→12→3, as published.
* :func:`light_head` (MLAAN's independent head): GAP → Linear, preceded by conv1x1(C → 2C) → BN → ReLU
  → conv1x1(2C → C) → BN → ReLU when C < 256 (``auxnet34.py``; every R101 width is ≥ 256).

Conv weights are initialised like the backbones (He fan-out normal), BatchNorm to 1 / 0; head conv biases
are absent, decoder conv biases and Linear layers keep PyTorch's default. Decoders return logits; the
sigmoid is folded into the BCE loss.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..local.layout import reset_parameters_like_resnet
from .aux_nets import aux_classifier

LIGHT_HEAD_CONV_BELOW = 256  # MLAAN adds two 1x1 convs to its independent head below this width


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int = 1, bias: bool = False) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=bias), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


def _halvings(size: int, target: int) -> int:
    """How many stride-2 convs (k=3, pad 1) take ``size`` down to at most ``target``."""
    count = 0
    while size > target:
        size = (size + 1) // 2
        count += 1
    return count


class ImageNetHead(nn.Sequential):
    """InfoPro's ImageNet classifier head generalised to any (C, h, w) input (see the module docstring).

    Args:
        in_shape: (C, h, w) of the features it reads.
        final_shape: (C_final, h_final, w_final) of the backbone's last features.
        out_features: classes (CE) or the contrastive feature dim.
        widen: multiplies every conv width.
    """

    def __init__(self, in_shape: tuple[int, int, int], final_shape: tuple[int, int, int], out_features: int,
                 widen: float = 1.0):
        channels, height, width = in_shape
        final_channels, final_h, final_w = final_shape
        cap = max(1, int(widen * final_channels // 4))
        hidden = max(1, int(widen * channels // 4))
        layers = _conv_bn_relu(channels, hidden, 1)
        for _ in range(max(_halvings(height, final_h), _halvings(width, final_w))):
            wider = max(hidden, min(2 * hidden, cap))
            layers += _conv_bn_relu(hidden, wider, 3, stride=2)
            hidden = wider
        out_channels = int(widen * final_channels)
        layers += _conv_bn_relu(hidden, out_channels, 1)
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(out_channels, out_features)]
        super().__init__(*layers)
        reset_parameters_like_resnet(self)


class ImageNetDecoder(nn.Module):
    """InfoPro's ImageNet decoder generalised to any (C, h, w) input and image size (module docstring)."""

    def __init__(self, in_shape: tuple[int, int, int], image_size: tuple[int, int], image_channels: int = 3,
                 widen: float = 1.0):
        super().__init__()
        channels, height, width = in_shape
        image_h, image_w = image_size
        steps = max(1, math.ceil(math.log2(max(image_h / height, image_w / width, 1.0))))
        self.sizes = tuple((min(height << (i + 1), image_h), min(width << (i + 1), image_w))
                           for i in range(steps - 1)) + ((image_h, image_w),)
        hidden = max(1, int(widen * channels // 4))
        self.reduce = nn.Sequential(*_conv_bn_relu(channels, hidden, 1, bias=True))
        stages = []
        for _ in range(steps - 1):
            narrower = max(hidden // 4, int(12 * widen))
            stages.append(nn.Sequential(*_conv_bn_relu(hidden, narrower, 3)))
            hidden = narrower
        self.stages = nn.ModuleList(stages)
        self.to_image = nn.Conv2d(hidden, image_channels, 3, padding=1, bias=True)
        for m in self.modules():  # the reference keeps PyTorch's default conv bias
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.reduce(h)
        for stage, size in zip(self.stages, self.sizes):
            h = stage(F.interpolate(h, size=size, mode="bilinear", align_corners=True))
        h = F.interpolate(h, size=self.sizes[-1], mode="bilinear", align_corners=True)
        return self.to_image(h)


def light_head(channels: int, out_features: int) -> nn.Sequential:
    """MLAAN's ImageNet independent / cascaded head: [1x1 conv pair when C < 256] → GAP → Linear."""
    layers: list[nn.Module] = []
    if channels < LIGHT_HEAD_CONV_BELOW:
        layers += _conv_bn_relu(channels, 2 * channels, 1) + _conv_bn_relu(2 * channels, channels, 1)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(channels, out_features)]
    head = nn.Sequential(*layers)
    reset_parameters_like_resnet(head)
    return head


class ImageNetAux:
    """The aux-net family for ``feature_format='cnn_imagenet'`` (see ``aux_factory.py`` for the interface).

    Head configs: those without convs ('0c1f', '0c2f') are InfoPro's GAP + fc heads; every config with
    convs is :class:`ImageNetHead` (the references use one head on ImageNet, with a single fc).
    """

    @staticmethod
    def task_head(plan, shape, config: str, out_features: int, widen: float, feature_dim: int) -> nn.Module:
        if config.startswith("0c"):
            return aux_classifier(shape[0], config, out_features, plan.layout.final_channels, widen, feature_dim)
        return ImageNetHead(tuple(shape), tuple(plan.probe.shapes[-1]), out_features, widen)

    @staticmethod
    def linear_head(plan, shape, out_features: int) -> nn.Module:
        return light_head(shape[0], out_features)

    @staticmethod
    def decoder(plan, shape, widen: float) -> nn.Module:
        image_channels, image_h, image_w = plan.layout.input_size
        return ImageNetDecoder(tuple(shape), (image_h, image_w), image_channels, widen)
