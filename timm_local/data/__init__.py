"""Data for timm_local: the four benchmarks through Hugging Face ``datasets``, with the papers' transforms.

Entry point: :func:`build_loaders` (trainer), per-dataset facts: :func:`get_dataset_spec` / :data:`DATASETS`.

Modules, one job each:
    specs          DatasetSpec per benchmark (Hub id, config, columns, splits, mean/std, augmentation)
    source         resolve a --data-dir copy (or the Hub id), offline guard, layout checks and hints
    decode         encoded PNG/JPEG bytes -> uint8 tensors, with size/label checks
    cache          decoded-split cache in ~/.cache/timm_local (keyed by the files' path and bytes, atomic writes)
    memory         decode-once-and-cache a small split into a uint8 N×C×H×W tensor
    augment        pad-crop / flip / normalise a whole batch on the device
    sharding       per-epoch order and DDP shards (DistributedSampler semantics)
    loader_base    epoch, len and resumable state shared by the loaders
    tensor_loader  the in-memory loader (cifar10, svhn, stl10)
    stream_loader  the DataLoader-worker loader with torchvision transforms (imagenet)
    builder        build_loaders()
    synthetic      tiny synthetic copies of each Hub layout
    bench_loader   loader-only throughput (python -m timm_local.data.bench_loader)

ImageNet: the parquet layout of ``ILSVRC/imagenet-1k`` (``data/{train,validation}-*.parquet`` + README
configs; columns ``image``, ``label``) is supported. The webdataset tars of ``timm/imagenet-1k-wds`` are not
read by this package; convert them to parquet (or use timm's ``wds/`` reader) first.
"""
from .augment import EvalTransform, TrainAugment, crop_flip, draw_crop_flip, normalize
from .builder import Loaders, build_loaders
from .memory import TensorSplit, load_tensor_split
from .sharding import ShardSampler, epoch_order, shard
from .source import DataSource, layout_hint, resolve_source
from .specs import DATASETS, DatasetSpec, get_dataset_spec, list_datasets
from .stream_loader import StreamLoader, imagenet_transforms
from .synthetic import write_synthetic_copy
from .tensor_loader import TensorLoader

__all__ = [
    "DATASETS", "DataSource", "DatasetSpec", "EvalTransform", "Loaders", "ShardSampler", "StreamLoader",
    "TensorLoader", "TensorSplit", "TrainAugment", "build_loaders", "crop_flip", "draw_crop_flip", "epoch_order",
    "get_dataset_spec", "imagenet_transforms", "layout_hint", "list_datasets", "load_tensor_split", "normalize",
    "resolve_source", "shard", "write_synthetic_copy",
]
