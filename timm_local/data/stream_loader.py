"""The streamed path (ImageNet): a map-style HF dataset decoded by DataLoader workers with torchvision transforms.

Contract:
- :func:`imagenet_transforms` ``(size, crop_pct)`` gives the reference transforms (METHODS.md §7.2) on PIL
  images, ending in uint8 tensors: train ``RandomResizedCrop(size)`` + ``RandomHorizontalFlip``; eval
  ``Resize(floor(size / crop_pct))`` + ``CenterCrop(size)`` (224 -> 256/224). Normalisation happens on the
  device, after the uint8 batch is transferred (4× less host-to-device traffic than float).
- :class:`HFImageDataset` serves the rows of a map-style HF dataset (image column left encoded): bytes -> PIL
  (converted to RGB: some ImageNet JPEGs are grayscale or CMYK) -> transform, one arrow read per batch
  (``__getitems__``); item ``i`` is ``{"image": uint8 3×S×S, "label": int}``.
- :class:`StreamLoader` wraps a ``torch.utils.data.DataLoader`` with a :class:`~timm_local.data.sharding.ShardSampler`
  (DDP share by ``rank``/``world_size``) and yields ``(x float normalised on device, y int64 on device)``;
  epochs, ``len`` and resume follow :mod:`timm_local.data.loader_base`. Worker RNG is seeded from
  ``(seed, epoch, rank)``; a resumed epoch sees the same samples, not bit-identical random crops.
- An image that does not decode raises :class:`~timm_local.data.decode.CorruptImageError` in the main process,
  one line naming the split, the row, the column, the parquet file and the image's own path: the worker hands
  the message back as a :class:`BadRow` batch instead of raising (DataLoader would wrap a worker's exception
  in its traceback).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, Union

import torch
from torch.utils.data import DataLoader, Dataset

from .augment import EvalTransform
from .decode import DECODE_ERRORS, CorruptImageError, corrupt_image_message
from .loader_base import EpochLoader
from .sharding import ShardSampler, mix_seed

__all__ = ["imagenet_transforms", "HFImageDataset", "BadRow", "collate_image_label", "StreamLoader"]


def imagenet_transforms(size: int = 224, crop_pct: float = 0.875, hflip: bool = True):
    """``(train, eval)`` torchvision transforms on PIL RGB images, returning uint8 ``3×size×size`` tensors."""
    from torchvision import transforms as T

    train = [T.RandomResizedCrop(size)] + ([T.RandomHorizontalFlip()] if hflip else []) + [T.PILToTensor()]
    evaluate = [T.Resize(int(size / crop_pct)), T.CenterCrop(size), T.PILToTensor()]
    return T.Compose(train), T.Compose(evaluate)


@dataclass(frozen=True)
class BadRow:
    """What a worker returns for a batch holding an undecodable image: the one-line error message."""

    message: str


class HFImageDataset(Dataset):
    """Rows of a map-style HF dataset decoded to RGB PIL and passed through ``transform``.

    Args:
        ds: the dataset with ``image_column`` cast to ``datasets.Image(decode=False)`` (cells ``{"bytes", "path"}``).
        transform: PIL RGB image -> uint8 tensor (:func:`imagenet_transforms`).
        image_column / label_column: the columns to read.
        where: the split and source, for error messages (``"split 'train' of /data/imagenet"``).
        files: the split's parquet files in row order (names the file of a bad row; may be empty).

    Picklable (DataLoader workers may be spawned).
    """

    def __init__(self, ds, transform: Callable, image_column: str, label_column: str, *, where: str,
                 files: Sequence[str] = ()):
        self.ds, self.transform = ds, transform
        self.image_column, self.label_column = image_column, label_column
        self.where, self.files = where, tuple(files)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitems__(self, rows: list[int]) -> Union[list[dict], list[BadRow]]:
        """The samples of ``rows`` (one arrow read), or ``[BadRow]`` at the first image that does not decode."""
        batch = self.ds[list(rows)]
        samples = []
        for row, cell, label in zip(rows, batch[self.image_column], batch[self.label_column]):
            try:
                image = self.to_pil(cell)
            except DECODE_ERRORS as e:
                return [BadRow(corrupt_image_message(
                    cell.get("bytes"), e, row=row, column=self.image_column, where=self.where, files=self.files,
                    image_path=cell.get("path")))]
            samples.append({"image": self.transform(image), "label": int(label)})
        return samples

    def __getitem__(self, row: int) -> Union[dict, BadRow]:
        return self.__getitems__([row])[0]

    @staticmethod
    def to_pil(cell: dict):
        """Decode one ``{"bytes", "path"}`` cell to an RGB PIL image (decoded now, so bad bytes raise here)."""
        from PIL import Image

        img = Image.open(io.BytesIO(cell["bytes"])) if cell.get("bytes") is not None else Image.open(cell["path"])
        img.load()
        return img if img.mode == "RGB" else img.convert("RGB")


def collate_image_label(samples: list[Union[dict, BadRow]]) -> Union[tuple[torch.Tensor, torch.Tensor], BadRow]:
    """``{"image": uint8 3×S×S, "label": int}`` samples -> ``(uint8 N×3×S×S, int64 N)``; a :class:`BadRow` passes."""
    bad = next((s for s in samples if isinstance(s, BadRow)), None)
    if bad is not None:
        return bad
    x = torch.stack([s["image"] for s in samples])
    y = torch.as_tensor([int(s["label"]) for s in samples], dtype=torch.int64)
    return x, y


class StreamLoader(EpochLoader):
    """Batches of a map-style HF dataset (already ``with_transform``-ed) through DataLoader workers.

    Args:
        dataset: an :class:`HFImageDataset` (or any map-style dataset of ``{"image": uint8 tensor, "label": int}``).
        batch_size: samples per batch on this rank.
        normalize: device-side ``normalize(x_uint8) -> float`` (an :class:`~timm_local.data.augment.EvalTransform`).
        device: where batches go (pinned memory + ``non_blocking`` on CUDA).
        shuffle / seed / rank / world_size / drop_last / even_shards: as in
            :class:`~timm_local.data.tensor_loader.TensorLoader`.
        workers: DataLoader worker processes (0: decode in the main process).
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        *,
        normalize: EvalTransform,
        device: torch.device | str = "cpu",
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        even_shards: bool = True,
        workers: int = 0,
    ):
        super().__init__(batch_size, drop_last)
        self.dataset = dataset
        self.device = torch.device(device)
        self.normalize = normalize
        self.seed, self.rank = int(seed), rank
        self.sampler = ShardSampler(len(dataset), rank=rank, world_size=world_size, shuffle=shuffle, seed=seed,
                                    even=even_shards)
        self._generator = torch.Generator()
        self.loader = DataLoader(
            dataset, batch_size=self.batch_size, sampler=self.sampler, num_workers=int(workers),
            collate_fn=collate_image_label, pin_memory=self.device.type == "cuda", drop_last=self.drop_last,
            generator=self._generator, persistent_workers=False,
        )

    @property
    def dataset_size(self) -> int:
        return len(self.dataset)

    @property
    def num_samples(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start = self._start_batch()
        self.sampler.set_epoch(self.epoch)
        self.sampler.skip_samples(start * self.batch_size)
        self._generator.manual_seed(mix_seed(self.seed, self.epoch, self.rank))
        non_blocking = self.device.type == "cuda"
        for b, batch in enumerate(self.loader, start):
            if isinstance(batch, BadRow):
                raise CorruptImageError(batch.message)
            x, y = batch
            x = self.normalize(x.to(self.device, non_blocking=non_blocking))
            y = y.to(self.device, non_blocking=non_blocking)
            self.batch = b + 1
            yield x, y

    def __repr__(self) -> str:
        return (f"StreamLoader(n={self.dataset_size}, batch_size={self.batch_size}, batches={len(self)}, "
                f"rank={self.rank}, workers={self.loader.num_workers}, device={self.device})")
