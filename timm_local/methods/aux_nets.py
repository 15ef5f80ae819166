"""Auxiliary networks for convolutional features (METHODS.md §3.1, §3.2).

``aux_classifier`` builds InfoPro's heads by config name; ``ReconstructionDecoder`` is InfoPro's
decoder. Both take (B, C, H, W) features. All convs are initialised like the backbone (He fan-out
normal), BatchNorm to 1 / 0, Linear with PyTorch's default.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..local.layout import reset_parameters_like_resnet

AUX_CONFIGS = ("0c1f", "0c2f", "1c1f", "1c2f", "1c3f", "2c2f")


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def aux_classifier(in_channels: int, config: str, out_features: int, final_channels: int,
                   widen: float = 1.0, feature_dim: int = 128) -> nn.Sequential:
    """InfoPro's ``AuxClassifier`` body for config ``<n>c<m>f`` (METHODS.md §3.1).

    Conv width C2 = w · min(2C, C_final) (32w for C = 16, 64w for C = 32 or 64 on CIFAR ResNets); the
    first conv has stride 2 while C < C_final. Then global average pooling and ``m`` Linear layers:
    ``1f`` = fc(· → out); ``2f`` = fc(· → d·w) → ReLU → fc(d·w → out); ``3f`` adds fc(d·w → d·w) → ReLU.
    ``out_features`` is the class count (CE) or the feature dim d (contrast; §9 B20).
    """
    if config not in AUX_CONFIGS:
        raise ValueError(f"unknown aux_config {config!r}: choose one of {', '.join(AUX_CONFIGS)}")
    num_convs, num_fcs = int(config[0]), int(config[2])
    conv_width = int(widen * min(2 * in_channels, final_channels))
    stride = 2 if in_channels < final_channels else 1
    layers: list[nn.Module] = []
    width = in_channels
    for i in range(num_convs):
        layers += _conv_bn_relu(width, conv_width, stride if i == 0 else 1)
        width = conv_width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    hidden = int(feature_dim * widen)
    for _ in range(num_fcs - 1):
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        width = hidden
    layers.append(nn.Linear(width, out_features))
    head = nn.Sequential(*layers)
    reset_parameters_like_resnet(head)
    return head


class ReconstructionDecoder(nn.Module):
    """InfoPro's decoder: bilinear resize (align_corners) to the image size → conv3x3(C → 12w) → BN → ReLU
    → conv3x3(12w → image channels). Returns logits; the sigmoid is folded into the BCE loss.
    """

    def __init__(self, in_channels: int, image_size: tuple[int, int], image_channels: int = 3, widen: float = 1.0):
        super().__init__()
        hidden = int(12 * widen)
        self.image_size = tuple(image_size)
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(hidden)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(hidden, image_channels, 3, padding=1, bias=True)
        for conv in (self.conv1, self.conv2):  # the reference keeps PyTorch's default bias init
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(h, size=self.image_size, mode="bilinear", align_corners=True)
        return self.conv2(self.act(self.bn(self.conv1(h))))
