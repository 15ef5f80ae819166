"""Auxiliary networks for token features (B, N, C) of Vision Transformers.

* :class:`TokenHead` (DGL / InfoPro / MLAAN heads): pool the tokens the way the backbone does (its class
  token, or the mean of the patch tokens) → LayerNorm → MLP. With ``m`` fc layers (config ``<n>c<m>f``):
  ``1f`` = Linear(C → out); ``2f`` = Linear(C → C·w) → GELU → Linear(C·w → out); ``3f`` adds one more
  Linear(C·w → C·w) → GELU. Token heads have no conv analogue, so the ``<n>c`` part is not used: token
  mixing before an aux head is the method's business (MAN's copied blocks).
* :class:`TokenDecoder` (InfoPro's reconstruction): the patch tokens → LayerNorm → Linear(C → p_h·p_w·image channels),
  unpatchified back to the image, as logits of the [0, 1] pixels (the sigmoid is folded into the BCE loss).

Linear layers are initialised as timm's ViT does (truncated normal, std 0.02, zero bias), LayerNorm to 1 / 0.
"""
from __future__ import annotations

import torch
from torch import nn
from timm.layers import trunc_normal_

from ..local.layout import TokenFormat

TOKEN_POOLS = ("token", "avg")


def _init_vit_style(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def pool_tokens(x: torch.Tensor, pool: str, num_prefix_tokens: int) -> torch.Tensor:
    """(B, N, C) → (B, C): the class token (``'token'``) or the mean of the patch tokens (``'avg'``)."""
    return x[:, 0] if pool == "token" else x[:, num_prefix_tokens:].mean(dim=1)


class TokenHead(nn.Module):
    """pool(x) → LayerNorm → MLP with ``num_fcs`` Linear layers (GELU between them)."""

    def __init__(self, dim: int, tokens: TokenFormat, out_features: int, num_fcs: int = 1, hidden: int = 0):
        super().__init__()
        if tokens.pool not in TOKEN_POOLS:
            raise ValueError(f"token pool {tokens.pool!r} is not supported: choose one of {', '.join(TOKEN_POOLS)}")
        self.pool, self.num_prefix_tokens = tokens.pool, tokens.num_prefix_tokens
        self.norm = nn.LayerNorm(dim)
        layers: list[nn.Module] = []
        width = dim
        for _ in range(num_fcs - 1):
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        layers.append(nn.Linear(width, out_features))
        self.mlp = nn.Sequential(*layers)
        _init_vit_style(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(pool_tokens(x, self.pool, self.num_prefix_tokens)))

    def extra_repr(self) -> str:
        return f"pool={self.pool}"


class TokenDecoder(nn.Module):
    """Patch tokens → LayerNorm → Linear(C → p_h·p_w·image_channels) → image logits (B, C_img, H, W)."""

    def __init__(self, dim: int, tokens: TokenFormat, image_size: tuple[int, int], image_channels: int = 3):
        super().__init__()
        self.num_prefix_tokens = tokens.num_prefix_tokens
        self.patch_size, self.grid_size = tuple(tokens.patch_size), tuple(tokens.grid_size)
        self.image_size, self.image_channels = tuple(image_size), image_channels
        self.norm = nn.LayerNorm(dim)
        self.to_pixels = nn.Linear(dim, self.patch_size[0] * self.patch_size[1] * image_channels)
        _init_vit_style(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (gh, gw), (ph, pw) = self.grid_size, self.patch_size
        patches = self.to_pixels(self.norm(x[:, self.num_prefix_tokens:]))  # (B, gh·gw, ph·pw·C)
        image = patches.reshape(x.shape[0], gh, gw, ph, pw, self.image_channels)
        image = image.permute(0, 5, 1, 3, 2, 4).reshape(x.shape[0], self.image_channels, gh * ph, gw * pw)
        return image[:, :, :self.image_size[0], :self.image_size[1]]  # drop dynamic padding, if any


class TokenAux:
    """The aux-net family for ``feature_format='tokens'`` (see ``aux_factory.py`` for the interface).

    The MLP's hidden width is the token width times ``widen`` (``feature_dim`` is only the contrastive output).
    """

    @staticmethod
    def task_head(plan, shape, config: str, out_features: int, widen: float, feature_dim: int) -> nn.Module:
        dim = shape[-1]
        return TokenHead(dim, plan.layout.tokens, out_features, num_fcs=int(config[2]), hidden=int(dim * widen))

    @staticmethod
    def linear_head(plan, shape, out_features: int) -> nn.Module:
        return TokenHead(shape[-1], plan.layout.tokens, out_features)

    @staticmethod
    def decoder(plan, shape, widen: float) -> nn.Module:
        image_channels, image_h, image_w = plan.layout.input_size
        return TokenDecoder(shape[-1], plan.layout.tokens, (image_h, image_w), image_channels)
