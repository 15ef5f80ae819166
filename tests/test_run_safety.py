"""Never lose or silently corrupt a run (issue 14): resume follows the flags, run folders are owned by one
live run and never overwritten, a full disk keeps summary.csv and the checkpoint consistent, and expected
errors are one line. Tiny synthetic CIFAR copies, one short epoch per run (CPU, offline, in-process).
"""
import csv
import errno
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from accelerate.state import AcceleratorState

from timm_local.data import write_synthetic_copy
from timm_local.pidlock import PidLock
from timm_local.train import parse_args, train
from timm_local.train.loop import main as train_main
from timm_local.train.optim import create_scheduler, infopro_cosine_lr
from timm_local.train.resume import ResumeError
from timm_local.train.run_folder import RunFolder, RunFolderError
from timm_local.validate import main as validate_main

pytestmark = pytest.mark.usefixtures("one_thread", "fresh_accelerate_state")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(write_synthetic_copy("cifar10", tmp_path_factory.mktemp("data") / "cifar10", num_train=32, num_eval=16))


def flags(tmp_path, data_dir, *extra, experiment="run", model=True):
    """train.py flags of a 1-epoch DGL K=2 run; ``model=False`` leaves --model/--model-kwargs to the checkpoint."""
    chosen = ["--model", "resnet32_dgl", "--model-kwargs", "num_local_modules=2"] if model else []
    return [*chosen, "--data-dir", data_dir, "--epochs", "1", "-b", "16", "--output", str(tmp_path),
            "--experiment", experiment, "--bench-loader-batches", "0", "--log-interval", "1", "--warmup-epochs", "0",
            *extra]


def run(tmp_path, data_dir, *extra, **kwargs):
    AcceleratorState._reset_state(reset_partial_state=True)
    return train(parse_args(flags(tmp_path, data_dir, *extra, **kwargs)))


class _Killed(Exception):
    pass


def kill_after_epoch(monkeypatch, epoch_to_die):
    """Make the run raise right after the checkpoint of ``epoch_to_die`` is written, as a kill would."""
    end_epoch = RunFolder.end_epoch

    def end_epoch_then_die(self, epoch, *args, **kwargs):
        end_epoch(self, epoch, *args, **kwargs)
        if epoch == epoch_to_die:
            raise _Killed

    monkeypatch.setattr(RunFolder, "end_epoch", end_epoch_then_die)


def error_line(capsys):
    """The last line on stderr (the progress bars write there too)."""
    return capsys.readouterr().err.strip().splitlines()[-1]


def summary_rows(folder):
    with open(folder / "summary.csv") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- 1. resume follows the resuming command's flags
def test_resume_schedule_follows_the_new_flags_and_says_which_changed(tmp_path, data_dir, monkeypatch, capsys):
    with monkeypatch.context() as patch:
        kill_after_epoch(patch, 0)
        with pytest.raises(_Killed):
            run(tmp_path, data_dir, "--epochs", "3", "--lr", "0.05")
    capsys.readouterr()
    last = str(tmp_path / "run" / "last.pth.tar")
    results = run(tmp_path, data_dir, "--epochs", "4", "--lr", "0.02", "--resume", last, model=False)

    printed = capsys.readouterr().out
    assert "--epochs 3 -> 4" in printed and "--lr 0.05 -> 0.02" in printed
    lrs = [float(r["lr"]) for r in summary_rows(tmp_path / "run")]
    assert lrs[0] == pytest.approx(infopro_cosine_lr(0, 0.05, 3, warmup_epochs=0))
    assert lrs[1:] == pytest.approx([infopro_cosine_lr(e, 0.02, 4, warmup_epochs=0) for e in (1, 2, 3)])
    assert results["resumes"] == [{"epoch": 1, "changed": {"lr": [0.05, 0.02], "epochs": [3, 4]}}]
    assert results["epochs"] == 4 and results["model"] == "resnet32_dgl"  # the model came from the checkpoint
    recorded = yaml.safe_load((tmp_path / "run" / "args.yaml").read_text())
    assert recorded["lr"] == 0.02 and recorded["epochs"] == 4


def test_resume_with_another_model_or_k_names_both(tmp_path, data_dir):
    run(tmp_path, data_dir, "--epochs", "1")
    last = str(tmp_path / "run" / "last.pth.tar")
    with pytest.raises(ResumeError, match=r"holds a resnet32_dgl with num_local_modules=2, but this command asks for "
                                          r"a resnet32_dgl with num_local_modules=3: drop --model"):
        run(tmp_path, data_dir, "--epochs", "2", "--resume", last, "--model-kwargs", "num_local_modules=3")


