"""``train.py --pipeline S`` (issue 15, trainer integration; docs/PIPELINE.md §6) on CPU processes over gloo.

train.py runs as 2 local processes started by :func:`timm_local.pipeline.launch.run_local_job` (as
tests/test_pipeline.py does: unlike torchrun it does not SIGTERM the other stages when one fails, so each
stage's own exit is what the test sees). InfoPro K=2 (its decoders need the image, which travels with the
activations), resnet32, 32 synthetic CIFAR-10 images, batch 16: 2 steps per epoch.

The reference is a single-process ``train()`` on the same data, seed and flags. With S = 2 stages and D = 1
replica, stage 0 reads the whole training set in the single-process order (data shard 0 of 1) and each module
sees the same batches with BatchNorm in train mode on the same batch statistics, so the weights, BatchNorm
buffers and optimizer momentum must be equal (to float rounding: 1e-6). With D > 1 they could not be
(each replica's BatchNorm sees its own shard; tests/test_ddp.py), which is why D = 1 here.
The lr is constant (``--sched step``, no warm-up): the papers' cosine has lr 0 in the last epoch, which would
hide a wrong update there.
"""
import json
import os
import shutil
import sys
import time

import pytest
import torch

from conftest import assert_ok, max_diff

from timm_local.data import write_synthetic_copy
from timm_local.pipeline.launch import run_local_job
from timm_local.train import parse_args, train

