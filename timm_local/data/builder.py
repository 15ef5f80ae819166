"""The one entry point the trainer calls: :func:`build_loaders` -> :class:`Loaders`.

Contract:
- in-memory sets (cifar10, svhn, stl10): both splits decoded once (cached, :mod:`timm_local.data.memory`) and
  served by :class:`~timm_local.data.tensor_loader.TensorLoader` with the paper's augmentation on ``device``
  (:class:`~timm_local.data.augment.TrainAugment`) for training and normalisation only for evaluation;
- streamed sets (imagenet): :class:`~timm_local.data.stream_loader.StreamLoader` over the HF dataset with
  torchvision transforms in ``workers`` DataLoader workers;
- training batches come from a per-epoch shuffled, evenly padded shard of this rank; evaluation batches
  from an unshuffled, unpadded shard (disjoint, covering every sample once; reduce sums across ranks once);
- under an initialised ``torch.distributed`` process group, rank 0 decodes/prepares first and the other
  ranks then read its cache (one decode per machine instead of one per rank);
- the loaders are not meant for ``accelerator.prepare``: they shard and place batches themselves.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Optional, Union

import torch

from .augment import EvalTransform, TrainAugment
from .memory import check_max_samples, load_tensor_split
from .source import DataSource, label_names_of, resolve_source
from .specs import DatasetSpec, get_dataset_spec
from .stream_loader import HFImageDataset, StreamLoader, imagenet_transforms
from .tensor_loader import TensorLoader

__all__ = ["Loaders", "build_loaders", "main_process_first"]

Loader = Union[TensorLoader, StreamLoader]


@dataclass
class Loaders:
    """What :func:`build_loaders` returns.

    ``image_size`` is the training input size; ``mean``/``std`` the normalisation already applied to ``x``.
    """

    train: Loader
    eval: Loader
    spec: DatasetSpec
    num_classes: int
    label_names: tuple[str, ...]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@contextlib.contextmanager
def main_process_first(rank: int, world_size: int):
    """Rank 0 runs the block first, the others after it (only with an initialised process group)."""
    import torch.distributed as dist

    sync = world_size > 1 and dist.is_available() and dist.is_initialized()
    if sync and rank != 0:
        dist.barrier()
    yield
    if sync and rank == 0:
        dist.barrier()


def _default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def build_loaders(
    dataset: str,
    data_dir: Optional[str | os.PathLike] = None,
    batch_size: int = 128,
    eval_batch_size: Optional[int] = None,
    device: torch.device | str = "cpu",
    *,
    max_train_samples: Optional[int] = None,
    max_eval_samples: Optional[int] = None,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    channels_last: bool = False,
    drop_last: bool = False,
    workers: Optional[int] = None,
    image_size: Optional[int] = None,
    cache_dir: Optional[str | os.PathLike] = None,
    hf_cache_dir: Optional[str | os.PathLike] = None,
) -> Loaders:
    """Train and eval loaders for ``dataset`` (a name of :func:`~timm_local.data.specs.list_datasets`).

    Args:
        dataset: benchmark name (``cifar10``, ``svhn``, ``stl10``, ``imagenet``) or its Hub id.
        data_dir: local copy of the Hub layout (``--data-dir``), ``None`` to load the Hub id.
        batch_size / eval_batch_size: per-rank batch sizes (eval defaults to ``batch_size``).
        device: where batches (and, for in-memory sets, the whole uint8 dataset) live.
        max_train_samples / max_eval_samples: keep only the first N rows of a split (quick runs).
        rank / world_size: this process's DDP shard.
        seed: shuffling and augmentation seed (the order of epoch e depends on (seed, e) only).
        channels_last: return ``x`` in channels_last memory format.
        drop_last: drop the last partial training batch (reference: keep it).
        workers: DataLoader workers of streamed sets (default min(8, CPUs)); unused for in-memory sets.
        image_size: train crop size of streamed sets (default ``spec.image_size``, 224 for ImageNet); for
            in-memory sets it must be ``None`` or the native size.
        cache_dir: folder for decoded tensors (default ``$TIMM_LOCAL_CACHE``, else ``~/.cache/timm_local``;
            nothing is written into ``data_dir``).
        hf_cache_dir: ``datasets`` cache for the arrow copy of streamed sets (default: HF's).

    Raises:
        ValueError / FileNotFoundError: unknown dataset, bad ``data_dir`` layout, missing split or column,
            wrong image size or class count; each message says what was expected and how to fix it.
    """
    spec = get_dataset_spec(dataset)
    eval_batch_size = eval_batch_size or batch_size
    device = torch.device(device)
    if spec.in_memory and image_size not in (None, spec.image_size):
        raise ValueError(
            f"Dataset {spec.name!r} trains at its native {spec.image_size} px (in-memory path, no resizing); "
            f"got image_size={image_size}. Leave image_size unset."
        )
    size = int(image_size or spec.image_size)
    max_train_samples, max_eval_samples = check_max_samples(max_train_samples), check_max_samples(max_eval_samples)
    common = dict(device=device, seed=seed, rank=rank, world_size=world_size)

    with main_process_first(rank, world_size):
        source = resolve_source(spec, data_dir)
        if spec.in_memory:
            train = load_tensor_split(spec, split=spec.train_split, max_samples=max_train_samples,
                                      cache_dir=cache_dir, source=source)
            test = load_tensor_split(spec, split=spec.eval_split, max_samples=max_eval_samples,
                                     cache_dir=cache_dir, source=source)
        else:
            train_ds = source.load(spec.train_split, cache_dir=hf_cache_dir)
            test_ds = source.load(spec.eval_split, cache_dir=hf_cache_dir)

    if spec.in_memory:
        label_names = train.label_names
        augment = TrainAugment(spec.pad, spec.pad_mode, spec.hflip, spec.mean, spec.std, channels_last)
        normalize = EvalTransform(spec.mean, spec.std, channels_last)
        train_loader = TensorLoader(train.images, train.labels, batch_size, transform=augment, shuffle=True,
                                    drop_last=drop_last, even_shards=True, **common)
        eval_loader = TensorLoader(test.images, test.labels, eval_batch_size, transform=normalize, shuffle=False,
                                   drop_last=False, even_shards=False, **common)
    else:
        label_names = label_names_of(spec, train_ds.features)
        train_tf, eval_tf = imagenet_transforms(size, spec.crop_pct, spec.hflip)
        workers = _default_workers() if workers is None else int(workers)
        normalize = EvalTransform(spec.mean, spec.std, channels_last)
        train_rows = _prepare_hf(source, spec.train_split, train_ds, max_train_samples, train_tf)
        eval_rows = _prepare_hf(source, spec.eval_split, test_ds, max_eval_samples, eval_tf)
        train_loader = StreamLoader(train_rows, batch_size, normalize=normalize, shuffle=True, drop_last=drop_last,
                                    even_shards=True, workers=workers, **common)
        eval_loader = StreamLoader(eval_rows, eval_batch_size, normalize=normalize, shuffle=False, drop_last=False,
                                   even_shards=False, workers=workers, **common)
    return Loaders(train_loader, eval_loader, spec, spec.num_classes, tuple(label_names), size, spec.mean,
                   spec.std)


def _prepare_hf(source: DataSource, split: str, ds, max_samples: Optional[int], transform) -> HFImageDataset:
    """First ``max_samples`` rows, image column left encoded, decoded + transformed lazily in the workers."""
    import datasets

    spec = source.spec
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
    ds = ds.select_columns([spec.image_column, spec.label_column])
    ds = ds.cast_column(spec.image_column, datasets.Image(decode=False))
    return HFImageDataset(ds, transform, spec.image_column, spec.label_column,
                          where=f"split {split!r} of {source.describe()}", files=source.files(split))