def test_epochs_below_those_done_is_refused_and_a_finished_run_is_left_alone(tmp_path, data_dir, capsys):
    run(tmp_path, data_dir, "--epochs", "2")
    folder = tmp_path / "run"
    before = {name: (folder / name).read_bytes() for name in ("results.json", "summary.csv", "last.pth.tar")}
    last = str(folder / "last.pth.tar")
    with pytest.raises(ResumeError, match=r"--epochs 1 is below the 2 epochs .* give --epochs 3 or more"):
        run(tmp_path, data_dir, "--epochs", "1", "--resume", last, model=False)
    capsys.readouterr()
    results = run(tmp_path, data_dir, "--epochs", "2", "--resume", last, model=False)
    assert "nothing to do" in capsys.readouterr().out
    assert results["epochs"] == 2
    assert {name: (folder / name).read_bytes() for name in before} == before


def test_lr_zero_trains_at_zero_and_the_warm_up_never_exceeds_lr():
    model = torch.nn.Linear(2, 2)
    for lr, sched, expected in ((0.0, "infopro_cosine", 0.0), (0.005, "infopro_cosine", 0.005), (0.8, "infopro_cosine", 0.01),
                                (0.0, "cosine", 0.0)):
        args = parse_args(["--lr", str(lr), "--sched", sched, "--warmup-epochs", "5", "--epochs", "10"])
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        create_scheduler(optimizer, args).step(0)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected if sched == "infopro_cosine" else
                                                                min(1e-5, lr)), (lr, sched)


# ---------------------------------------------------------------- 2. one live run per folder, never overwritten
def test_a_finished_run_is_never_overwritten(tmp_path, data_dir):
    run(tmp_path, data_dir)
    best = (tmp_path / "run" / "model_best.pth.tar").read_bytes()
    with pytest.raises(RunFolderError, match=r"already holds a run .*resume it with --resume .*last.pth.tar, or choose "
                                             r"another --experiment \(nothing was overwritten\)"):
        run(tmp_path, data_dir, "--lr", "0.5")
    assert (tmp_path / "run" / "model_best.pth.tar").read_bytes() == best
    assert len(summary_rows(tmp_path / "run")) == 1


def test_a_live_lock_is_respected_and_a_stale_one_taken_over(tmp_path, data_dir):
    folder = tmp_path / "run"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder / ".lock").write_text(f"{holder.pid}@{socket.gethostname()}\n")
        with pytest.raises(RunFolderError, match=rf"in use by the live run {holder.pid}@"):
            run(tmp_path, data_dir)
    finally:
        holder.kill()
        holder.wait()
    run(tmp_path, data_dir)  # its owner is dead now: the lock is stale
    assert len(summary_rows(folder)) == 1 and not (folder / ".lock").exists()  # released at the end


def test_of_two_processes_only_one_gets_the_lock(tmp_path):
    path = tmp_path / "run" / ".lock"
    assert PidLock(path).try_acquire() is None
    other = subprocess.run([sys.executable, "-c", "import sys; from timm_local.pidlock import PidLock; "
                            f"print(PidLock({str(path)!r}).try_acquire())"], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == f"{os.getpid()}@{socket.gethostname()}"


# ---------------------------------------------------------------- 3. a full disk
def full_disk_after(monkeypatch, good_writes):
    """Every checkpoint write after the first ``good_writes`` fails as on a full disk."""
    import timm_local.io

    calls = []
    write = timm_local.io.write_bytes

    def write_or_fail(f, data):
        calls.append(1)
        if len(calls) > good_writes:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(f, data)

    monkeypatch.setattr(timm_local.io, "write_bytes", write_or_fail)


def test_a_full_disk_keeps_the_previous_checkpoint_and_a_consistent_summary(tmp_path, data_dir, monkeypatch, capsys):
    full_disk_after(monkeypatch, good_writes=2)  # epoch 0: last + best; epoch 1's last.pth.tar fails
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(SystemExit) as stop:
        train_main(flags(tmp_path, data_dir, "--epochs", "2"))
    assert stop.value.code == 1
    error = error_line(capsys)
    last = tmp_path / "run" / "last.pth.tar"
    assert error.startswith(f"error: no space left on device at {last} — free some space")
    assert error.endswith(f"resume with --resume {last} (1 epoch(s) done)")
    assert [r["epoch"] for r in summary_rows(tmp_path / "run")] == ["0"]
    assert torch.load(last, weights_only=True)["epoch"] == 0
    assert not [name for name in os.listdir(tmp_path / "run") if name.endswith(".tmp")]


# ---------------------------------------------------------------- one-line errors
def test_ctrl_c_says_which_checkpoint_to_resume_from(tmp_path, data_dir, monkeypatch, capsys):
    import timm_local.train.loop as loop

    train_step, steps = loop.train_step, []

    def step_then_interrupt(*args, **kwargs):
        steps.append(1)
        if len(steps) > 2:  # epoch 0 has 2 steps (32 images, batch 16)
            raise KeyboardInterrupt
        return train_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step_then_interrupt)
    with pytest.raises(SystemExit) as stop:
        train_main(flags(tmp_path, data_dir, "--epochs", "2"))
    assert stop.value.code == 130
    last = tmp_path / "run" / "last.pth.tar"
    assert error_line(capsys) == (f"interrupted; the last checkpoint, written before this, is intact: "
                                               f"resume with --resume {last} (1 epoch(s) done)")


