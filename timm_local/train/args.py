"""Command-line and YAML configuration of the trainer, timm-style (ECOSYSTEM.md §3.1).

Two stages, as timm's train.py: ``-c/--config file.yaml`` is parsed first and its keys (the
argparse *dest* names, ``batch_size``; ``batch-size`` is accepted too) become the parser's
defaults, so flags given on the command line still win. ``model_kwargs`` from the file and from
``--model-kwargs k=v ...`` are merged (the flags win key by key). A key the parser does not know is
an error that names the key and the closest valid ones, except the keys of a timm train.py
``args.yaml`` (:mod:`.timm_keys`): those at timm's default value are ignored, the others are named
together in one error line.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import os
from typing import Any, Optional, Sequence

import torch
import yaml

from .optim import WARMUP_START_LR
from .timm_keys import TIMM_TRAIN_DEFAULTS

TIMM_SCHEDULERS = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "wsd")
SCHEDULERS = ("infopro_cosine",) + TIMM_SCHEDULERS
DEFAULT_MODEL = "resnet32_infopro"
# where the warm-up starts when --warmup-lr is not given: the papers' fixed 0.01 (METHODS.md §7.1), timm's 1e-5
DEFAULT_WARMUP_LR = {"infopro_cosine": WARMUP_START_LR}
TIMM_WARMUP_LR = 1e-5


class ParseKwargs(argparse.Action):
    """``k=v`` pairs into a dict, values parsed with ``ast.literal_eval`` (plain strings when that fails).

    Like timm's ``ParseKwargs``, except that the pairs are merged into the current value (the
    config file's ``model_kwargs``) instead of replacing it.
    """

    def __call__(self, parser, namespace, values, option_string=None):
        kwargs = dict(getattr(namespace, self.dest, None) or {})
        for item in values:
            key, sep, value = item.partition("=")
            if not sep or not key:
                parser.error(f"{option_string} expects key=value pairs, got {item!r}")
            try:
                kwargs[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                kwargs[key] = value
        setattr(namespace, self.dest, kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The trainer's flags. Names follow timm's train.py wherever the meaning is the same."""
    parser = argparse.ArgumentParser(
        description="Train a timm_local model by supervised local learning (interleaved local modules, Accelerate).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, parents=[_config_parser()])
    group = parser.add_argument_group("Data")
    group.add_argument("--dataset", default="cifar10", help="cifar10, svhn, stl10 or imagenet")
    group.add_argument("--data-dir", default=None,
                       help="a local copy of the dataset's Hub layout (None: load the Hub id through the HF cache)")
    group.add_argument("--max-train-samples", type=int, default=None, help="use only the first N training images")
    group.add_argument("--max-eval-samples", type=int, default=None, help="evaluate on the first N test images")
    group.add_argument("-j", "--workers", type=int, default=4,
                       help="data loader processes (streamed datasets: ImageNet)")

    group = parser.add_argument_group("Model")
    group.add_argument("--model", default=None,
                       help=f"a timm_local model name (timm registry); default: the --resume checkpoint's, else "
                            f"{DEFAULT_MODEL}")
    group.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs, metavar="K=V",
                       help="keyword arguments of timm.create_model, e.g. num_local_modules=4 momentum=0.995 "
                            "(default: the --resume checkpoint's)")
    group.add_argument("--resume", default="",
                       help="resume from this checkpoint (e.g. <run>/last.pth.tar): weights, optimizer state, epoch and "
                            "RNG come from it, the schedule follows this command's flags")
    group.add_argument("-b", "--batch-size", type=int, default=128, help="training batch size per process")
    group.add_argument("-vb", "--validation-batch-size", type=int, default=None,
                       help="evaluation batch size per process (default: the training batch size)")
    group.add_argument("--channels-last", action="store_true", help="channels_last memory layout")
    group.add_argument("--grad-checkpointing", action="store_true", help="gradient checkpointing inside each module")
    group.add_argument("--torchcompile", nargs="?", const="inductor", default=None,
                       help="torch.compile every local module with this backend")
    # timm train.py's model flags: each one is a timm.create_model kwarg, merged into --model-kwargs (so the
    # checkpoint's model_kwargs rebuild the same model); the same key given both ways must agree
    group.add_argument("--num-classes", type=int, default=None,
                       help="classifier width, as timm (default: the dataset's class count); at least that count")
    group.add_argument("--img-size", type=int, default=None,
                       help="input size the model and its aux nets are built for (create_model img_size; the "
                            "streamed datasets also resize to it); default: the model's")
    group.add_argument("--in-chans", type=int, default=None,
                       help="input channels (create_model in_chans); the datasets are RGB, so only 3 trains")
    group.add_argument("--drop-path", type=float, default=None,
                       help="stochastic depth rate (create_model drop_path_rate); default: the model's")
    group.add_argument("--pretrained", action="store_true",
                       help="start from the model's pretrained weights (timm.create_model pretrained=True)")
    group.add_argument("--initial-checkpoint", default="",
                       help="start from this checkpoint's weights only, as timm (timm.models.load_checkpoint: "
                            "backbone-only files keep the fresh aux nets); not a resume")

    group = parser.add_argument_group("Optimizer and schedule (defaults: the papers' CIFAR recipe, METHODS.md §7.1)")
    group.add_argument("--opt", default="sgd", help="timm optimizer name ('sgd' = SGD with Nesterov momentum)")
    group.add_argument("--lr", type=float, default=None,
                       help="learning rate lr0 (default: --lr-base scaled to the global batch, timm's rule)")
    group.add_argument("--lr-base", type=float, default=0.2,
                       help="the lr at --lr-base-size images per optimizer step, used when --lr is not given "
                            "(0.2 at 256 is the papers' 0.1 at batch 128 and 0.8 at 1024)")
    group.add_argument("--lr-base-size", type=int, default=256, help="the global batch --lr-base is given for")
    group.add_argument("--lr-base-scale", default="", choices=("", "linear", "sqrt"),
                       help="how the lr follows the global batch; '' = timm's pick: sqrt for ada*/lamb, else linear")
    group.add_argument("--weight-decay", type=float, default=1e-4,
                       help="on every trainable parameter, aux nets included")
    group.add_argument("--momentum", type=float, default=0.9, help="optimizer momentum")
    group.add_argument("--sched", default="infopro_cosine", choices=SCHEDULERS,
                       help="'infopro_cosine' = the papers' per-epoch cosine with linear warm-up; others are timm's")
    group.add_argument("--epochs", type=int, default=160)
    group.add_argument("--warmup-epochs", type=int, default=10)
    group.add_argument("--warmup-lr", type=float, default=None,
                       help=f"the lr the warm-up starts from, never above --lr (default: the papers' "
                            f"{DEFAULT_WARMUP_LR['infopro_cosine']} for infopro_cosine, timm's {TIMM_WARMUP_LR} otherwise)")
    group.add_argument("--min-lr", type=float, default=0.0, help="timm schedulers only")
    group.add_argument("--clip-grad", type=float, default=None,
                       help="clip each local module's gradients (its own param group, its own norm) to this, after "
                            "every module's backward and before the optimizer step (fp16: after unscaling)")
    group.add_argument("--clip-mode", default="norm", choices=("norm", "value", "agc"),
                       help="timm's dispatch_clip_grad mode of --clip-grad")
    group.add_argument("--grad-accum-steps", type=int, default=1,
                       help="micro-batches whose gradients every local module accumulates (each loss divided by "
                            "their count, DDP all-reduce on the last only) before one optimizer step; the lr "
                            "schedule is per epoch")
    group.add_argument("--smoothing", type=float, default=0.0,
                       help="label smoothing of every cross-entropy local loss and of the final classifier (not of "
                            "SupCon or reconstruction losses); timm's default is 0.1, the papers' recipe 0")

    group = parser.add_argument_group("Augmentation and EMA (timm's)")
    group.add_argument("--mixup", type=float, default=0.0,
                       help="mixup alpha (timm.data.Mixup); > 0 enables it: every CE local loss trains on the soft "
                            "targets; refused for a model with a SupCon local loss")
    group.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (timm.data.Mixup); > 0 enables it")
    group.add_argument("--mixup-prob", type=float, default=1.0,
                       help="probability of applying mixup or cutmix to a batch")
    group.add_argument("--mixup-switch-prob", type=float, default=0.5,
                       help="probability of cutmix instead of mixup when both are enabled")
    group.add_argument("--mixup-mode", default="batch", choices=("batch", "pair", "elem"),
                       help="how mixup/cutmix parameters are drawn: per batch, pair or element")
    group.add_argument("--model-ema", action="store_true",
                       help="keep an EMA of the backbone (timm.utils.ModelEmaV3), updated after every optimizer "
                            "step; as timm, its eval metrics are the run's (summary.csv, model_best, plateau "
                            "schedule) and checkpoints hold it as state_dict_ema")
    group.add_argument("--model-ema-decay", type=float, default=0.9998, help="decay of --model-ema")

    group = parser.add_argument_group("Pipelined stages (docs/PIPELINE.md)")
    group.add_argument("--pipeline", type=int, default=None, metavar="S",
                       help="run the K local modules as S pipeline stages, one process each (S x D processes: each "
                            "stage data-parallel over D replicas); -b is then per replica; default: off")
    group.add_argument("--pipeline-cuts", type=int, nargs="+", default=None, metavar="C",
                       help="the first module of every stage after the first (S - 1 increasing indices in 1..K-1); "
                            "default: cuts balanced by each module's step time, measured on rank 0")
    group.add_argument("--pipeline-timeout", type=float, default=300.0,
                       help="seconds any wait for another stage (and any collective) may block before the run stops")
    group.add_argument("--pipeline-in-flight", type=int, default=2,
                       help="micro-batches a stage may have sent but the next stage not yet received (memory bound)")

    group = parser.add_argument_group("Run")
    group.add_argument("--threads", type=int, default=None,
                       help="CPU intra-op threads per process (default: OMP_NUM_THREADS if set, else the cores free "
                            "now: busy cores make several threads much slower than one; timm_local/train/threads.py)")
    group.add_argument("--seed", type=int, default=42)
    group.add_argument("--deterministic", action="store_true",
                       help="deterministic algorithms (needed for bit-exact resume on GPU)")
    group.add_argument("--mixed-precision", default=None, choices=("no", "bf16", "fp16", "auto"),
                       help="default: whatever `accelerate launch` / the Accelerate config says; 'auto': bf16 where it "
                            "is native (a bf16 GPU, a CPU with AVX512-BF16/AMX), else no")
    group.add_argument("--amp", action="store_true",
                       help="mixed precision, as timm's --amp: --amp-dtype, or by default bf16 where it is native "
                            "(bf16 GPU, AVX512-BF16/AMX CPU), else fp16 on a GPU; refused on a CPU without bf16")
    group.add_argument("--amp-dtype", default=None, choices=("float16", "bfloat16"),
                       help="the --amp dtype (timm's default is float16; ours picks as --amp says); needs --amp")
    group.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    group.add_argument("--device", default=None,
                       help="timm's --device: 'cpu' (= --cpu) or 'cuda' (refused where there is none); Accelerate "
                            "gives each process its GPU, so pick GPUs with CUDA_VISIBLE_DEVICES, not cuda:N")
    group.add_argument("--output", default="./output/train", help="parent folder of the run folders")
    group.add_argument("--experiment", default="", help="run folder name (default: <date>-<model>-k<K>-<dataset>)")
    group.add_argument("--log-interval", type=int, default=10,
                       help="steps between progress-bar updates and loss finiteness checks (one host sync each)")
    group.add_argument("--log-with", nargs="*", default=None, help="Accelerate trackers, e.g. tensorboard wandb")
    group.add_argument("--log-wandb", action="store_true", help="timm's flag: the same as --log-with wandb")
    group.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    group.add_argument("--bench-loader-batches", type=int, default=20,
                       help="batches read by the loader-alone benchmark before training (0: skip)")
    return parser


