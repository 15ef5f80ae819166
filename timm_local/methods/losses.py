"""Local losses, computed in fp32 whatever the autocast state (METHODS.md §4)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ..local.context import LocalContext

CONTRAST_NEEDS_LABELS = "the contrastive (SupCon) local loss needs one class label per image, not soft targets"


def supervised_contrastive_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07,
                                base_temperature: float = 0.07) -> torch.Tensor:
    """SupCon with one view per sample (METHODS.md §4.2).

    With rows of ``z`` L2-normalised, s_ab = z_a·z_b / τ (the row max subtracted for stability),
    log p_ab = s_ab − log Σ_{k≠a} exp(s_ak), P(a) = {b ≠ a : y_b = y_a} and
    L = −(τ / τ_base) · mean_a [ Σ_{b∈P(a)} log p_ab / max(|P(a)|, 1) ].
    """
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.float()
        n = z.shape[0]
        logits = z @ z.t() / temperature
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()
        not_self = ~torch.eye(n, dtype=torch.bool, device=z.device)
        exp = torch.exp(logits) * not_self
        log_prob = logits - torch.log(exp.sum(dim=1, keepdim=True))
        positives = (labels.view(-1, 1) == labels.view(1, -1)) & not_self
        pos_count = positives.sum(dim=1).clamp(min=1)
        mean_log_prob_pos = (log_prob * positives).sum(dim=1) / pos_count
        return -(temperature / base_temperature) * mean_log_prob_pos.mean()


def reconstruction_loss(decoded_logits: torch.Tensor, image01: torch.Tensor) -> torch.Tensor:
    """Mean BCE between sigmoid(decoded_logits) and the [0, 1] image (METHODS.md §3.2, §9 B21).

    Written with logits (``binary_cross_entropy_with_logits``): the same value as the reference's
    Sigmoid + BCELoss, numerically stable, and allowed under autocast.
    """
    return F.binary_cross_entropy_with_logits(decoded_logits.float(), image01.float())


def task_loss(output: torch.Tensor, ctx: "LocalContext", kind: str) -> torch.Tensor:
    """L_xy of InfoPro: 'ce' = ``ctx.cross_entropy`` on logits (label smoothing, soft targets); 'contrast' = SupCon on
    L2-normalised features, which needs class indices (no smoothing applies to it)."""
    if kind == "ce":
        return ctx.cross_entropy(output)
    if ctx.target.dim() != 1:
        raise ValueError(f"{CONTRAST_NEEDS_LABELS}: turn off mixup / cutmix, or use local_loss='ce'")
    return supervised_contrastive_loss(F.normalize(output.float(), dim=1), ctx.target)