pytestmark = pytest.mark.usefixtures("one_thread", "fresh_accelerate_state")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(ROOT, "train.py")
MODEL_FLAGS = ["--model", "resnet32_infopro", "--model-kwargs", "num_local_modules=2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(write_synthetic_copy("cifar10", tmp_path_factory.mktemp("data") / "cifar10", num_train=32, num_eval=16))


def flags(out, data_dir, experiment, *extra):
    """One thread everywhere (the module-scoped runs start before the one_thread fixture): equal sums need it."""
    return ["--cpu", "--data-dir", data_dir, *MODEL_FLAGS, "--epochs", "1", "-b", "16", "--output", str(out),
            "--experiment", experiment, "--bench-loader-batches", "0", "--sched", "step", "--warmup-epochs", "0",
            "--lr", "0.05", "--threads", "1", *extra]


def launch(out, data_dir, experiment, *extra, world_size=2, timeout=240):
    command = [sys.executable, TRAIN_PY, *flags(out, data_dir, experiment, *extra)]
    return run_local_job(command, world_size, timeout, env={"OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT})


def summary_rows(folder):
    import csv

    with open(os.path.join(folder, "summary.csv")) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """A pipelined epoch, kept; the same run resumed for a 2nd epoch; the single-process run, resumed likewise."""
    out = tmp_path_factory.mktemp("runs")
    start = time.monotonic()
    first = launch(out, data_dir, "pipe", "--pipeline", "2")
    seconds = time.monotonic() - start
    assert_ok(first)
    shutil.copytree(out / "pipe", out / "pipe_epoch1")
    resumed = launch(out, data_dir, "pipe", "--pipeline", "2", "--epochs", "2", "--resume",
                     str(out / "pipe" / "last.pth.tar"))
    assert_ok(resumed)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    train(parse_args(flags(out, data_dir, "single")))
    shutil.copytree(out / "single", out / "single_epoch1")
    AcceleratorState._reset_state(reset_partial_state=True)
    train(parse_args(flags(out, data_dir, "single", "--epochs", "2", "--resume", str(out / "single" / "last.pth.tar"))))
    shutil.copytree(out / "pipe_epoch1", out / "pipe_then_single")  # a pipelined checkpoint, resumed in one process
    AcceleratorState._reset_state(reset_partial_state=True)
    train(parse_args(flags(out, data_dir, "pipe_then_single", "--epochs", "2", "--resume",
                           str(out / "pipe_then_single" / "last.pth.tar"))))
    return out, first, seconds


@pytest.mark.slow
def test_pipelined_run_folder_is_complete(runs):
    out, first, seconds = runs
    folder = out / "pipe_epoch1"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == \
        ["args.yaml", "last.pth.tar", "model_best.pth.tar", "results.json", "summary.csv"]
    results = json.loads((folder / "results.json").read_text())
    assert results["world_size"] == 2 and results["num_local_modules"] == 2
    entry = results["pipeline"]
    assert {k: entry[k] for k in ("stages", "replicas", "cuts")} == {"stages": 2, "replicas": 1, "cuts": [1]}
    assert len(entry["module_seconds"]) == 2 and entry["speedup_bound"] == \
        pytest.approx(sum(entry["module_seconds"]) / max(entry["module_seconds"]))
    assert results["num_params"] == json.loads((out / "single_epoch1" / "results.json").read_text())["num_params"]
    checkpoint = torch.load(folder / "last.pth.tar", weights_only=True)
    assert checkpoint["epoch"] == 0 and checkpoint["args"]["pipeline"] == 2 and len(checkpoint["rng_states"]) == 2
    assert "pipeline: stage 0: module 0, stage 1: module 1 (measured); stage times " in first[0].stdout
    assert f"at most {entry['speedup_bound']:.2f}x one process" in first[0].stdout
    assert "epoch 1/1: train losses" in first[0].stdout and seconds < 200


@pytest.mark.parametrize("epoch", [1, 2])
@pytest.mark.slow
def test_pipelined_weights_equal_the_single_process_run(runs, epoch):
    """Epoch 1: a pipelined run; epoch 2: it resumed from last.pth.tar, against the single-process run resumed
    the same way. Weights, BN buffers, optimizer momentum; the summary rows' losses and eval metrics."""
    out, _, _ = runs
    pipe_dir, single_dir = (out / "pipe_epoch1", out / "single_epoch1") if epoch == 1 else (out / "pipe", out / "single")
    pipe = torch.load(pipe_dir / "last.pth.tar", weights_only=True)
    single = torch.load(single_dir / "last.pth.tar", weights_only=True)
    assert list(pipe["state_dict"]) == list(single["state_dict"])  # an ordinary checkpoint, same layout
    assert max_diff(pipe["state_dict"], single["state_dict"]) <= 1e-6
    momentum = {str(i): s["momentum_buffer"] for i, s in single["optimizer"]["state"].items()}
    assert max_diff({str(i): s["momentum_buffer"] for i, s in pipe["optimizer"]["state"].items()}, momentum) <= 1e-6
    assert pipe["optimizer"]["param_groups"] == single["optimizer"]["param_groups"]
    rows, reference = summary_rows(pipe_dir), summary_rows(single_dir)
    assert len(rows) == len(reference) == epoch
    for row, ref in zip(rows, reference):
        for key in ("train_loss_m0", "train_loss_m1", "eval_loss", "eval_top1", "eval_top5", "lr"):
            assert float(row[key]) == pytest.approx(float(ref[key]), rel=1e-5, abs=1e-6), key
    start = torch.load(out / "pipe_epoch1" / "last.pth.tar", weights_only=True)["state_dict"]
    assert epoch == 1 or max_diff(start, pipe["state_dict"]) > 1e-4  # the 2nd epoch trained


@pytest.mark.slow
def test_a_pipelined_checkpoint_resumes_without_pipeline(runs):
    """The gathered state is the single-process layout: resumed by a single-process run, it continues exactly."""
    out, _, _ = runs
    resumed = torch.load(out / "pipe_then_single" / "last.pth.tar", weights_only=True)
    single = torch.load(out / "single" / "last.pth.tar", weights_only=True)
    assert resumed["epoch"] == 1 and max_diff(resumed["state_dict"], single["state_dict"]) <= 1e-6
    results = json.loads((out / "pipe_then_single" / "results.json").read_text())
    assert results["resumes"] == [{"epoch": 1, "changed": {"epochs": [1, 2], "pipeline": [2, None]}}]


@pytest.mark.slow
def test_a_pipelined_checkpoint_validates_and_exports_unchanged(runs, tmp_path, data_dir):
    from timm_local.hub.__main__ import main as hub_main
    from timm_local.validate import main as validate_main

    out, _, _ = runs
    results = json.loads((out / "pipe" / "results.json").read_text())
    metrics = validate_main(["--checkpoint", str(out / "pipe" / "model_best.pth.tar"), "--data-dir", data_dir,
                             "--workers", "0"])
    assert metrics["top1"] == pytest.approx(results["top1_best"])
    assert hub_main(["export", str(out / "pipe"), "--hub-dir", str(tmp_path)]) == 0
    assert any((p / "model.safetensors").is_file() for p in tmp_path.iterdir())


@pytest.mark.slow
def test_two_stages_two_replicas_equal_plain_ddp_on_two_processes(tmp_path, data_dir):
    """``torchrun --nproc_per_node 4 train.py --pipeline 2``: 2 stages x 2 replicas against 2-process DDP.

    Both give replica / rank d data shard d of 2 and average each module's gradients over the two; in both,
    each replica's BatchNorm normalises with its own shard's statistics and the checkpoint holds the first
    replica's running statistics, so the checkpoints must be equal (they are bit for bit here). The eval loss
    is not compared: DDP's rank 1 evaluates with its own running statistics, a pipeline's replicas with the
    stage's first replica's (broadcast after every step, as GradientSync does), i.e. the checkpoint's."""
    assert_ok(launch(tmp_path, data_dir, "s2d2", "--pipeline", "2", world_size=4, timeout=300))
    assert_ok(launch(tmp_path, data_dir, "ddp2", timeout=200))
    pipe = torch.load(tmp_path / "s2d2" / "last.pth.tar", weights_only=True)
    ddp = torch.load(tmp_path / "ddp2" / "last.pth.tar", weights_only=True)
    assert max_diff(pipe["state_dict"], ddp["state_dict"]) <= 1e-6
    (row,), (ref,) = summary_rows(tmp_path / "s2d2"), summary_rows(tmp_path / "ddp2")
    for key in ("train_loss_m0", "train_loss_m1", "eval_top1", "lr"):
        assert float(row[key]) == pytest.approx(float(ref[key]), rel=1e-6), key
    results = json.loads((tmp_path / "s2d2" / "results.json").read_text())
    assert results["pipeline"]["replicas"] == 2 and results["world_size"] == 4


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("extra,world,message", [
    (["--pipeline", "3"], "2", "--pipeline 3 on 2 process(es): the process count must be a multiple of the stage count"),
    (["--pipeline", "0"], "2", "--pipeline 0: give a number of stages >= 1"),
    (["--pipeline", "1"], "1", "--pipeline 1 in a single process: launch S x D processes"),
    (["--pipeline-cuts", "1"], "1", "--pipeline-cuts needs --pipeline S"),
    (["--pipeline", "2", "--pipeline-cuts", "1", "2"], "2", "makes 3 stages but --pipeline asks for 2: give 1 module"),
    (["--pipeline", "2", "--grad-accum-steps", "2"], "2", "--grad-accum-steps is not supported with --pipeline"),
    (["--pipeline", "2", "--model-ema"], "2", "--model-ema is not supported with --pipeline"),
    (["--pipeline", "2", "--mixup", "0.2"], "2", "--mixup is not supported with --pipeline"),
])
def test_bad_pipeline_flags_are_one_line_errors(tmp_path, data_dir, capsys, monkeypatch, extra, world, message):
    monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(SystemExit) as stop:
        parse_args(flags(tmp_path, data_dir, "bad", *extra))
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert message in lines[-1] and ": error: --" in lines[-1]  # argparse: "<prog>: error: ..."


def test_default_lr_follows_the_replicas_of_a_stage(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    common = [a for a in flags(tmp_path, data_dir, "lr") if a not in ("--lr", "0.05")]
    assert parse_args(common + ["--pipeline", "2"]).lr == pytest.approx(parse_args(common).lr / 2)


def test_fp16_is_refused_under_pipeline():
    from types import SimpleNamespace

    from timm_local.train.pipelined import check_pipeline_precision

    with pytest.raises(ValueError, match="--pipeline does not support fp16 mixed precision .*use --mixed-precision bf16"):
        check_pipeline_precision(SimpleNamespace(mixed_precision="fp16"))
    check_pipeline_precision(SimpleNamespace(mixed_precision="bf16"))


def test_a_plan_no_measurement_could_fix_is_refused_before_measuring():
    """rank 0 would otherwise measure first, and MLAAN's module ranges cannot be stepped on their own."""
    import timm

    from timm_local.pipeline.build import check_plan_possible

    mlaan = timm.create_model("resnet32_mlaan", num_local_modules=2)
    with pytest.raises(ValueError, match="mlaan's cascaded loss of module 1 spans modules 0..1"):
        check_plan_possible(mlaan, 2, None)
    check_plan_possible(mlaan, 1, None)
    with pytest.raises(ValueError, match="--pipeline 3 asks for 3 stages but the model has 2 local modules"):
        check_plan_possible(timm.create_model("resnet32_dgl", num_local_modules=2), 3, None)


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("extra,message", [
    (["--model-kwargs", "num_local_modules=1"],
     "error: --pipeline 2 asks for 2 stages but the model has 1 local modules, and each stage needs at least one: use "
     "--pipeline 1 or fewer, or more local modules (--model-kwargs num_local_modules=2)"),
    (["--model", "resnet32_mlaan"],
     "error: mlaan's cascaded loss of module 1 spans modules 0..1, across the stage boundary before module 1; a "
     "pipeline sends no gradient back to a previous stage and every boundary of this model is crossed by such a "
     "loss (laminae=2), so no --pipeline-cuts avoids it: train mlaan without --pipeline (data-parallel), or with "
     "--model-kwargs laminae=1"),
], ids=["more_stages_than_modules", "mlaan"])
@pytest.mark.slow
def test_a_plan_the_model_cannot_run_is_one_line_on_every_rank(tmp_path, data_dir, extra, message):
    results = launch(tmp_path, data_dir, "refused", "--pipeline", "2", *extra, timeout=120)
    for r in results:
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert error_lines(r) == [message]


@pytest.mark.slow
def test_a_nan_loss_stops_every_stage_in_one_line_naming_stage_module_and_step(tmp_path, data_dir):
    start = time.monotonic()
    results = launch(tmp_path, data_dir, "nan", "--pipeline", "2", "--lr", "1e30", "--pipeline-timeout", "30",
                     timeout=150)
    assert time.monotonic() - start < 150
    lines = {r.rank: error_lines(r) for r in results}
    assert all(r.returncode == 1 for r in results), [r.stderr[-2000:] for r in results]
    assert all("Traceback" not in r.stderr for r in results)
    for rank, got in lines.items():  # its own failure, or "stopped because" the other's (both may diverge at step 2)
        assert len(got) == 1 and got[0].startswith(f"error: training stopped: stage {rank} (rank {rank}, module {rank})")
        assert "the local loss of module " in got[0] and " at step 2 " in got[0], got
        assert got[0].endswith("no checkpoint was written (the first epoch had not finished): start the run again")
    assert any("stopped because" not in got[0] for got in lines.values())
