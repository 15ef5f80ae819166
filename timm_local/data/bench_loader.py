"""Throughput of the input pipeline alone (no model), to compare with the trainer's steps/s.

    python -m timm_local.data.bench_loader --dataset cifar10 --data-dir ../shared/datasets/cifar10-jpeg \\
        --batch-size 1024 --device cpu

prints the time to get the loaders (decode or cache read) and, for the train and eval loaders, batches/s and
images/s over full epochs. :func:`benchmark_loader` is the reusable part.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Iterable, Optional

import torch

from .builder import build_loaders

__all__ = ["benchmark_loader", "main"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark_loader(loader: Iterable, epochs: int = 1, warmup_batches: int = 2,
                     device: Optional[torch.device] = None) -> dict:
    """Iterate ``loader`` for ``epochs`` epochs (after ``warmup_batches`` untimed batches).

    Returns ``{"batches", "images", "seconds", "batches_per_s", "images_per_s", "cpu_seconds"}``; time includes
    the batch transform on the device (synchronised on CUDA) but no model. ``cpu_seconds`` is this process's
    CPU time over all threads (less sensitive than wall time to other jobs sharing the machine).
    """
    device = torch.device(device or getattr(loader, "device", "cpu"))
    it = iter(loader)
    for _ in range(warmup_batches):
        if next(it, None) is None:
            break
    _sync(device)
    batches = images = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for epoch in range(epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch + 1)
        for x, _ in loader:
            batches += 1
            images += x.shape[0]
    _sync(device)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"batches": batches, "images": images, "seconds": round(seconds, 4),
            "batches_per_s": round(batches / seconds, 2), "images_per_s": round(images / seconds, 1),
            "cpu_seconds": round(cpu, 4)}


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-samples", type=int, default=None, help="first N rows of each split")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    loaders = build_loaders(args.dataset, args.data_dir, args.batch_size, device=args.device,
                            max_train_samples=args.max_samples, max_eval_samples=args.max_samples,
                            channels_last=args.channels_last, workers=args.workers, image_size=args.image_size)
    result = {"dataset": loaders.spec.name, "batch_size": args.batch_size, "device": str(args.device),
              "torch_threads": torch.get_num_threads(), "build_seconds": round(time.perf_counter() - t0, 3),
              "train": benchmark_loader(loaders.train, args.epochs),
              "eval": benchmark_loader(loaders.eval, args.epochs)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
