"""Mixed precision that is fast where it runs: ``--mixed-precision auto`` and the emulated-bf16 warning.

bf16 autocast is only fast where the hardware has bf16 arithmetic: a GPU that supports it, or a CPU with
AVX512-BF16 / AMX (oneDNN's own check). On other CPUs PyTorch emulates it: on an AVX2-only AMD EPYC here,
ResNet-32 E2E took 16.7 s per step in bf16 against 1.6 s in fp32 (benchmark harness, benchmarks/cifar10/README.md).
"""
from __future__ import annotations

from typing import Optional

import torch

AUTO = "auto"


def native_bf16(device_type: str) -> Optional[bool]:
    """Whether bf16 runs natively on this machine's ``device_type`` ('cuda' or 'cpu'); None when unknown."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def resolve_mixed_precision(requested: Optional[str], device_type: str) -> Optional[str]:
    """``'auto'`` → ``'bf16'`` where bf16 is native on ``device_type``, else ``'no'``; other values unchanged."""
    if requested != AUTO:
        return requested
    return "bf16" if native_bf16(device_type) else "no"


AMP_DTYPES = {"float16": "fp16", "bfloat16": "bf16"}


def resolve_amp(amp_dtype: Optional[str], device_type: str) -> str:
    """timm's ``--amp [--amp-dtype]`` as an Accelerate mixed-precision mode.

    An explicit ``amp_dtype`` ('float16' / 'bfloat16') is taken as given. Without one: 'bf16' where bf16 is
    native on ``device_type``, else 'fp16' on a GPU; on a CPU without native bf16 a ValueError, since fp16
    autocast needs a GPU and emulated bf16 is about 10x slower than fp32.
    """
    if amp_dtype is not None:
        return AMP_DTYPES[amp_dtype]
    if native_bf16(device_type):
        return "bf16"
    if device_type == "cuda":
        return "fp16"
    raise ValueError("--amp on this CPU: it has no native bf16 (AVX512-BF16 or AMX) and fp16 autocast needs a GPU; "
                     "drop --amp to train in fp32, or force emulated bf16 (slow) with --amp --amp-dtype bfloat16")


def emulated_bf16_warning(mixed_precision: str, device_type: str) -> Optional[str]:
    """A warning when bf16 autocast is asked for on a CPU known to emulate it, else None."""
    if mixed_precision != "bf16" or device_type != "cpu" or native_bf16("cpu") is not False:
        return None
    return ("warning: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 autocast is emulated: ResNet-32 ran "
            "10x slower than in fp32 on such a CPU. Use --mixed-precision auto (bf16 only where it is native) or no")
