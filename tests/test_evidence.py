"""The prepared GPU evidence run (issue 11): its plan, sizing and packing, and the whole command as a CPU smoke."""
import json
import os
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import timm

import timm_local  # noqa: F401
from timm_local.bench.cli import build_grid, parse_args as bench_args
from timm_local.data import write_synthetic_copy
from timm_local.evidence import pack, plan
from timm_local.evidence.sizing import ProbedRun, choose_schedule
from timm_local.sweep import load_sweep

REPO = Path(__file__).resolve().parents[1]
MAX_FILES, MAX_FILE_BYTES = 8, 16 << 20  # what the device tool returns


def test_full_plan_is_the_issues_grid_and_every_model_exists():
    configs = [c for part in plan.bench_parts(smoke=False) for c in build_grid(bench_args(list(part.argv)))]
    assert len(configs) == 30 and all(c.device == "cuda" for c in configs)
    assert {c.model_name for c in configs} <= set(timm.list_models())
    r110 = [c for c in configs if c.arch == "resnet110"]
    assert {c.batch_size for c in r110} == {1024} and {c.precision for c in r110} == {"bf16", "fp32"}
    balanced = sorted(c.k for c in r110 if c.split == "balanced" and c.precision == "bf16")
    assert balanced == [2, 3, 4, 8, 16]
    assert sum(p.share for p in plan.bench_parts(smoke=False)) == pytest.approx(1.0)


def test_full_sweep_file_passes_the_sweep_runners_validation(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    recipe = plan.Recipe(12)
    path = tmp_path / "sweep.yaml"
    import yaml

    path.write_text(yaml.safe_dump(plan.sweep_file(plan.TRAIN_RUNS, recipe, "carry/cifar10-jpeg", tmp_path / "runs")))
    sweep = load_sweep(path)
    assert len(sweep.runs) == 9
    assert all(r.config["epochs"] == 12 and r.config["warmup_epochs"] == 1 and r.config["batch_size"] == 1024
               for r in sweep.runs)
    assert {r.hub_name for r in sweep.runs} >= {"resnet32_man.k15_gpu12e_cifar10", "resnet32_dgl.k8_gpu12e_cifar10"}
    paper = plan.Recipe(None).common("d")
    assert "epochs" not in paper and "warmup_epochs" not in paper  # the configs' own 160/400 and 10 stay


def _runs(solo, together, epochs=(160, 400)):
    return [ProbedRun(f"r{i}", e, s, t) for i, (e, s, t) in enumerate(zip(epochs, solo, together))]


def test_schedule_keeps_the_papers_epochs_when_they_fit():
    schedule = choose_schedule(_runs((100, 100), (60, 60)), steps_per_epoch=49, seconds=1e6, startup_s=10)
    assert schedule.epochs is None and schedule.fits


def test_schedule_runs_all_at_once_only_when_that_fits_more_epochs():
    # together each run keeps 60% of its solo rate: 2 runs at once beat one after the other
    pays = choose_schedule(_runs((10, 10), (6, 6)), steps_per_epoch=49, seconds=300, startup_s=10)
    assert pays.jobs == 2 and pays.mode == "concurrent"
    assert pays.epochs == int((300 - 10) / (49 / 6 * 1.15)) and pays.predicted_s <= 300
    # together each run keeps 40%: one at a time is faster
    no = choose_schedule(_runs((10, 10), (4, 4)), steps_per_epoch=49, seconds=300, startup_s=10)
    assert no.jobs == 1 and no.predicted_s <= 300


def test_schedule_runs_one_epoch_and_says_so_when_none_fits():
    schedule = choose_schedule(_runs((1, 1), (1, 1)), steps_per_epoch=49, seconds=30, startup_s=10)
    assert schedule.epochs == 1 and not schedule.fits and "not even one epoch" in schedule.reason
    with pytest.raises(ValueError, match="positive probe rates"):
        choose_schedule(_runs((0, 1), (1, 1)), steps_per_epoch=49, seconds=30, startup_s=10)


@pytest.mark.parametrize("count, volumes, left", [(6, 3, 0), (10, 4, 2)])
def test_pack_checkpoints_fills_at_most_four_volumes_and_reports_what_is_left_out(tmp_path, monkeypatch, count,
                                                                                  volumes, left):
    monkeypatch.setattr(pack, "MAX_FILE_BYTES", 3000)  # two 1000-byte items (+ 400 counted for headers) a volume
    monkeypatch.setattr(pack, "TAR_OVERHEAD", 400)
    items = []
    for i in range(count):
        f = tmp_path / f"c{i}.bin"
        f.write_bytes(os.urandom(1000))
        items.append((f, f"partial/c{i}.bin"))
    written, left_out = pack.pack_checkpoints(items, tmp_path)
    assert [p.name for p in written] == [f"checkpoints-{i + 1}.tar" for i in range(volumes)]
    assert left_out == [name for _, name in items[count - left:]] if left else left_out == []
    packed = [n for p in written for n in tarfile.open(p).getnames()]
    assert sorted(packed) == sorted(name for _, name in items[:count - left])


def test_bad_input_is_one_line_naming_the_fix(tmp_path):
    done = subprocess.run([sys.executable, "-m", "timm_local.evidence", str(tmp_path / "out"), "--smoke",
                           "--data-dir", str(tmp_path / "missing")], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "prepare_carry.sh" in lines[0]


@pytest.mark.timeout(400)
@pytest.mark.slow
def test_smoke_runs_every_part_and_returns_at_most_eight_files(tmp_path):
    data = write_synthetic_copy("cifar10", tmp_path / "cifar10", num_train=plan.SMOKE_TRAIN,
                                num_eval=plan.SMOKE_EVAL)
    out = tmp_path / "out"
    start, cpu = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(["bash", "benchmarks/gpu/run.sh", str(out), "--smoke", "--data-dir", str(data),
                           "--work-dir", str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True,
                          timeout=380, env=dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1"))
    wall, used = time.monotonic() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    files = sorted(out.iterdir())
    assert len(files) <= MAX_FILES and all(f.is_file() and f.stat().st_size <= MAX_FILE_BYTES for f in files)
    evidence = json.loads((out / "evidence.json").read_text())
    assert set(evidence["bench"]) == {p.name for p in plan.bench_parts(smoke=True)}
    assert all(b["exit_code"] == 0 for b in evidence["bench"].values())
    assert evidence["schedule"]["epochs"] >= 1
    assert all(r["state"] == "done" for r in evidence["runs"].values())
    assert set(evidence["exports"].values()) == {"ok"}
    with tarfile.open(out / "bench.tar.gz") as tar:
        names = tar.getnames()
    assert {f"bench/{p.name}.json" for p in plan.bench_parts(smoke=True)} <= set(names)
    with tarfile.open(out / "runs.tar.gz") as tar:
        assert {f"runs/{r.name}/summary.csv" for r in plan.train_runs(smoke=True)} <= set(tar.getnames())
    with tarfile.open(out / "checkpoints-1.tar") as tar:
        assert any(n.endswith("model.safetensors") for n in tar.getnames())
    print(f"smoke: {wall:.0f} s wall, {cpu_s:.0f} s CPU (all processes), load average {os.getloadavg()[0]:.1f}")
