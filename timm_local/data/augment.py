"""Batch augmentation on the training device for uint8 image batches (METHODS.md §7.1).

Contract:
- :func:`draw_crop_flip` draws, per sample, crop offsets ``dy, dx`` uniform in ``[0, 2*pad]`` and a flip flag
  (p=0.5, always ``False`` when ``hflip`` is off) from a ``torch.Generator`` on the batch's device.
- :func:`crop_flip` returns, for every sample ``n``, the ``H×W`` window at ``(dy[n], dx[n])`` of the image padded
  by ``pad`` on each side (``"reflect"``: mirror without repeating the edge, as ``F.pad(mode="reflect")``;
  ``"constant"``: zeros, i.e. black pixels before normalisation), mirrored left-right where ``flip[n]``. It is
  one gather over the whole batch (no Python loop over samples) and keeps the dtype.
- :func:`normalize` maps uint8 ``x`` to float32 ``(x/255 - mean) / std`` per channel.
- :class:`TrainAugment` = crop_flip + normalize; :class:`EvalTransform` = normalize. Both are called as
  ``t(x_uint8, generator) -> float`` and return channels_last tensors when asked.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["draw_crop_flip", "crop_flip", "normalize", "TrainAugment", "EvalTransform"]


def draw_crop_flip(
    n: int, pad: int, hflip: bool, generator: Optional[torch.Generator] = None, device=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample crop offsets ``(dy, dx)`` in ``[0, 2*pad]`` (int64) and flip flags (bool), each of length n."""
    device = torch.device(device) if device is not None else (generator.device if generator else None)
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=device)
    if hflip:
        flip = torch.rand(n, generator=generator, device=device) < 0.5
    else:
        flip = torch.zeros(n, dtype=torch.bool, device=device)
    return offsets[0], offsets[1], flip


def _reflect(pos: torch.Tensor, size: int) -> torch.Tensor:
    """Map coordinates in ``[-size+1, 2*size-2]`` into ``[0, size)`` by mirroring (edge not repeated)."""
    pos = pos.abs()
    return torch.where(pos > size - 1, 2 * (size - 1) - pos, pos)


def crop_flip(
    x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int, pad_mode: str = "constant"
) -> torch.Tensor:
    """Pad-and-random-crop with horizontal flip for a batch ``x`` (N×C×H×W), vectorised. See module docstring.

    Zero padding pads the batch once (``F.pad``) and gathers from it; reflect padding maps the window's
    coordinates back into the image (no padded copy). Either way the crop and the flip are one ``gather``.
    """
    if pad_mode not in ("reflect", "constant"):
        raise ValueError(f"pad_mode must be 'reflect' or 'constant', got {pad_mode!r}")
    n, c, h, w = x.shape
    if pad_mode == "reflect" and pad >= min(h, w):
        raise ValueError(f"reflect padding {pad} needs images larger than {pad} px, got {h}×{w}")
    dev = x.device
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = dy.to(dev)[:, None] + ar_h[None, :]  # (N, H) in padded coordinates
    cols = dx.to(dev)[:, None] + torch.where(flip.to(dev)[:, None], (w - 1 - ar_w)[None, :], ar_w[None, :])
    if pad_mode == "constant":
        if pad > 0:
            x = F.pad(x, (pad, pad, pad, pad))
    else:
        rows, cols = _reflect(rows - pad, h), _reflect(cols - pad, w)
    src_h, src_w = x.shape[-2:]
    index = (rows[:, :, None] * src_w + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    return x.reshape(n, c, src_h * src_w).gather(2, index).view(n, c, h, w)


def _affine(mean: Sequence[float], std: Sequence[float], device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(bias, scale)`` with ``x * scale + bias == (x/255 - mean)/std``, shaped 1×C×1×1 on ``device``."""
    std_t = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    return (-mean_t / std_t).to(device), (1.0 / (255.0 * std_t)).to(device)


def normalize(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float], channels_last: bool = False
) -> torch.Tensor:
    """uint8 (or [0,255] float) N×C×H×W -> float32 ``(x/255 - mean)/std``, optionally channels_last."""
    return _normalize(x, *_affine(mean, std, x.device), channels_last)


def _normalize(x: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)  # on uint8: 4× cheaper than on float
    return torch.addcmul(bias, x.to(torch.float32), scale)  # one fused multiply-add, memory format kept


class EvalTransform:
    """Normalisation only (the reference test transform: ToTensor + Normalize)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels_last: bool = False):
        self.mean, self.std, self.channels_last = tuple(mean), tuple(std), channels_last
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if x.device not in self._constants:  # moved to the device once, not per batch
            self._constants[x.device] = _affine(self.mean, self.std, x.device)
        return _normalize(x, *self._constants[x.device], self.channels_last)

    def __repr__(self) -> str:
        return f"EvalTransform(mean={self.mean}, std={self.std})"


class TrainAugment(EvalTransform):
    """Random pad-crop (``pad``, ``pad_mode``) + optional horizontal flip, then normalisation."""

    def __init__(self, pad: int, pad_mode: str, hflip: bool, mean: Sequence[float], std: Sequence[float],
                 channels_last: bool = False):
        super().__init__(mean, std, channels_last)
        self.pad, self.pad_mode, self.hflip = int(pad), pad_mode, bool(hflip)

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if self.pad > 0 or self.hflip:
            dy, dx, flip = draw_crop_flip(x.shape[0], self.pad, self.hflip, generator, x.device)
            x = crop_flip(x, dy, dx, flip, self.pad, self.pad_mode)
        return super().__call__(x)

    def __repr__(self) -> str:
        return (f"TrainAugment(pad={self.pad}, pad_mode={self.pad_mode!r}, hflip={self.hflip}, "
                f"mean={self.mean}, std={self.std})")
