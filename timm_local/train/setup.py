"""Set-up steps of :func:`~timm_local.train.loop.train`: accelerator, model, data, loader benchmark."""
from __future__ import annotations

import argparse
import itertools
import os
from typing import Iterable, Optional

import timm
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from timm.data import Mixup
from timm.utils import ModelEmaV3

from ..data import Loaders, build_loaders
from ..data.bench_loader import benchmark_loader
from ..data.specs import get_dataset_spec
from ..local import LocalNet
from ..precision import emulated_bf16_warning, resolve_amp, resolve_mixed_precision
from .distributed import check_distributed_type, single_cpu_process_warning
from .threads import choose_threads


def expected_device_type(cpu: bool) -> str:
    """The device type Accelerate will pick: 'cpu' when forced or when no GPU is present, else 'cuda'."""
    return "cpu" if cpu or not torch.cuda.is_available() else "cuda"


def create_accelerator(args: argparse.Namespace, project_dir: Optional[str] = None) -> Accelerator:
    """An Accelerator for ``args`` (mixed precision: the flag, else the launcher's), seeded identically on every rank.

    ``--mixed-precision auto`` and timm's ``--amp [--amp-dtype]`` are resolved here (:mod:`timm_local.precision`)
    and written back to ``args.mixed_precision``, so args.yaml records what ran.

    Every rank uses the same seed so that models are built identically (DDP broadcasts rank 0's
    weights anyway); the data loaders derive their per-rank randomness from (seed, epoch, rank, batch).
    """
    device_type = expected_device_type(args.cpu)
    if args.amp:
        args.mixed_precision = resolve_amp(args.amp_dtype, device_type)
    args.mixed_precision = resolve_mixed_precision(args.mixed_precision, device_type)
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=args.cpu, log_with=args.log_with or None,
                              project_dir=project_dir, dynamo_backend=args.torchcompile)
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ValueError("fp16 mixed precision needs a GPU (on the CPU Accelerate would silently train in fp32): "
                         "use --mixed-precision bf16 (supported on the CPU) or no")
    warning = emulated_bf16_warning(accelerator.mixed_precision, accelerator.device.type)
    if warning:
        accelerator.print(warning)
    if accelerator.device.type == "cpu":
        threads, why = choose_threads(args.threads, int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)))
        torch.set_num_threads(threads)
        accelerator.print(f"{threads} CPU thread(s) per process ({why})")
    check_distributed_type(accelerator)
    launch_warning = single_cpu_process_warning(accelerator.num_processes)
    if launch_warning:
        accelerator.print(launch_warning)
    set_seed(args.seed, deterministic=args.deterministic)
    return accelerator


def model_name_for_dataset(model: str, dataset: str) -> str:
    """``model.<dataset>`` when the model has a pretrained cfg tagged with the dataset (its mean/std, input size).

    For the CIFAR ResNets the tag also selects the dataset's published InfoPro λ row and the
    normalisation that InfoPro's reconstruction target inverts. An explicit tag is kept as given.
    """
    if "." in model:
        return model
    tagged = f"{model}.{dataset}"
    return tagged if tagged in timm.list_models(model, include_tags=True) else model


IMAGE_CHANNELS = 3  # every dataset the loaders read is decoded as RGB


