"""Write tiny synthetic copies of the benchmarks' Hub layouts (tests, smoke runs, benchmarks without data).

Contract of :func:`write_synthetic_copy`: ``root`` becomes a folder that ``datasets.load_dataset(root, config)``
and :func:`~timm_local.data.build_loaders` read like the real Hub repo of ``spec``:
``<hub_data_dir>/<split>-00000-of-00001.parquet`` for the train and eval splits, with the real column names,
the Image feature (PNG bytes; JPEG for ImageNet, including one grayscale and one CMYK image like the real
set) and a ClassLabel with the real names (``n00000000``.. for ImageNet's 1000 classes), plus a ``README.md``
whose YAML ``configs:`` lists the data files per split (``readme=False`` leaves it out). Pixels are random
and labels cycle through the classes; everything is a deterministic function of ``seed``.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Optional

import numpy as np

from .specs import DatasetSpec, get_dataset_spec

__all__ = ["write_synthetic_copy"]


def _encode(arr: np.ndarray, fmt: str, mode: Optional[str] = None) -> bytes:
    from PIL import Image

    img = Image.fromarray(arr)
    if mode is not None:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _readme(spec: DatasetSpec, splits: list[str]) -> str:
    lines = ["---", f"pretty_name: synthetic copy of {spec.hub_id}", "configs:",
             f"- config_name: {spec.config or 'default'}", "  data_files:"]
    for split in splits:
        lines += [f"  - split: {split}", f"    path: {spec.hub_data_dir}/{split}-*"]
    lines += ["---", f"# Synthetic {spec.name}", "", f"Random pixels in the layout of {spec.hub_id}.", ""]
    return "\n".join(lines)


def write_synthetic_copy(
    dataset: str | DatasetSpec,
    root: str | os.PathLike,
    *,
    num_train: int = 8,
    num_eval: int = 4,
    image_size: Optional[int] = None,
    readme: bool = True,
    seed: int = 0,
) -> Path:
    """Write a synthetic copy of ``dataset``'s Hub layout under ``root`` and return ``root``.

    ``image_size`` defaults to the native size (ImageNet: 64 px, with every other image 25% wider to vary
    the aspect ratio). Returns the folder to pass as ``data_dir``.
    """
    import datasets

    spec = dataset if isinstance(dataset, DatasetSpec) else get_dataset_spec(dataset)
    root = Path(root)
    rng = np.random.default_rng(seed)
    fmt = "PNG" if spec.in_memory else "JPEG"
    size = image_size or (spec.image_size if spec.in_memory else 64)
    names = list(spec.label_names or [f"n{i:08d}" for i in range(spec.num_classes)])
    features = datasets.Features({spec.image_column: datasets.Image(),
                                  spec.label_column: datasets.ClassLabel(names=names)})
    splits = [(spec.train_split, num_train), (spec.eval_split, num_eval)]
    (root / spec.hub_data_dir).mkdir(parents=True, exist_ok=True)
    for s, (split, n) in enumerate(splits):
        cells = []
        for i in range(n):
            w = size + (size // 4 if not spec.in_memory and i % 2 else 0)
            arr = rng.integers(0, 256, (size, w, 3), dtype=np.uint8)
            mode = None if spec.in_memory else {1: "L", 2: "CMYK"}.get(i)
            cells.append({"bytes": _encode(arr, fmt, mode), "path": None})
        labels = [(i + s) % spec.num_classes for i in range(n)]
        ds = datasets.Dataset.from_dict({spec.image_column: cells, spec.label_column: labels}, features=features)
        ds.to_parquet(str(root / spec.hub_data_dir / f"{split}-00000-of-00001.parquet"))
    if readme:
        (root / "README.md").write_text(_readme(spec, [s for s, _ in splits]))
    return root
