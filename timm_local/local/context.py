"""What a local objective may look at besides its own module's output, and the two-part loss of a cascade."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F


def _shared_output(k: int, h: torch.Tensor) -> torch.Tensor:
    return h


@dataclass
class LocalContext:
    """Per-step inputs shared by all local objectives.

    Attributes:
        image: the normalised input batch (B, C, H, W).
        target: class indices (B,), or class probabilities (B, num_classes) (mixup / cutmix soft targets),
            which every cross-entropy loss takes as they are and the contrastive loss refuses.
        mean, std: the normalisation ``image`` went through, so that the [0, 1] image that InfoPro
            reconstructs is ``image * std + mean`` (METHODS.md §3.2, §9 B21).
        cascade: ``cascade(k, h_k)`` is module k's output carrying the graph of the modules a
            :class:`CascadeLoss` of module k spans (methods with ``cascade_depth`` > 1, MLAAN). In the
            interleaved step it is ``h_k`` itself (one forward per module; the engine routes the gradient,
            ``local/cascade.py``); in joint mode it re-evaluates those modules.
    """

    image: torch.Tensor
    target: torch.Tensor
    mean: Sequence[float]
    std: Sequence[float]
    cascade: Callable[[int, torch.Tensor], torch.Tensor] = _shared_output
    label_smoothing: float = 0.0

    def cross_entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """CE of ``logits`` (in fp32) against ``target`` with ``label_smoothing``: what every CE local loss and the
        final classifier use. Smoothing soft targets t gives (1 − ε)·t + ε/C, as timm's ``Mixup(label_smoothing=ε)``."""
        return F.cross_entropy(logits.float(), self.target, label_smoothing=self.label_smoothing)

    def image01(self) -> torch.Tensor:
        """The un-normalised input in [0, 1]: ``clamp(image * std + mean, 0, 1)`` in fp32."""
        shape = (1, -1) + (1,) * (self.image.dim() - 2)
        mean = torch.as_tensor(self.mean, device=self.image.device, dtype=torch.float32).view(shape)
        std = torch.as_tensor(self.std, device=self.image.device, dtype=torch.float32).view(shape)
        return (self.image.float() * std + mean).clamp_(0.0, 1.0)


class CascadeLoss(NamedTuple):
    """Module k's loss in two parts, L_k = own + cascade.

    ``own`` (may be None) trains module k only (its input is detached); ``cascade`` is computed from
    ``ctx.cascade(k, h_k)`` and also trains modules max(0, k − L + 1) .. k − 1, L = ``cascade_depth``.
    """

    own: Optional[torch.Tensor]
    cascade: torch.Tensor

    def total(self) -> torch.Tensor:
        return self.cascade if self.own is None else self.cascade + self.own
