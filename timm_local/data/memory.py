"""The in-memory path: a small benchmark split as one uint8 tensor, decoded once and cached on disk.

Contract of :func:`load_tensor_split`:
- returns a :class:`TensorSplit` with ``images`` (uint8, N×3×S×S, CPU, possibly memory-mapped from the cache
  file: treat as read-only), ``labels`` (int64, N) and ``label_names``;
- the first call decodes the parquet rows (streamed with ``datasets.load_dataset(..., streaming=True)``, no
  arrow copy in the HF cache) and writes the cache (:mod:`timm_local.data.cache`); later calls with the same
  source files (path and bytes), split and ``max_samples`` only read the cache. With ``max_samples`` set and
  a full-split entry present, the first ``max_samples`` rows are sliced from it instead of decoding again;
- an image that does not decode raises :class:`~timm_local.data.decode.CorruptImageError` naming the split,
  the row, the column and the parquet file.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from . import cache
from .decode import decode_split
from .source import DataSource, label_names_of, resolve_source
from .specs import DatasetSpec

__all__ = ["TensorSplit", "check_max_samples", "load_tensor_split"]

_logger = logging.getLogger(__name__)


@dataclass
class TensorSplit:
    """One decoded split. ``from_cache`` says whether it was read from the cache (no decode)."""

    images: torch.Tensor
    labels: torch.Tensor
    label_names: tuple[str, ...]
    from_cache: bool = False
    cache_file: Optional[Path] = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def check_max_samples(max_samples: Optional[int]) -> Optional[int]:
    """``max_samples`` as an int (or None); ValueError unless it is a positive integer."""
    if max_samples is None:
        return None
    if int(max_samples) != max_samples or max_samples <= 0:
        raise ValueError(f"max_samples must be a positive integer or None, got {max_samples!r}")
    return int(max_samples)


def load_tensor_split(
    spec: DatasetSpec,
    data_dir: Optional[str | os.PathLike] = None,
    split: Optional[str] = None,
    max_samples: Optional[int] = None,
    *,
    cache_dir: Optional[str | os.PathLike] = None,
    source: Optional[DataSource] = None,
) -> TensorSplit:
    """Decode (or read from cache) ``split`` of an in-memory benchmark. See the module docstring.

    Args:
        spec: an in-memory spec (``spec.in_memory``).
        data_dir: local copy of the Hub layout, ``None`` for the Hub id (ignored if ``source`` is given).
        split: split name, default ``spec.train_split``.
        max_samples: keep only the first N rows.
        cache_dir: the cache folder (default ``$TIMM_LOCAL_CACHE``, else ``~/.cache/timm_local``; never the
            data directory; see :mod:`timm_local.data.cache`).
        source: an already resolved :class:`DataSource` (saves resolving twice).
    """
    if not spec.in_memory:
        raise ValueError(f"Dataset {spec.name!r} is streamed, not decoded into memory; use build_loaders().")
    split = split or spec.train_split
    max_samples = check_max_samples(max_samples)
    source = source or resolve_source(spec, data_dir)
    paths = source.files(split)
    files = cache.fingerprints(paths)
    root = cache.cache_root(cache_dir)
    extra = {"image_column": spec.image_column, "label_column": spec.label_column, "size": spec.image_size}

    def entry(n: Optional[int]) -> Path:
        key = cache.cache_key(spec.name, split, n, files, **extra)
        return cache.cache_path(root, spec.name, split, n, key)

    path = entry(max_samples)
    hit = cache.load_cached(path)
    if hit is None and max_samples is not None:
        full = cache.load_cached(entry(None))
        if full is not None:
            hit = {k: (v[:max_samples].clone() if torch.is_tensor(v) else v) for k, v in full.items()}
    if hit is not None:
        return TensorSplit(hit["images"], hit["labels"], tuple(hit["label_names"]), True, path)

    where = f"split {split!r} of {source.describe()}"
    t0 = time.perf_counter()
    ds = source.load(split, streaming=True)
    with source.context():
        images, labels = decode_split(
            ds, image_column=spec.image_column, label_column=spec.label_column, image_size=spec.image_size,
            num_classes=spec.num_classes, dataset=spec.name, where=where, max_samples=max_samples, files=paths,
        )
    names = label_names_of(spec, ds.features)
    _logger.info("decoded %d images of %s in %.2fs", len(labels), where, time.perf_counter() - t0)
    cache.save_cached(path, images, labels, names)
    return TensorSplit(images, labels, names, False, path)