def test_a_nan_in_the_first_epoch_promises_no_checkpoint(tmp_path, data_dir, capsys):
    with pytest.raises(SystemExit) as stop:
        train_main(flags(tmp_path, data_dir, "--lr", "1e30", "--epochs", "2"))
    assert stop.value.code == 1
    message = error_line(capsys)
    assert message.startswith("error: training stopped: the local loss of module")
    assert message.endswith("no checkpoint was written (the first epoch had not finished): start the run again with a "
                            "lower --lr (or fix the model)")


def test_a_corrupt_checkpoint_names_the_intact_one(tmp_path, data_dir, capsys):
    run(tmp_path, data_dir)
    last = tmp_path / "run" / "last.pth.tar"
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(SystemExit) as stop:
        train_main(flags(tmp_path, data_dir, "--epochs", "2", "--resume", str(last), model=False))
    assert stop.value.code == 2
    message = error_line(capsys)
    assert message == (f"error: {last} is corrupt or not a checkpoint (RuntimeError while reading it); "
                       f"{tmp_path / 'run' / 'model_best.pth.tar'} is intact (1 epoch(s) done): use it instead")
    assert "weights_only" not in message


def test_validate_takes_the_model_from_the_checkpoint_and_names_a_mismatch(tmp_path, data_dir, capsys):
    results = run(tmp_path, data_dir)
    best = str(tmp_path / "run" / "model_best.pth.tar")
    common = ["--checkpoint", best, "--data-dir", data_dir, "--workers", "0"]
    assert validate_main(common)["top1"] == pytest.approx(results["top1_best"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        validate_main(["--model", "resnet32_dgl", "--model-kwargs", "num_local_modules=3", *common])
    assert stop.value.code == 2
    message = error_line(capsys)
    assert message.startswith(f"error: --checkpoint {best} was trained as resnet32_dgl with {{'num_local_modules': 2}}")
    assert message.endswith("leave out --model and --model-kwargs to take the checkpoint's")


@pytest.mark.parametrize("text,match", [
    ("epochs: 1.5\n", r"config key 'epochs' must be an integer, got 1.5"),
    ("lr: fast\n", r"config key 'lr' must be a number, got 'fast'"),
    ("channels_last: 'yes'\n", r"config key 'channels_last' must be true or false"),
    ("sched: cosin\n", r"config key 'sched' must be one of infopro_cosine, cosine"),
])
def test_config_values_of_the_wrong_type_name_the_key(tmp_path, text, match):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ValueError, match=match):
        parse_args(["--config", str(config)])
    assert parse_args(["--config", str(_write(tmp_path / "ok.yaml", "lr: 1e-4\nepochs: 3\n"))]).lr == 1e-4


def _write(path, text):
    path.write_text(text)
    return path


def test_bad_input_is_one_line_without_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train_main(["--resume", str(tmp_path / "missing.pth.tar")])
    assert stop.value.code == 2
    assert error_line(capsys) == f"error: {tmp_path / 'missing.pth.tar'}: no such checkpoint file"
    with pytest.raises(FileNotFoundError):  # --debug: the exception itself
        train_main(["--resume", str(tmp_path / "missing.pth.tar"), "--debug"])


# ---------------------------------------------------------------- mixed precision that does what it says
def test_auto_mixed_precision_picks_native_bf16_only_and_records_it(tmp_path, data_dir, monkeypatch):
    import timm_local.precision as precision

    for native, expected in ((True, "bf16"), (False, "no"), (None, "no")):
        monkeypatch.setattr(precision, "native_bf16", lambda device_type, native=native: native)
        assert precision.resolve_mixed_precision("auto", "cpu") == expected
        assert precision.resolve_mixed_precision("bf16", "cpu") == "bf16"  # an explicit choice is kept ...
        warned = precision.emulated_bf16_warning("bf16", "cpu")
        assert (warned is not None) == (native is False)  # ... with a warning where bf16 is emulated
        assert precision.emulated_bf16_warning("no", "cpu") is None
    monkeypatch.undo()

    results = run(tmp_path, data_dir, "--mixed-precision", "auto")
    expected = "bf16" if precision.native_bf16("cpu") else "no"
    assert results["mixed_precision"] == expected
    assert yaml.safe_load((tmp_path / "run" / "args.yaml").read_text())["mixed_precision"] == expected
