"""Per-dataset facts: where a benchmark lives on the Hub and how the papers train on it.

One frozen :class:`DatasetSpec` per benchmark (ECOSYSTEM.md §5.1, METHODS.md §7.1/§7.2). Everything else
in :mod:`timm_local.data` reads these, and so can model tags and model cards (``spec.hub_id`` is the real Hub
dataset id to cite).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..constants import (
    CIFAR10_LABELS,
    CIFAR10_MEAN,
    CIFAR10_STD,
    HALF_MEAN,
    HALF_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    STL10_LABELS,
    SVHN_LABELS,
)

__all__ = ["DatasetSpec", "DATASETS", "get_dataset_spec", "list_datasets"]


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one benchmark and how the reference code augments it.

    Attributes:
        name: short name used on the command line (``--dataset cifar10``).
        hub_id: Hugging Face Hub dataset id (what ``data_dir=None`` loads, and what model cards cite).
        config: Hub config name passed to ``datasets.load_dataset`` (``None``: the repo's only config).
        hub_data_dir: folder of the parquet files inside the Hub repo (used for layout hints and by
            :mod:`timm_local.data.synthetic`).
        image_column / label_column: column names in the Hub layout (``label`` is a ClassLabel).
        train_split / eval_split: split names used for training and for evaluation.
        num_classes: number of classes; the dataset's ClassLabel must agree.
        image_size: native size of the in-memory sets (every image must be exactly this), or the default
            train crop size of streamed sets.
        mean / std: per-channel normalisation of [0, 1] pixels.
        pad / pad_mode: random-crop padding in pixels and its mode (``"reflect"`` or ``"constant"``, i.e. zero
            pixels before normalisation); ``pad=0`` means no random crop.
        hflip: random horizontal flip with p=0.5 in training.
        label_names: class names in label order, or ``None`` to take them from the dataset's ClassLabel.
        in_memory: ``True``: decoded once into a uint8 tensor and augmented per batch on the device;
            ``False``: streamed through DataLoader workers with torchvision transforms.
        crop_pct: eval centre-crop fraction of streamed sets (eval resize = floor(image_size / crop_pct)).
        revision: Hub revision pinned when loading by ``hub_id`` (ignored for a local ``data_dir``).
    """

    name: str
    hub_id: str
    config: Optional[str]
    hub_data_dir: str
    image_column: str
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pad: int = 0
    pad_mode: str = "constant"
    hflip: bool = True
    label_names: Optional[tuple[str, ...]] = None
    in_memory: bool = True
    crop_pct: float = 1.0
    label_column: str = "label"
    train_split: str = "train"
    eval_split: str = "test"
    revision: Optional[str] = None

    def __post_init__(self):
        if self.pad_mode not in ("reflect", "constant"):
            raise ValueError(f"pad_mode must be 'reflect' or 'constant', got {self.pad_mode!r}")
        if self.label_names is not None and len(self.label_names) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.label_names)} label names for {self.num_classes} classes")


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        # METHODS.md §7.1: reflect-pad 4 -> RandomCrop 32 -> flip.
        DatasetSpec(
            name="cifar10", hub_id="uoft-cs/cifar10", config="plain_text", hub_data_dir="plain_text",
            image_column="img", num_classes=10, image_size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD,
            pad=4, pad_mode="reflect", hflip=True, label_names=CIFAR10_LABELS,
        ),
        # RandomCrop(32, padding=2) with zero padding, no flip (digits are not mirror-symmetric).
        DatasetSpec(
            name="svhn", hub_id="ufldl-stanford/svhn", config="cropped_digits", hub_data_dir="cropped_digits",
            image_column="image", num_classes=10, image_size=32, mean=HALF_MEAN, std=HALF_STD,
            pad=2, pad_mode="constant", hflip=False, label_names=SVHN_LABELS,
        ),
        # RandomCrop(96, padding=4) zero pad + flip; community mirror, so the revision is pinned.
        DatasetSpec(
            name="stl10", hub_id="tanganke/stl10", config=None, hub_data_dir="data",
            image_column="image", num_classes=10, image_size=96, mean=HALF_MEAN, std=HALF_STD,
            pad=4, pad_mode="constant", hflip=True, label_names=STL10_LABELS,
            revision="49ae7f94508f7feae62baf836db284306eab0b0f",
        ),
        # METHODS.md §7.2: RandomResizedCrop 224 + flip; eval Resize 256 -> CenterCrop 224.
        DatasetSpec(
            name="imagenet", hub_id="ILSVRC/imagenet-1k", config=None, hub_data_dir="data",
            image_column="image", num_classes=1000, image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            hflip=True, in_memory=False, crop_pct=0.875, eval_split="validation",
        ),
    )
}

_ALIASES = {
    "cifar-10": "cifar10", "stl-10": "stl10", "imagenet-1k": "imagenet", "imagenet1k": "imagenet",
    **{spec.hub_id.lower(): spec.name for spec in DATASETS.values()},
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`get_dataset_spec` (without aliases)."""
    return sorted(DATASETS)


def get_dataset_spec(name: str) -> DatasetSpec:
    """The spec of benchmark ``name`` (case-insensitive; a Hub id such as ``uoft-cs/cifar10`` works too).

    Raises:
        ValueError: unknown name; the message lists the known names.
    """
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(
            f"Unknown dataset {name!r}. Known datasets: {', '.join(list_datasets())} "
            f"(Hub ids {', '.join(s.hub_id for s in DATASETS.values())} are accepted too). "
            "Pass one of these names as --dataset."
        )
    return DATASETS[key]
