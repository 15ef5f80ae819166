"""The sweep runner: spec validation, the table, and kill-anywhere resume (real train.py processes, tiny data)."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import yaml

from timm_local.data import write_synthetic_copy
from timm_local.sweep import SweepRunner, load_sweep, read_status
from timm_local.sweep.spec import merge_configs

RUNS = [("e2e", "resnet32_e2e", 1), ("dgl", "resnet32_dgl", 2), ("greedy", "resnet32_greedy", 2)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(write_synthetic_copy("cifar10", tmp_path_factory.mktemp("data") / "cifar10", num_train=64, num_eval=16))


def write_sweep(path, data_dir, output, epochs=2):
    sweep = {
        "output": str(output),
        "common": {"dataset": "cifar10", "data_dir": data_dir, "epochs": epochs, "batch_size": 16, "lr": 0.05,
                   "sched": "cosine", "warmup_epochs": 0, "bench_loader_batches": 0, "log_interval": 2},
        "runs": [{"name": name, "args": {"model": model, "model_kwargs": {"num_local_modules": k}},
                  "hub_name": f"{model}.k{k}_test_cifar10"} for name, model, k in RUNS],
    }
    path.write_text(yaml.safe_dump(sweep))
    return path


def sweep_cli(sweep_file, *flags, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "timm_local.sweep", str(sweep_file), "--jobs", "2", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), **kwargs)


def final_weights(output):
    return {name: torch.load(output / name / "last.pth.tar", weights_only=True)["state_dict"] for name, _, _ in RUNS}


@pytest.mark.slow
def test_killed_and_restarted_sweep_ends_with_the_same_weights(tmp_path, data_dir):
    straight = tmp_path / "straight"
    process = sweep_cli(write_sweep(tmp_path / "a.yaml", data_dir, straight))
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out
    assert all(read_status(n, straight / n).state == "done" for n, _, _ in RUNS)

    killed = tmp_path / "killed"
    sweep_file = write_sweep(tmp_path / "b.yaml", data_dir, killed)
    process = sweep_cli(sweep_file)
    deadline = time.monotonic() + 300
    while not (killed / "e2e" / "last.pth.tar").is_file():  # kill once a run has finished its first epoch
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()[0]
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and its children, with no chance to clean up
    process.wait()
    states = {n: read_status(n, killed / n).state for n, _, _ in RUNS}
    assert "done" not in states.values() or set(states.values()) != {"done"}, states
    assert any(s == "partial" for s in states.values()), states

    process = sweep_cli(sweep_file)
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out
    assert "resuming after epoch" in out
    expected, got = final_weights(straight), final_weights(killed)
    for name in expected:
        assert expected[name].keys() == got[name].keys()
        assert all(torch.equal(expected[name][k], got[name][k]) for k in expected[name]), name

    logs = {n: (killed / "logs" / f"{n}.log").read_text() for n, _, _ in RUNS}
    process = sweep_cli(sweep_file)  # everything is done: nothing starts again
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0 and "starting" not in out and "resuming" not in out, out
    assert logs == {n: (killed / "logs" / f"{n}.log").read_text() for n, _, _ in RUNS}
    table = (killed / "sweep.md").read_text()
    assert table.count("| done |") == 3 and "2/2" in table


def test_spec_merges_config_common_and_args(tmp_path):
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump({"model": "resnet32_dgl", "epochs": 160, "model_kwargs": {"num_local_modules": 8,
                                                                                               "aux_config": "1c2f"}}))
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"common": {"epochs": 10, "batch-size": 64},
                                     "runs": [{"name": "a", "config": str(config),
                                               "args": {"model_kwargs": {"aux_config": "2c2f"}}}]}))
    spec = load_sweep(sweep, output=tmp_path / "out")
    assert spec.output == tmp_path / "out"
    assert spec.runs[0].config == {"model": "resnet32_dgl", "epochs": 10, "batch_size": 64,
                                   "model_kwargs": {"num_local_modules": 8, "aux_config": "2c2f"}}
    assert merge_configs({"model_kwargs": {"a": 1}}, {"model_kwargs": None}) == {"model_kwargs": {"a": 1}}


def test_runs_option_keeps_the_matching_runs_in_file_order(tmp_path, capsys):
    from timm_local.sweep import select_runs
    from timm_local.sweep.__main__ import main

    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"runs": [{"name": n} for n in ("r32_e2e", "r32_mlaan-k8", "r32_man-k8")]}))
    spec = load_sweep(sweep, output=tmp_path / "out")
    assert [r.name for r in select_runs(spec, ["r32_man*", "r32_e2e"]).runs] == ["r32_e2e", "r32_man-k8"]
    assert select_runs(spec, None) is spec
    with pytest.raises(ValueError, match=r"--runs r32_dgl\* matches no run of .*its runs are: r32_e2e, r32_mlaan-k8"):
        select_runs(spec, ["r32_e2e", "r32_dgl*"])
    assert main([str(sweep), "--output", str(tmp_path / "out"), "--runs", "*mlaan*", "--status"]) == 0
    table = capsys.readouterr().out
    assert "r32_mlaan-k8 | pending" in table and "r32_e2e" not in table and "r32_man" not in table
    assert main([str(sweep), "--runs", "nothing", "--status"]) == 2
    assert "error: --runs nothing matches no run" in capsys.readouterr().err


@pytest.mark.parametrize("sweep,message", [
    ({"runs": []}, "non-empty list"),
    ({"runs": [{"name": "a"}, {"name": "a"}]}, "used twice"),
    ({"runs": [{"name": "a/b"}]}, "folder name"),
    ({"runs": [{"name": "a", "args": {"bach_size": 3}}]}, "unknown train.py key"),
    ({"runs": [{"name": "a", "args": {"experiment": "x"}}]}, "set by the sweep"),
    ({"runs": [{"name": "a", "cfg": "x.yaml"}]}, "unknown key"),
])
def test_bad_sweep_files_fail_before_anything_starts(tmp_path, sweep, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    with pytest.raises(ValueError, match=message):
        load_sweep(path)


def test_a_run_owned_by_a_live_process_is_left_alone(tmp_path, data_dir):
    spec = load_sweep(write_sweep(tmp_path / "s.yaml", data_dir, tmp_path / "out"))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "timm_local.train"])
    try:
        while b"timm_local.train" not in open(f"/proc/{holder.pid}/cmdline", "rb").read():
            time.sleep(0.01)  # until the exec has happened
        lock = tmp_path / "out" / ".locks"
        lock.mkdir(parents=True)
        (lock / "e2e.pid").write_text(f"{holder.pid}@{socket.gethostname()}\n")
        runner = SweepRunner(spec, jobs=1, echo=lambda line: None)
        assert [s.state for s in runner.statuses()] == ["running", "pending", "pending"]
        holder.kill()
        holder.wait()
        assert [s.state for s in runner.statuses()] == ["pending", "pending", "pending"]  # stale lock
    finally:
        holder.kill()
