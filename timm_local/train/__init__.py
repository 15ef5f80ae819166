"""The Accelerate trainer: ``python train.py --config configs/cifar10/resnet32_man_k15_infopro.yaml`` (see the README, "Training").

Modules: :mod:`.args` (flags and YAML configs), :mod:`.optim` (optimizer, schedules),
:mod:`.distributed` (per-module preparation, DDP sync), :mod:`.checkpoint` (atomic, resumable
checkpoints), :mod:`.metrics` (loss monitor, evaluation), :mod:`.run_folder` (the run folder),
:mod:`.setup` (accelerator, model, data, resume), :mod:`.loop` (the loop itself) and :mod:`.pipelined`
(the loop of ``--pipeline S``: one process per stage of local modules, docs/PIPELINE.md §7).
"""
from .args import build_parser, parse_args
from .loop import main, train, train_step
from .metrics import NonFiniteLossError, evaluate

__all__ = ["NonFiniteLossError", "build_parser", "evaluate", "main", "parse_args", "train", "train_step"]
