"""Decode encoded images (PNG/JPEG bytes from a Hub parquet ``Image`` column) into uint8 RGB tensors.

Contract:
- :func:`decode_rgb` returns a ``uint8`` tensor ``3×H×W`` (channels first, RGB) for any image PIL can read;
  grayscale, palette, RGBA and CMYK images are converted to RGB. PNG and JPEG go through
  ``torchvision.io.decode_image`` (C++, bit-identical to PIL's libjpeg-turbo output on the CIFAR-10 copy and
  ~3× faster than ``PIL.Image.open`` on 32 px images); anything else, or a torchvision without
  ``torchvision.io`` decoders (deprecated since 0.29), falls back to PIL.
- :func:`decode_split` reads an ``IterableDataset`` (streamed from parquet, image column left encoded) in arrow
  batches and returns ``(images uint8 N×3×H×W, labels int64 N)``; every image must be exactly
  ``size×size`` and every label in ``[0, num_classes)``, else ValueError naming the dataset, the row, what
  was expected and what was found.
- Bytes that do not decode (a truncated JPEG/PNG, non-image bytes) raise :class:`CorruptImageError`, one line
  naming the split, the row, the column and, for local parquet files, the file and the row in it
  (:func:`corrupt_image_message`, shared with the streamed path).
"""
from __future__ import annotations

import functools
import io
import warnings
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["CorruptImageError", "DECODE_ERRORS", "corrupt_image_message", "decode_rgb", "decode_split", "locate_row"]

_PNG_MAGIC = b"\x89PNG"
_JPEG_MAGIC = b"\xff\xd8"

# What PIL raises for bytes it cannot decode: UnidentifiedImageError (not an image) and "image file is
# truncated" are OSErrors; some damaged PNG chunks raise SyntaxError or ValueError.
DECODE_ERRORS = (OSError, SyntaxError, ValueError)


class CorruptImageError(ValueError):
    """An image cell of the data that cannot be decoded; the message says where (see :func:`corrupt_image_message`)."""


def locate_row(files: Sequence[str], row: int) -> Optional[tuple[str, int]]:
    """``(file, row within it)`` of row ``row`` of a split made of the parquet ``files`` read in order.

    ``None`` when a file is remote (``hf://``) or unreadable, or ``row`` is past the end: the caller then names
    the split row only. Reads the parquet footers alone (row counts), so it is cheap, and called on errors only.
    """
    import pyarrow.parquet as pq

    start = 0
    for f in files:
        if "://" in f:
            return None
        try:
            n = pq.ParquetFile(f).metadata.num_rows
        except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
            return None
        if row < start + n:
            return f, row - start
        start += n
    return None


def corrupt_image_message(data: Optional[bytes], error: BaseException, *, row: int, column: str, where: str,
                          files: Sequence[str] = (), image_path: Optional[str] = None) -> str:
    """One line: which image (split row, column, parquet file and its row, the cell's own path) and why not.

    ``where`` names the split and the source (``"split 'train' of /data/c (config 'plain_text')"``).
    """
    located = locate_row(files, row)
    inside = [f"file {located[0]}, its row {located[1]}"] if located else []
    inside += [f"image path {image_path!r}"] if image_path else []
    place = f"row {row} of {where}, column {column!r}" + (f" ({'; '.join(inside)})" if inside else "")
    if data is None:
        reason = f"the image file cannot be read ({error})"
    elif data[:4] == _PNG_MAGIC or data[:2] == _JPEG_MAGIC:
        kind = "PNG" if data[:4] == _PNG_MAGIC else "JPEG"
        reason = f"truncated or damaged {kind} data ({len(data)} bytes; {error})"
    else:
        reason = f"{len(data)} bytes in no image format PIL reads (they start with {data[:8]!r})"
    return (f"Cannot decode the image at {place}: {reason}. Replace that file with an intact copy (download it "
            f"again) or remove the row.")


def _decode_pil(data: bytes) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.mode != "RGB":
            im = im.convert("RGB")
        arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


@functools.lru_cache(maxsize=None)
def _torchvision_decoder():
    """``(decode_image, ImageReadMode.RGB)`` from torchvision, or ``None`` where it is gone (deprecated in 0.29)."""
    try:
        from torchvision.io import ImageReadMode, decode_image
    except ImportError:
        return None
    return decode_image, ImageReadMode.RGB