def create_local_model(args: argparse.Namespace, accelerator: Accelerator) -> LocalNet:
    """``timm.create_model(args.model, pretrained=args.pretrained, num_classes=<dataset's>, **args.model_kwargs)``
    on the device, then ``--initial-checkpoint``'s weights (``timm.models.load_checkpoint``, strict).

    ``--num-classes`` / ``--img-size`` / ``--in-chans`` / ``--drop-path`` arrive in ``args.model_kwargs``
    (:func:`~timm_local.train.args.parse_args`). A classifier narrower than the dataset's class count, or
    input channels other than the data's 3, are refused before anything is built.
    """
    spec = get_dataset_spec(args.dataset)
    kwargs = {"num_classes": spec.num_classes, **args.model_kwargs}
    if kwargs["num_classes"] < spec.num_classes:
        raise ValueError(f"--num-classes {kwargs['num_classes']} is below {spec.name}'s {spec.num_classes} classes: "
                         f"give at least {spec.num_classes} (or leave it out)")
    if kwargs.get("in_chans", IMAGE_CHANNELS) != IMAGE_CHANNELS:
        raise ValueError(f"--in-chans {kwargs['in_chans']}: the {spec.name} images are RGB ({IMAGE_CHANNELS} "
                         f"channels), so the model must take {IMAGE_CHANNELS}: drop --in-chans")
    name = model_name_for_dataset(args.model, spec.name)
    try:
        model = timm.create_model(name, pretrained=args.pretrained, **kwargs)
    except RuntimeError as error:
        if not (args.pretrained and str(error).startswith("No pretrained weights exist")):
            raise
        tagged = timm.list_pretrained(f"{name.split('.')[0]}.*")
        raise ValueError(f"--pretrained: {name} has no published weights; give --model one of its tags that has "
                         f"them ({', '.join(tagged) or 'none: train it first'}), or drop --pretrained") from None
    if not isinstance(model, LocalNet):
        raise ValueError(f"--model {args.model} is not a timm_local model (got {type(model).__name__}); choose one of "
                         f"timm_local.list_models(), e.g. resnet32_infopro, or localize it with timm_local.localize()")
    if args.initial_checkpoint:
        try:
            timm.models.load_checkpoint(model, args.initial_checkpoint)
        except RuntimeError as error:  # strict loading: names the missing / unexpected keys
            raise ValueError(f"--initial-checkpoint {args.initial_checkpoint} does not fit --model {args.model} "
                             f"{args.model_kwargs}: {str(error).splitlines()[0][:300]}") from None
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(accelerator.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def build_data(args: argparse.Namespace, accelerator: Accelerator, shard: Optional[tuple[int, int]] = None) -> Loaders:
    """This rank's train and eval loaders (they shard and place batches themselves; not ``prepare``d).

    ``shard``: ``(index, count)`` of this process's data shard (default: its rank of the processes); a
    pipelined run's stages read shard ``replica`` of D.

    With mixup / cutmix the last partial training batch is dropped, as timm's loader does: timm's ``Mixup``
    pairs each image with its mirror in the batch and needs an even batch size.
    """
    spec = get_dataset_spec(args.dataset)
    rank, world_size = shard if shard is not None else (accelerator.process_index, accelerator.num_processes)
    return build_loaders(
        spec.name, args.data_dir, args.batch_size, args.validation_batch_size, accelerator.device,
        max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples,
        rank=rank, world_size=world_size, seed=args.seed,
        channels_last=args.channels_last, workers=args.workers, drop_last=mixup_enabled(args),
        image_size=None if spec.in_memory else args.model_kwargs.get("img_size"))


def mixup_enabled(args: argparse.Namespace) -> bool:
    return args.mixup > 0 or args.cutmix > 0


def create_mixup(args: argparse.Namespace, model: LocalNet) -> Optional[Mixup]:
    """timm's ``Mixup`` for ``--mixup`` / ``--cutmix`` (None when both are 0), returning soft targets.

    Its own ``label_smoothing`` is 0: ``--smoothing`` is applied by every CE local loss to the soft targets
    (:meth:`~timm_local.local.context.LocalContext.cross_entropy`), which gives timm's mixed, smoothed target.
    The contrastive (SupCon) local loss needs class labels, so a model that has one is refused.
    """
    if not mixup_enabled(args):
        return None
    contrastive = [name for name, m in model.named_modules() if getattr(m, "loss_kind", None) == "contrast"]
    if contrastive:
        raise ValueError(f"--mixup/--cutmix give soft targets, which the contrastive (SupCon) local loss of "
                         f"{model.method.name} cannot take ({contrastive[0]}"
                         f"{f' and {len(contrastive) - 1} more' if len(contrastive) > 1 else ''}): add "
                         f"--model-kwargs local_loss=ce, or drop --mixup/--cutmix")
    if args.batch_size % 2:
        raise ValueError(f"--mixup/--cutmix pair every image with another of its batch: give an even -b "
                         f"(got {args.batch_size})")
    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                 switch_prob=args.mixup_switch_prob, mode=args.mixup_mode, label_smoothing=0.0,
                 num_classes=model.num_classes)


def create_model_ema(args: argparse.Namespace, model: LocalNet) -> Optional[ModelEmaV3]:
    """``ModelEmaV3`` of ``model.backbone`` (the aux nets are not evaluated, so not averaged) for ``--model-ema``."""
    return ModelEmaV3(model.backbone, decay=args.model_ema_decay) if args.model_ema else None


def measure_loader(loader: Iterable, num_batches: int, device: torch.device) -> Optional[float]:
    """Batches per second the training loader delivers on its own (augmentation included), or None.

    Times ``num_batches`` batches after 2 warm-up ones with the data package's ``benchmark_loader``.
    The loaders' randomness depends only on (seed, epoch, rank, batch), so this changes nothing in training.
    """
    if num_batches <= 0:
        return None
    result = benchmark_loader(itertools.islice(loader, num_batches + 2), epochs=1, warmup_batches=2, device=device)
    return result["batches_per_s"] if result["batches"] else None