def _config_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-c", "--config", default="", metavar="FILE", help="YAML file of defaults (flags win)")
    return parser


def load_config(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read a YAML config into parser defaults, rejecting keys that are not parser destinations.

    A timm train.py key we have no flag for (:data:`~.timm_keys.TIMM_TRAIN_DEFAULTS`) is ignored when its
    value is timm's default; all those with another value are named in one error line. timm writes
    ``amp_dtype: float16`` also when ``amp`` is false; without ``amp`` that key is ignored.
    """
    with open(path) as f:
        config = yaml.safe_load(f) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values, got {type(config).__name__}")
    actions = {action.dest: action for action in parser._actions if action.dest not in ("help", "config")}
    valid = sorted(actions)
    values, unsupported = {}, []
    if not config.get("amp") and config.get("amp_dtype") == "float16":
        config = {k: v for k, v in config.items() if k != "amp_dtype"}
    for key, value in config.items():
        dest = str(key).replace("-", "_")
        if dest in TIMM_TRAIN_DEFAULTS and dest not in valid:
            if value != TIMM_TRAIN_DEFAULTS[dest]:
                unsupported.append(f"{key}={value!r}")
            continue
        if dest not in valid:
            close = difflib.get_close_matches(dest, valid, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"{path}: unknown config key {key!r}{hint} (valid keys: {', '.join(valid)})")
        values[dest] = _config_value(path, key, value, actions[dest])
    if unsupported:
        raise ValueError(f"{path}: {len(unsupported)} timm train.py key(s) are not supported by timm_local's train.py: "
                         f"{', '.join(unsupported)}; remove them or set them to timm's default (keys at timm's "
                         f"default are ignored)")
    return values


def _config_value(path: str, key: str, value: Any, action: argparse.Action) -> Any:
    """``value`` converted by the flag's own type and checked against its choices, as argparse does for flags.

    argparse applies neither to defaults, so without this ``epochs: 1.5`` would run as a float. YAML reads
    ``1e-4`` as a string, which ``float`` converts.
    """
    if action.nargs == 0 and action.const is True:  # a store_true flag
        if not isinstance(value, bool):
            raise ValueError(f"{path}: config key {key!r} must be true or false, got {value!r}")
        return value
    if value is None and action.default is not None and not action.required:
        raise ValueError(f"{path}: config key {key!r} is null, which timm_local's train.py cannot use: give a value "
                         f"or remove the key (default {action.default!r})")
    if value is None or action.type is None or isinstance(value, (list, dict)):
        converted = value
    elif isinstance(value, bool) or (action.type is int and isinstance(value, float)):
        converted = None
    else:
        try:
            converted = action.type(value if action.type is not int else str(value))
        except (TypeError, ValueError):
            converted = None
    if converted is None and value is not None:
        raise ValueError(f"{path}: config key {key!r} must be {_type_name(action.type)}, got {value!r}")
    if action.choices is not None and converted is not None and converted not in action.choices:
        raise ValueError(f"{path}: config key {key!r} must be one of {', '.join(map(str, action.choices))}, "
                         f"got {value!r}")
    return converted


def _type_name(kind: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string"}.get(kind, getattr(kind, "__name__", str(kind)))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``): config file first, then the flags over it."""
    config_args, remaining = _config_parser().parse_known_args(argv)
    parser = build_parser()
    if config_args.config:
        parser.set_defaults(**load_config(config_args.config, parser))
    args = parser.parse_args(remaining)
    for name in ("epochs", "batch_size", "log_interval", "grad_accum_steps", "lr_base_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    args.config = config_args.config
    args.model_kwargs = dict(args.model_kwargs or {})
    _merge_model_flags(args, parser)
    if args.log_wandb and "wandb" not in (args.log_with or []):
        args.log_with = list(args.log_with or []) + ["wandb"]
    if not 0.0 <= args.smoothing < 1.0:
        parser.error(f"--smoothing must be in [0, 1), got {args.smoothing}")
    if args.clip_grad is not None and args.clip_grad <= 0:
        parser.error(f"--clip-grad must be > 0, got {args.clip_grad} (leave it out to not clip)")
    if args.amp_dtype and not args.amp:
        parser.error(f"--amp-dtype {args.amp_dtype} needs --amp (or use --mixed-precision)")
    if args.amp and args.mixed_precision is not None:
        parser.error(f"--amp and --mixed-precision {args.mixed_precision} both choose the mixed precision: give one")
    if args.resume and (args.pretrained or args.initial_checkpoint):
        parser.error("--resume loads all weights from its checkpoint, so --pretrained / --initial-checkpoint would "
                     "have no effect: drop them (or drop --resume to start a new run from those weights)")
    if args.model is None and not args.resume:
        args.model = DEFAULT_MODEL  # when resuming, train() takes the checkpoint's
    if args.warmup_lr is None:
        args.warmup_lr = DEFAULT_WARMUP_LR.get(args.sched, TIMM_WARMUP_LR)
    _apply_device(args, parser)
    _check_pipeline(args, parser)
    if args.lr is None:
        args.lr = lr_from_base(args.lr_base, global_batch_size(args), args.lr_base_size, args.lr_base_scale, args.opt)
    if args.lr < 0 or args.warmup_lr < 0:
        parser.error(f"--lr and --warmup-lr must be >= 0, got {args.lr} and {args.warmup_lr}")
    return args


def global_batch_size(args: argparse.Namespace) -> int:
    """Images per optimizer step over all processes: batch × data-parallel replicas × ``--grad-accum-steps``.

    The replicas are the processes (``WORLD_SIZE``, set by the launchers), or with ``--pipeline S`` the
    processes of one stage (``WORLD_SIZE / S``): every stage steps on the same micro-batches."""
    replicas = int(os.environ.get("WORLD_SIZE", "1")) // (args.pipeline or 1)
    return args.batch_size * max(replicas, 1) * args.grad_accum_steps


# flags the pipelined loop does not run, and what to do instead (refused rather than silently ignored)
NOT_PIPELINED = {
    "grad_accum_steps": (lambda v: v != 1, "accumulation is not pipelined: raise -b (per replica) or add replicas"),
    "model_ema": (bool, "the stages hold only their own modules, so no process has the backbone to average"),
    "mixup": (lambda v: v > 0, "soft targets are not sent between stages"),
    "cutmix": (lambda v: v > 0, "soft targets are not sent between stages"),
    "torchcompile": (bool, "the stages run their modules uncompiled"),
    "log_with": (bool, "trackers are not fed by the pipelined loop; summary.csv holds every epoch"),
}


def _check_pipeline(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``--pipeline S``: S >= 1, the process count a multiple of S, and no flag the pipelined loop would ignore."""
    if args.pipeline is None:
        for flag in ("pipeline_cuts",):
            if getattr(args, flag) is not None:
                parser.error(f"--{flag.replace('_', '-')} needs --pipeline S (the stage count): add it")
        return
    if args.pipeline < 1:
        parser.error(f"--pipeline {args.pipeline}: give a number of stages >= 1 (leave it out to train without stages)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        parser.error(f"--pipeline {args.pipeline} in a single process: launch S x D processes, e.g. torchrun "
                     f"--nproc_per_node {max(args.pipeline, 2)} train.py ... --pipeline {max(args.pipeline, 2)} (or "
                     f"accelerate launch --multi_gpu --num_processes N), or drop --pipeline to train in this process")
    if world % args.pipeline:
        parser.error(f"--pipeline {args.pipeline} on {world} process(es): the process count must be a multiple of the "
                     f"stage count (S stages x D replicas); launch {args.pipeline} (or {2 * args.pipeline}, ...) "
                     f"processes, e.g. torchrun --nproc_per_node {args.pipeline} train.py ..., or change --pipeline")
    if args.pipeline_cuts is not None and len(args.pipeline_cuts) != args.pipeline - 1:
        parser.error(f"--pipeline-cuts {' '.join(map(str, args.pipeline_cuts))} makes {len(args.pipeline_cuts) + 1} "
                     f"stages but --pipeline asks for {args.pipeline}: give {args.pipeline - 1} module indices")
    if args.pipeline_timeout <= 0 or args.pipeline_in_flight < 1:
        parser.error(f"--pipeline-timeout must be > 0 and --pipeline-in-flight >= 1, got {args.pipeline_timeout} and "
                     f"{args.pipeline_in_flight}")
    for flag, (is_set, why) in NOT_PIPELINED.items():
        if is_set(getattr(args, flag)):
            parser.error(f"--{flag.replace('_', '-')} is not supported with --pipeline ({why}): drop it, or drop "
                         f"--pipeline")


def lr_from_base(lr_base: float, batch: int, base_size: int, scale: str, opt: str) -> float:
    """timm train.py's rule: lr = lr_base · r with r = batch / base_size ('linear') or √(batch / base_size) ('sqrt');
    ``scale=''`` picks sqrt for adaptive optimizers (names containing 'ada' or 'lamb'), else linear."""
    if not scale:
        scale = "sqrt" if any(name in opt.lower() for name in ("ada", "lamb")) else "linear"
    ratio = batch / base_size
    return lr_base * (ratio ** 0.5 if scale == "sqrt" else ratio)


def _apply_device(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """timm's ``--device``: 'cpu' sets ``--cpu``; 'cuda' needs a GPU; anything else is refused with the fix."""
    if args.device is None:
        return
    if args.device == "cpu":
        args.cpu = True
    elif args.device == "cuda":
        if args.cpu:
            parser.error("--device cuda and --cpu contradict each other: give one")
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA GPU is visible here; use --device cpu (or leave --device out)")
    elif args.device.startswith("cuda:"):
        parser.error(f"--device {args.device}: Accelerate places each process on its own GPU; choose the GPU with "
                     f"CUDA_VISIBLE_DEVICES={args.device[5:]} and --device cuda")
    else:
        parser.error(f"--device {args.device}: timm_local trains on 'cpu' or 'cuda'")


# timm train.py flag -> the timm.create_model kwarg it sets
MODEL_FLAGS = {"num_classes": "num_classes", "img_size": "img_size", "in_chans": "in_chans",
               "drop_path": "drop_path_rate"}


def _merge_model_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Put ``--num-classes`` / ``--img-size`` / ``--in-chans`` / ``--drop-path`` into ``args.model_kwargs``.

    A kwarg set both by its flag and by ``--model-kwargs`` (or the config's ``model_kwargs``) must have one value.
    """
    for flag, key in MODEL_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if key in args.model_kwargs and args.model_kwargs[key] != value:
            parser.error(f"--{flag.replace('_', '-')} {value} and --model-kwargs {key}={args.model_kwargs[key]} "
                         f"disagree: give one of them")
        args.model_kwargs[key] = value


def args_to_dict(args: argparse.Namespace) -> dict[str, Any]:
    """The resolved args as a plain dict (YAML- and ``torch.load(weights_only=True)``-safe values)."""
    return {k: _plain(v) for k, v in vars(args).items()}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