def decode_rgb(data: bytes) -> torch.Tensor:
    """Decode one encoded image to a ``uint8`` RGB tensor ``3×H×W``."""
    decoder = _torchvision_decoder() if data[:4] == _PNG_MAGIC or data[:2] == _JPEG_MAGIC else None
    if decoder is not None:
        decode_image, rgb = decoder
        try:  # frombuffer warns (once) that ``data`` is read-only; decode_image only reads it
            img = decode_image(torch.frombuffer(data, dtype=torch.uint8), mode=rgb)
            if img.shape[0] == 3:
                return img
        except RuntimeError:  # e.g. CMYK/exotic JPEG, 16-bit PNG: PIL handles those
            pass
    return _decode_pil(data)


def _encoded_bytes(cell: Optional[dict], row: int, where: str, column: str) -> bytes:
    if cell is None:
        raise ValueError(f"Row {row} of {where} has no image in column {column!r} (null cell); remove the row "
                         f"from the parquet files.")
    data = cell.get("bytes")
    if data is None and cell.get("path"):
        with open(cell["path"], "rb") as fh:  # Image feature stored by path only
            data = fh.read()
    if data is None:
        raise ValueError(f"Row {row} of {where} has neither image bytes nor a readable path in column {column!r}.")
    return data


def decode_split(
    ds,
    *,
    image_column: str,
    label_column: str,
    image_size: int,
    num_classes: int,
    dataset: str,
    where: str,
    max_samples: Optional[int] = None,
    batch_size: int = 4096,
    files: Sequence[str] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode the first ``max_samples`` rows (all if ``None``) of ``ds`` into ``(uint8 N×3×S×S, int64 N)``.

    ``ds`` is a ``datasets.IterableDataset`` or ``Dataset``; it is read with the arrow formatter, so the image
    column stays encoded (no PIL decode inside ``datasets``). ``where`` names the source in error messages,
    ``files`` (the split's parquet files, in the order ``ds`` reads them) lets them name the file of a bad row.
    A progress bar (removed when done) counts the rows read.

    Raises:
        CorruptImageError: an image cell does not decode.
        ValueError: a null image cell, a label outside ``[0, num_classes)``, an image of another size.
    """
    if max_samples is not None:
        ds = ds.take(max_samples) if hasattr(ds, "take") else ds.select(range(min(max_samples, len(ds))))
    images, labels = [], []
    row = 0
    expected = (3, image_size, image_size)
    progress = tqdm(total=max_samples, desc=f"decoding {where}", unit="img", leave=False, dynamic_ncols=True)
    with warnings.catch_warnings(), progress:  # read-only-buffer and torchvision.io deprecation warnings
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        for table in ds.with_format("arrow").iter(batch_size=batch_size):
            progress.update(table.num_rows)
            names = table.column_names
            if image_column not in names or label_column not in names:
                raise ValueError(
                    f"{where} has columns {names}, but dataset {dataset!r} expects image column {image_column!r} "
                    f"and label column {label_column!r}."
                )
            y = np.array(table.column(label_column).to_numpy(zero_copy_only=False), dtype=np.int64)
            bad = np.flatnonzero((y < 0) | (y >= num_classes))
            if bad.size:
                i = int(bad[0])
                raise ValueError(
                    f"Row {row + i} of {where} has label {int(y[i])}, outside [0, {num_classes}) for dataset "
                    f"{dataset!r}; labels must be ClassLabel indices (e.g. SVHN digit 0 is label 0, not 10)."
                )
            for cell in table.column(image_column).to_pylist():
                data = _encoded_bytes(cell, row, where, image_column)
                try:
                    img = decode_rgb(data)
                except DECODE_ERRORS as e:
                    raise CorruptImageError(corrupt_image_message(
                        data, e, row=row, column=image_column, where=where, files=files,
                        image_path=cell.get("path"))) from e
                if img.shape != expected:
                    raise ValueError(
                        f"Image {row} of {where} is {img.shape[2]}×{img.shape[1]} (W×H) but dataset {dataset!r} "
                        f"expects {image_size}×{image_size}; check that --data-dir holds {dataset} (the in-memory "
                        f"path trains at the native resolution and does not resize)."
                    )
                images.append(img)
                row += 1
            labels.append(torch.from_numpy(y))
    if not images:
        raise ValueError(f"{where} is empty: no rows to decode for dataset {dataset!r}.")
    return torch.stack(images), torch.cat(labels)
