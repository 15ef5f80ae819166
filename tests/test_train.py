"""The trainer end to end on tiny synthetic copies of every dataset layout (CPU, offline, in-process).

Each run is one short epoch of train.py's ``train()``; together they check the run-directory
contract (args.yaml, summary.csv, checkpoints readable by timm, results.json), resume, the
non-finite-loss stop and bf16 autocast on the CPU.
"""
import csv
import json
import math
import os

import pytest
import timm
import torch
import yaml
from accelerate.state import AcceleratorState

from timm_local.data import write_synthetic_copy
from timm_local.train import NonFiniteLossError, parse_args, train
from timm_local.train.outputs import summary_columns
from timm_local.validate import main as validate_main

pytestmark = pytest.mark.usefixtures("one_thread", "fresh_accelerate_state")

RESULT_KEYS = {"model", "model_kwargs", "dataset", "num_local_modules", "epochs", "top1_final", "top5_final", "top1_best",
               "best_epoch", "eval_loss_final", "train_images_per_sec", "peak_memory_mb", "wall_time_s", "num_params",
               "device", "torch", "timm", "timm_local", "accelerate", "command", "date"}
ARGS_KEYS = {"model", "model_kwargs", "dataset", "data_dir", "epochs", "batch_size", "lr", "opt", "weight_decay",
             "momentum", "sched", "warmup_epochs", "seed", "mixed_precision"}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Synthetic Hub-layout copies: 48 train / 16 eval images (ImageNet at 64 px, 24 / 8)."""
    root = tmp_path_factory.mktemp("data")
    sizes = {"cifar10": (48, 16), "svhn": (48, 16), "stl10": (48, 16), "imagenet": (24, 8)}
    return {name: str(write_synthetic_copy(name, root / name, num_train=n, num_eval=m)) for name, (n, m) in sizes.items()}


def run_train(tmp_path, data_dir, *flags, experiment="run", model="resnet32_dgl", k=2):
    args = parse_args(["--data-dir", data_dir, "--model", model, "--model-kwargs", f"num_local_modules={k}",
                       "--epochs", "1", "-b", "16", "--output", str(tmp_path), "--experiment", experiment,
                       "--bench-loader-batches", "1", "--log-interval", "2", *flags])
    return train(args), tmp_path / experiment


def check_run_folder(folder, k):
    assert {"args.yaml", "summary.csv", "last.pth.tar", "model_best.pth.tar", "results.json"} <= set(os.listdir(folder))
    args = yaml.safe_load((folder / "args.yaml").read_text())
    assert ARGS_KEYS <= set(args)
    with open(folder / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == summary_columns(k)
    assert all(math.isfinite(float(v)) for v in rows[-1].values())
    results = json.loads((folder / "results.json").read_text())
    assert RESULT_KEYS <= set(results)
    checkpoint = torch.load(folder / "last.pth.tar", weights_only=True)  # plain values only
    assert {"epoch", "arch", "state_dict", "optimizer", "scheduler", "args", "model_kwargs", "metric"} <= set(checkpoint)
    assert checkpoint["version"] == 2 and isinstance(checkpoint["args"], dict)
    return rows, results, checkpoint


@pytest.mark.parametrize("dataset,kwargs", [
    ("cifar10", []),
    ("svhn", []),
    ("stl10", ["img_size=96"]),
    ("imagenet", ["img_size=64", "num_classes=1000"]),
])
def test_one_epoch_every_dataset(tmp_path, synthetic, dataset, kwargs):
    flags = ["--dataset", dataset, "--workers", "0"]
    if kwargs:
        flags += ["--model-kwargs", *kwargs]
    results, folder = run_train(tmp_path, synthetic[dataset], *flags)
    rows, results, checkpoint = check_run_folder(folder, k=2)
    assert len(rows) == 1 and results["dataset"] == dataset and results["num_local_modules"] == 2
    model = timm.create_model(checkpoint["arch"], **checkpoint["model_kwargs"])
    timm.models.load_checkpoint(model, str(folder / "model_best.pth.tar"))  # timm reads it (weights_only)

    AcceleratorState._reset_state(reset_partial_state=True)
    validated = validate_main(["--model", "resnet32_dgl", "--checkpoint", str(folder / "model_best.pth.tar"),
                               "--dataset", dataset, "--data-dir", synthetic[dataset], "--workers", "0"])
    assert validated["top1"] == pytest.approx(results["top1_best"])
    assert validated["loss"] == pytest.approx(results["eval_loss_final"], rel=1e-5)


def test_bf16_autocast_on_cpu_and_tensorboard(tmp_path, synthetic):
    results, folder = run_train(tmp_path, synthetic["cifar10"], "--dataset", "cifar10", "--mixed-precision", "bf16",
                                "--log-with", "tensorboard", model="resnet32_man")
    assert results["mixed_precision"] == "bf16" and math.isfinite(results["eval_loss_final"])
    assert any(name.startswith("events.out.tfevents") for _, _, files in os.walk(folder) for name in files)


def test_fp16_on_cpu_is_a_clear_error(tmp_path, synthetic):
    with pytest.raises(ValueError, match="fp16 mixed precision needs a GPU"):
        run_train(tmp_path, synthetic["cifar10"], "--dataset", "cifar10", "--mixed-precision", "fp16")


class _Killed(Exception):
    pass


def test_resume_matches_uninterrupted_run(tmp_path, synthetic, monkeypatch):
    """2 epochs straight vs. 1 epoch, killed right after its checkpoint, then ``--resume``: identical weights.

    MAN (momentum copies in the state dict) with the papers' warm-up schedule; CPU kernels are deterministic.
    """
    flags = ["--dataset", "cifar10", "--epochs", "2", "--warmup-epochs", "1", "--lr", "0.05"]
    straight, straight_dir = run_train(tmp_path, synthetic["cifar10"], *flags, experiment="straight", model="resnet32_man")

    from timm_local.train.run_folder import RunFolder
    end_epoch = RunFolder.end_epoch

    def end_epoch_then_die(self, epoch, *args, **kwargs):
        end_epoch(self, epoch, *args, **kwargs)
        raise _Killed  # as if the process were killed right after the epoch-0 checkpoint was written

    AcceleratorState._reset_state(reset_partial_state=True)
    with monkeypatch.context() as patch:
        patch.setattr(RunFolder, "end_epoch", end_epoch_then_die)
        with pytest.raises(_Killed):
            run_train(tmp_path, synthetic["cifar10"], *flags, experiment="killed", model="resnet32_man")
    AcceleratorState._reset_state(reset_partial_state=True)
    resumed, resumed_dir = run_train(tmp_path, synthetic["cifar10"], *flags, "--resume",
                                     str(tmp_path / "killed" / "last.pth.tar"), experiment="killed",
                                     model="resnet32_man")

    a = torch.load(straight_dir / "last.pth.tar", weights_only=True)
    b = torch.load(resumed_dir / "last.pth.tar", weights_only=True)
    assert a["epoch"] == b["epoch"] == 1
    assert any(k.startswith("aux.") and "momentum" in k for k in a["state_dict"])
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    with open(resumed_dir / "summary.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1"]
    assert resumed["top1_final"] == straight["top1_final"]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, synthetic):
    """lr0 = 1e30 with a 2-epoch warm-up: epoch 0 trains at the warm-up start lr (0.01), epoch 1 blows up."""
    with pytest.raises(NonFiniteLossError, match=r"module \d+ is (nan|inf|-inf) at epoch 1, step \d+"):
        run_train(tmp_path, synthetic["cifar10"], "--dataset", "cifar10", "--epochs", "3", "--warmup-epochs", "2",
                  "--lr", "1e30", "--log-interval", "1")
    checkpoint = torch.load(tmp_path / "run" / "last.pth.tar", weights_only=True)
    assert checkpoint["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())


def test_infopro_cosine_schedule():
    """METHODS.md §7.1 with e = epoch + 1: linear blend from 0.01 over 10 warm-up epochs, then cosine, 0 at the end."""
    from timm_local.train.optim import InfoProCosineScheduler, infopro_cosine_lr

    lr0, epochs = 0.8, 160
    assert infopro_cosine_lr(0, lr0, epochs) == pytest.approx(0.01)
    e = 10
    assert infopro_cosine_lr(e - 1, lr0, epochs) == pytest.approx(
        0.5 * lr0 * (1 + math.cos(math.pi * e / epochs)) * 0.9 + 0.01 * 0.1)
    e = 11
    assert infopro_cosine_lr(e - 1, lr0, epochs) == pytest.approx(0.5 * lr0 * (1 + math.cos(math.pi * e / epochs)))
    assert infopro_cosine_lr(epochs - 1, lr0, epochs) == pytest.approx(0.0, abs=1e-12)
    assert infopro_cosine_lr(0, lr0, 4, warmup_epochs=0) == pytest.approx(0.5 * lr0 * (1 + math.cos(math.pi / 4)))

    model = timm.create_model("resnet32_dgl", num_local_modules=3)
    optimizer = torch.optim.SGD(model.local_param_groups(), lr=lr0)
    scheduler = InfoProCosineScheduler(optimizer, epochs)
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(0.01)] * 3
    scheduler.step(20)
    assert {g["lr"] for g in optimizer.param_groups} == {infopro_cosine_lr(20, lr0, epochs)}


def test_optimizer_is_nesterov_sgd_with_one_group_per_module():
    from timm_local.train.optim import create_optimizer

    model = timm.create_model("resnet32_man", num_local_modules=5)
    optimizer = create_optimizer(model, parse_args([]))
    assert len(optimizer.param_groups) == 5
    assert all(g["nesterov"] and g["momentum"] == 0.9 and g["weight_decay"] == 1e-4 for g in optimizer.param_groups)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == trainable


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED"])
def test_fsdp_and_deepspeed_are_refused(kind):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from timm_local.train.distributed import check_distributed_type

    with pytest.raises(ValueError, match="accelerate launch --multi_gpu"):
        check_distributed_type(SimpleNamespace(distributed_type=getattr(DistributedType, kind)))


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from timm_local.io import atomic_save
    from timm_local.train.checkpoint import capture_rng_states, restore_rng_states

    atomic_save({"rng_states": [capture_rng_states()]}, str(tmp_path / "c.pth.tar"))
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_states(torch.load(tmp_path / "c.pth.tar", weights_only=True)["rng_states"][0])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws
    assert os.listdir(tmp_path) == ["c.pth.tar"]  # no temporary file left behind
