"""What a local objective may look at besides its own module's output."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch


@dataclass
class LocalContext:
    """Per-step inputs shared by all local objectives.

    Attributes:
        image: the normalised input batch (B, C, H, W).
        target: class indices (B,).
        mean, std: the normalisation ``image`` went through, so that the [0, 1] image that InfoPro
            reconstructs is ``image * std + mean`` (METHODS.md §3.2, §9 B21).
        module_inputs: detached inputs of recent local modules, by module index, kept only for
            methods whose losses span several modules (MLAAN's cascade).
        bodies: the forward of every local module's blocks (no objective), for such re-evaluation.
    """

    image: torch.Tensor
    target: torch.Tensor
    mean: Sequence[float]
    std: Sequence[float]
    module_inputs: dict[int, torch.Tensor] = field(default_factory=dict)
    bodies: Sequence[Callable[[torch.Tensor], torch.Tensor]] = ()

    def image01(self) -> torch.Tensor:
        """The un-normalised input in [0, 1]: ``clamp(image * std + mean, 0, 1)`` in fp32."""
        shape = (1, -1) + (1,) * (self.image.dim() - 2)
        mean = torch.as_tensor(self.mean, device=self.image.device, dtype=torch.float32).view(shape)
        std = torch.as_tensor(self.std, device=self.image.device, dtype=torch.float32).view(shape)
        return (self.image.float() * std + mean).clamp_(0.0, 1.0)
