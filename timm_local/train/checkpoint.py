"""Checkpoints: timm-compatible ``*.pth.tar`` files, written atomically, with everything resume needs.

A checkpoint is ``torch.save`` of a dict (the run-directory contract)::

    epoch, arch, state_dict (full LocalNet: backbone + aux nets + momentum copies), optimizer,
    scheduler, args (plain dict), model_kwargs, metric (eval top-1), version=2,
    rng_states (one dict per rank), run_state (best epoch, timings), amp_scaler (fp16 only),
    state_dict_ema (--model-ema: the backbone's EMA, timm's key, read by load_checkpoint(use_ema=True))

Every value is a tensor or a plain Python container, so ``torch.load(weights_only=True)`` and
``timm.models.load_checkpoint`` read it.
"""
from __future__ import annotations

import os
import pickle
import random
import zipfile
from typing import Any, Mapping, Optional

import numpy as np
import torch


CHECKPOINT_VERSION = 2
LAST, BEST = "last.pth.tar", "model_best.pth.tar"  # the two checkpoints of a run folder


def capture_rng_states() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and every CUDA device) RNG states, as plain values.

    The data loaders need none: their order and augmentation depend only on (seed, epoch, rank, batch).
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_states`."""
    random.setstate(_as_tuple(state["python"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    """random.setstate needs tuples where a round trip through some loaders gives lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def build_checkpoint(*, epoch: int, arch: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any, args: dict, model_kwargs: dict, metric: Optional[float],
                     rng_states: list, amp_scaler: Optional[Any] = None,
                     model_ema: Optional[torch.nn.Module] = None,
                     states: Optional[tuple[dict, dict]] = None) -> dict[str, Any]:
    """The checkpoint dict of the run-directory contract. ``epoch`` is the last *completed* epoch (0-based).

    ``states``: the ``(model state_dict, optimizer state_dict)`` to save instead of ``model``'s and
    ``optimizer``'s own, e.g. a pipelined run's full state gathered from its stages
    (:meth:`~timm_local.pipeline.PipelineStage.gather_state`, the single-process layout).
    """
    model_state, optimizer_state = states if states is not None else (model.state_dict(), optimizer.state_dict())
    checkpoint = {
        "epoch": epoch,
        "arch": arch,
        "state_dict": model_state,
        "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict(),
        "args": args,
        "model_kwargs": model_kwargs,
        "metric": metric,
        "version": CHECKPOINT_VERSION,
        "rng_states": rng_states,
    }
    if amp_scaler is not None:
        checkpoint["amp_scaler"] = amp_scaler.state_dict()
    if model_ema is not None:
        checkpoint["state_dict_ema"] = model_ema.state_dict()
    return checkpoint


class CorruptCheckpointError(ValueError):
    """A file that ``torch.load(weights_only=True)`` cannot read: truncated, or not a checkpoint at all."""


def read_checkpoint(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; an unreadable file is a :class:`CorruptCheckpointError`
    that names the path and the other checkpoint of its run folder when that one is intact.

    torch's own message for these cases suggests ``weights_only=False``, which would execute code from
    the file; it is not repeated.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError) as error:
        raise CorruptCheckpointError(f"{path} is corrupt or not a checkpoint ({type(error).__name__} while "
                                     f"reading it){_intact_sibling_hint(path)}") from None


def _intact_sibling_hint(path: str) -> str:
    """'; <folder>/model_best.pth.tar is intact ...' when the other checkpoint of the folder loads."""
    folder, name = os.path.split(os.path.abspath(path))
    siblings = {LAST: BEST, BEST: LAST}
    if name not in siblings or not os.path.isfile(os.path.join(folder, siblings[name])):
        return ""
    other = os.path.join(folder, siblings[name])
    try:
        epoch = torch.load(other, map_location="cpu", weights_only=True)["epoch"]
    except Exception:  # noqa: BLE001 - any failure means it is not intact either
        return f"; {other} is not readable either"
    return f"; {other} is intact ({epoch + 1} epoch(s) done): use it instead"


def load_checkpoint_file(path: str) -> dict[str, Any]:
    """Read a training checkpoint on the CPU with ``weights_only=True``; say clearly what is wrong."""
    checkpoint = read_checkpoint(path)
    missing = [k for k in ("epoch", "state_dict", "optimizer", "scheduler") if k not in checkpoint] \
        if isinstance(checkpoint, dict) else ["everything: it is not a dict"]
    if missing:
        raise ValueError(f"{path} is not a timm_local training checkpoint (missing {missing}); "
                         f"to start from its weights only, load them with timm.models.load_checkpoint")
    return checkpoint
