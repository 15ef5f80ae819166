"""One gradient-isolated local module: some backbone blocks plus the objective that trains them."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from timm.models._manipulate import checkpoint_seq

from .context import LocalContext


class LocalModule(nn.Module):
    """Blocks ``[stem] + blocks + [head]`` of the backbone and their local objective.

    ``forward(h_in, ctx)`` returns ``(h_out, loss)``: the module's output and its local loss
    (``None`` when the method gives this module no objective of its own, e.g. MLAAN's first
    module; a :class:`~timm_local.local.context.CascadeLoss` for a loss that spans modules). The module does not detach anything; the engine puts the gradient barriers between
    modules. Prepare each local module as its own DDP wrapper (ECOSYSTEM.md §4.2).
    """

    def __init__(self, index: int, blocks: Sequence[nn.Module], objective: Optional[nn.Module],
                 stem: Optional[nn.Module] = None, head: Optional[nn.Module] = None):
        super().__init__()
        self.index = index
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.objective = objective
        self.grad_checkpointing = False

    def body(self, h: torch.Tensor, with_stem: bool = True) -> torch.Tensor:
        """The backbone part only: stem (module 0; ``with_stem=False`` starts after it), blocks, head (last module)."""
        if self.stem is not None and with_stem:
            h = self.stem(h)
        if len(self.blocks):
            if self.grad_checkpointing and torch.is_grad_enabled():
                h = checkpoint_seq(self.blocks, h)
            else:
                for block in self.blocks:
                    h = block(h)
        if self.head is not None:
            h = self.head(h)
        return h

    def forward(self, h_in: torch.Tensor, ctx: LocalContext) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        h_out = self.body(h_in)
        loss = self.objective(h_out, ctx) if self.objective is not None else None
        return h_out, loss
