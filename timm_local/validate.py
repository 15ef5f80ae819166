"""Evaluate a timm_local model on a benchmark's test split, like timm's validate.py.

    python -m timm_local.validate --model resnet32_man --checkpoint output/train/<run>/model_best.pth.tar \\
        --dataset cifar10 --data-dir ../shared/datasets/cifar10-jpeg

The checkpoint may be a training checkpoint (its ``model_kwargs`` are used unless ``--model-kwargs``
is given) or any file ``timm.models.load_checkpoint`` reads (an inference state dict, safetensors).
Prints (and with ``--results-file`` writes) a JSON dict with top-1, top-5 and the mean loss.
Under ``accelerate launch`` every process evaluates its shard and the sums are reduced.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Optional, Sequence

import timm
import torch
from accelerate import Accelerator

from .data import build_loaders, get_dataset_spec
from .train.args import ParseKwargs
from .train.metrics import evaluate
from .train.setup import model_name_for_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate a timm_local model (plain backbone forward).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="timm_local model name, e.g. resnet32_man")
    parser.add_argument("--checkpoint", default="", help="training checkpoint or weights file")
    parser.add_argument("--pretrained", action="store_true", help="load the published weights (Hub)")
    parser.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs, metavar="K=V")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("-b", "--batch-size", type=int, default=256)
    parser.add_argument("--max-eval-samples", type=int, default=None)
    parser.add_argument("-j", "--workers", type=int, default=4)
    parser.add_argument("--mixed-precision", default=None, choices=("no", "bf16", "fp16"))
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--results-file", default="", help="also write the JSON results here")
    return parser


def checkpoint_model_kwargs(path: str) -> dict:
    """The ``model_kwargs`` saved in a training checkpoint, else ``{}``."""
    if not path or path.endswith(".safetensors"):
        return {}
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return dict(checkpoint.get("model_kwargs") or {}) if isinstance(checkpoint, dict) else {}


def validate(args: argparse.Namespace) -> dict:
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=args.cpu)
    spec = get_dataset_spec(args.dataset)
    kwargs = {"num_classes": spec.num_classes, **(args.model_kwargs or checkpoint_model_kwargs(args.checkpoint))}
    model = timm.create_model(model_name_for_dataset(args.model, spec.name), pretrained=args.pretrained, **kwargs)
    if args.checkpoint:
        timm.models.load_checkpoint(model, args.checkpoint)
    model.to(accelerator.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    # build_loaders always builds both splits: read a single training image to keep that cheap
    loaders = build_loaders(spec.name, args.data_dir, 1, args.batch_size, accelerator.device, max_train_samples=1,
                            max_eval_samples=args.max_eval_samples, rank=accelerator.process_index,
                            world_size=accelerator.num_processes, channels_last=args.channels_last,
                            workers=args.workers,
                            image_size=None if spec.in_memory else kwargs.get("img_size"))
    metrics = evaluate(model, loaders.eval, accelerator)
    results = {"model": args.model, "checkpoint": args.checkpoint, "dataset": spec.name, "model_kwargs": kwargs,
               "top1": metrics["eval_top1"], "top5": metrics["eval_top5"], "loss": metrics["eval_loss"],
               "mixed_precision": accelerator.mixed_precision}
    if accelerator.is_main_process:
        print(json.dumps(results, indent=2))
        if args.results_file:
            os.makedirs(os.path.dirname(os.path.abspath(args.results_file)), exist_ok=True)
            with open(args.results_file, "w") as f:
                json.dump(results, f, indent=2)
    return results


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return validate(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
