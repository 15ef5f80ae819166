"""On-disk cache of decoded splits: one ``.pt`` file per (dataset, split, max_samples, source files).

Contract:
- Location (:func:`cache_root`): the ``cache_dir`` argument if given; else ``$TIMM_LOCAL_CACHE``; else
  ``$XDG_CACHE_HOME/timm_local`` (``~/.cache/timm_local``). Nothing is ever written into the data directory:
  a shared dataset folder stays as its owner left it, writable or not.
- Key (:func:`cache_key`): sha256 of the dataset name, split, max_samples, columns, format version and, for
  every source file, its resolved path, size and sha256 of its bytes (a Hub ``hf://`` URL embeds the commit
  and is keyed as is), as ``datasets`` keys its own cache by the data files. Changing a parquet file's bytes
  invalidates the entry even if its size and mtime stay; touching it does not. Hashing reads each file
  once per load (~0.03 s for the 15 MB CIFAR-10 train file), far less than decoding it.
- Files are written atomically (temp file in the same folder + ``os.replace``): a reader never sees a partial
  file, and concurrent writers (DDP ranks) at worst both write the same content.
- Payload: ``{"images": uint8 N×C×H×W, "labels": int64 N, "label_names": list[str], "version": int}``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..io import atomic_save

__all__ = ["CACHE_VERSION", "ENV_CACHE", "cache_root", "cache_key", "cache_path", "default_cache_dir",
           "fingerprints", "save_cached", "load_cached"]

CACHE_VERSION = 1
ENV_CACHE = "TIMM_LOCAL_CACHE"


def default_cache_dir() -> Path:
    """``$TIMM_LOCAL_CACHE`` or ``$XDG_CACHE_HOME/timm_local`` (default ``~/.cache/timm_local``)."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "timm_local"


def cache_root(cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """``cache_dir`` if given, else :func:`default_cache_dir`; created if needed.

    Raises:
        PermissionError: the folder cannot be created or written, naming it and ``$TIMM_LOCAL_CACHE``.
    """
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        writable = os.access(folder, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        raise PermissionError(f"cannot write the decoded-data cache folder {folder}: set "
                              f"{ENV_CACHE}=/some/writable/dir (or pass cache_dir=...)")
    return folder


def _sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprints(files: Sequence[str]) -> list[dict]:
    """What identifies each source file: resolved path, size and sha256 of its bytes (``hf://`` URLs as is)."""
    return [{"url": f} if "://" in f  # remote (hf://datasets/<id>@<commit>/...): the URL pins the content
            else {"path": os.path.realpath(f), "size": os.path.getsize(f), "sha256": _sha256_of(f)} for f in files]


def cache_key(dataset: str, split: str, max_samples: Optional[int], files: Sequence[dict], **extra) -> str:
    """Hex sha256 identifying one decoded split; ``files`` is :func:`fingerprints` of its source files."""
    payload = {
        "version": CACHE_VERSION, "dataset": dataset, "split": split, "max_samples": max_samples,
        "files": list(files), **extra,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_path(root: Path, dataset: str, split: str, max_samples: Optional[int], key: str) -> Path:
    """``<root>/<dataset>-<split>-<N|all>-<key[:16]>.pt``."""
    n = "all" if max_samples is None else str(max_samples)
    return Path(root) / f"{dataset}-{split}-{n}-{key[:16]}.pt"


def save_cached(path: Path, images: torch.Tensor, labels: torch.Tensor, label_names: Sequence[str]) -> None:
    """Write the payload atomically to ``path``."""
    path = Path(path)
    payload = {"images": images.contiguous(), "labels": labels.contiguous(), "label_names": list(label_names),
               "version": CACHE_VERSION}
    atomic_save(payload, str(path))


def load_cached(path: Path) -> Optional[dict]:
    """The payload at ``path`` (tensors memory-mapped), or ``None`` if absent, unreadable or of another version."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # truncated/corrupt file from an old crash: treat as a miss, it gets rewritten
        return None
    if not isinstance(payload, dict) or payload.get("version") != CACHE_VERSION:
        return None
    return payload
