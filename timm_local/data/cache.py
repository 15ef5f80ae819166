"""On-disk cache of decoded splits: one ``.pt`` file per (dataset, split, max_samples, source files).

Contract:
- Location (:func:`cache_root`): the ``cache_dir`` argument if given; else ``<data_dir>/.timm_local_cache`` when
  the data directory is writable (its mode bits allow writing: a ``r-x`` tree such as ``/work/shared`` counts as
  read-only even for root); else ``$TIMM_LOCAL_CACHE``; else ``$XDG_CACHE_HOME/timm_local`` (``~/.cache/timm_local``).
- Key (:func:`cache_key`): sha256 of the dataset name, split, max_samples, columns, format version and, for
  every source file, its absolute path + size + mtime (a Hub ``hf://`` URL embeds the commit and is keyed as
  is). Replacing or touching a parquet file therefore invalidates the entry.
- Files are written atomically (temp file in the same folder + ``os.replace``): a reader never sees a partial
  file, and concurrent writers (DDP ranks) at worst both write the same content.
- Payload: ``{"images": uint8 N×C×H×W, "labels": int64 N, "label_names": list[str], "version": int}``.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..io import atomic_save

__all__ = ["CACHE_VERSION", "cache_root", "cache_key", "cache_path", "save_cached", "load_cached"]

CACHE_VERSION = 1
CACHE_SUBDIR = ".timm_local_cache"
ENV_CACHE = "TIMM_LOCAL_CACHE"


def _dir_writable(path: Path) -> bool:
    """Writable by mode bits *and* by the OS (root ignores mode bits, so check them explicitly)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) and os.access(path, os.W_OK)


def default_cache_dir() -> Path:
    """``$TIMM_LOCAL_CACHE`` or ``$XDG_CACHE_HOME/timm_local`` (default ``~/.cache/timm_local``)."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "timm_local"


def cache_root(data_dir: Optional[str | os.PathLike], cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """Folder for cached tensors (see module docstring for the order); created if needed."""
    candidates = []
    if cache_dir is not None:
        candidates.append(Path(cache_dir).expanduser())
    else:
        if data_dir is not None and _dir_writable(Path(data_dir)):
            candidates.append(Path(data_dir) / CACHE_SUBDIR)
        candidates.append(default_cache_dir())
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if _dir_writable(folder):
            return folder
    raise PermissionError(
        f"No writable cache folder among {[str(c) for c in candidates]}; set {ENV_CACHE}=/some/writable/dir."
    )


def _file_fingerprint(f: str) -> dict:
    if "://" in f:  # remote (hf://datasets/<id>@<commit>/...): the URL pins the content
        return {"url": f}
    st = os.stat(f)
    return {"path": os.path.abspath(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(dataset: str, split: str, max_samples: Optional[int], files: Sequence[str], **extra) -> str:
    """Hex sha256 identifying one decoded split (see module docstring)."""
    payload = {
        "version": CACHE_VERSION, "dataset": dataset, "split": split, "max_samples": max_samples,
        "files": [_file_fingerprint(f) for f in files], **extra,
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
