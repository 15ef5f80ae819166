"""Evaluate a timm_local model on a benchmark's test split, like timm's validate.py.

    python -m timm_local.validate --model resnet32_man --checkpoint output/train/<run>/model_best.pth.tar \\
        --dataset cifar10 --data-dir ../shared/datasets/cifar10-jpeg

The checkpoint may be a training checkpoint (its ``arch`` and ``model_kwargs`` are used unless ``--model`` /
``--model-kwargs`` are given) or any file ``timm.models.load_checkpoint`` reads (an inference state dict, safetensors).
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
from .errors import run_command
from .train.checkpoint import read_checkpoint
from .train.args import ParseKwargs
from .train.metrics import evaluate
from .precision import resolve_mixed_precision
from .train.setup import expected_device_type, model_name_for_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate a timm_local model (plain backbone forward).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="timm_local model name, e.g. resnet32_man (default: the training checkpoint's)")
    parser.add_argument("--checkpoint", default="", help="training checkpoint or weights file")
    parser.add_argument("--pretrained", action="store_true", help="load the published weights (Hub)")
    parser.add_argument("--use-ema", action="store_true",
                        help="as timm: evaluate the checkpoint's EMA weights (state_dict_ema, from train.py --model-ema)")
    parser.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs, metavar="K=V")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("-b", "--batch-size", type=int, default=256)
    parser.add_argument("--max-eval-samples", type=int, default=None)
    parser.add_argument("-j", "--workers", type=int, default=4)
    parser.add_argument("--mixed-precision", default=None, choices=("no", "bf16", "fp16", "auto"),
                        help="'auto': bf16 where it is native, else no")
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--results-file", default="", help="also write the JSON results here")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    return parser


EMA_KEYS = ("state_dict_ema", "model_ema")  # where timm's load_checkpoint(use_ema=True) looks


def checkpoint_record(path: str, use_ema: bool = False) -> tuple[Optional[str], dict]:
    """``(arch, model_kwargs)`` saved in a training checkpoint, else ``(None, {})``.

    With ``use_ema`` the checkpoint must hold EMA weights: timm would silently evaluate the plain ones instead.
    """
    checkpoint = read_checkpoint(path) if path and not path.endswith(".safetensors") else None
    if use_ema and not (isinstance(checkpoint, dict) and any(checkpoint.get(k) is not None for k in EMA_KEYS)):
        raise ValueError(f"--use-ema: {path or 'no --checkpoint'} holds no EMA weights (state_dict_ema, written by "
                         f"train.py --model-ema): leave out --use-ema to evaluate its weights")
    if not isinstance(checkpoint, dict):
        return None, {}
    return checkpoint.get("arch"), dict(checkpoint.get("model_kwargs") or {})


def load_weights(model: torch.nn.Module, path: str, model_name: str, kwargs: dict, saved_arch: Optional[str],
                 saved_kwargs: dict, use_ema: bool = False) -> None:
    """``timm.models.load_checkpoint``; a mismatch names the checkpoint's model and this command's, in one line."""
    try:
        timm.models.load_checkpoint(model, path, use_ema=use_ema)
    except RuntimeError as error:
        if "state_dict" not in str(error):
            raise
        trained = f"was trained as {saved_arch} with {saved_kwargs}" if saved_arch else "holds another model"
        raise ValueError(f"--checkpoint {path} {trained}, which does not fit --model {model_name} with {kwargs}: "
                         f"leave out --model and --model-kwargs to take the checkpoint's") from None


def validate(args: argparse.Namespace) -> dict:
    saved_arch, saved_kwargs = checkpoint_record(args.checkpoint, use_ema=args.use_ema)
    args.model = args.model or saved_arch
    if not args.model:
        raise ValueError("--model is required unless --checkpoint is a training checkpoint (which names its model)")
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(args.mixed_precision,
                                                                      expected_device_type(args.cpu)), cpu=args.cpu)
    spec = get_dataset_spec(args.dataset)
    kwargs = {"num_classes": spec.num_classes, **(args.model_kwargs or saved_kwargs)}
    model = timm.create_model(model_name_for_dataset(args.model, spec.name), pretrained=args.pretrained, **kwargs)
    if args.checkpoint:
        load_weights(model, args.checkpoint, args.model, kwargs, saved_arch, saved_kwargs, use_ema=args.use_ema)
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
    results = {"model": args.model, "checkpoint": args.checkpoint, "use_ema": args.use_ema, "dataset": spec.name,
               "model_kwargs": kwargs,
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
    """``python validate.py ...``: expected errors are one line (``--debug`` for the traceback)."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: validate(args), debug=args.debug)


if __name__ == "__main__":
    main()
