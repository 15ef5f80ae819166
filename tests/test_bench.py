"""Memory/speed harness and memory-balanced splits (issue 4: memory and speed)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from conftest import batch
from timm_local.bench import BenchConfig, SavedTensorMeter, cpu_allocation_peak, grid
from timm_local.bench.config import parse_method_spec
from timm_local.local.split import balanced_cuts, measure_module_costs

REPO = Path(__file__).resolve().parents[1]
RECORDED = ("command", "device_name", "torch", "timm", "timm_local", "date")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``python -m timm_local.bench --quick``, run once for the tests below."""
    out = tmp_path_factory.mktemp("bench") / "quick"
    done = subprocess.run([sys.executable, "-m", "timm_local.bench", "--quick", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout, json.loads(Path(f"{out}.json").read_text())


@pytest.mark.slow
def test_quick_run_writes_table_json_and_plot(quick_run):
    out, stdout, run = quick_run
    assert Path(f"{out}.png").stat().st_size > 10_000
    assert "| config |" in stdout and "e2e+gc" in stdout
    assert run["command"].startswith("python -m timm_local.bench --quick")
    labels = [r["label"] for r in run["results"]]
    assert labels[:2] == ["e2e", "e2e+gc"] and "infopro (balanced) K=4" in labels
    for result in run["results"]:
        assert "error" not in result
        for key in RECORDED:
            assert result[key], key
        assert result["config"]["precision"] == "fp32" and result["config"]["batch_size"] > 0
        for key in ("peak_alloc_mb", "saved_peak_mb", "rss_peak_mb", "rss_activation_mb", "step_time_s",
                    "cpu_time_per_step_s", "images_per_s", "memory_ratio", "time_ratio"):
            assert result[key] > 0, key
        assert result["rss_peak_mb"] > result["rss_activation_mb"]


@pytest.mark.slow
def test_interleaved_step_frees_memory_on_cpu(quick_run):
    """K=4 InfoPro holds well under 60% of E2E's memory, by every CPU measure (issue 4 acceptance)."""
    results = {r["label"]: r for r in quick_run[2]["results"]}
    infopro, gc = results["infopro (balanced) K=4"], results["e2e+gc"]
    assert infopro["memory_ratio"] < 0.6 and infopro["saved_ratio"] < 0.6 and infopro["rss_ratio"] < 0.6
    assert gc["memory_ratio"] < 0.6
    # the interleaved step sits at its floor: weights + optimizer state + gradients + the largest module
    floor = infopro["static_mb"] + infopro["saved_peak_mb"]
    assert floor <= infopro["peak_alloc_mb"] <= floor + 2 * 4 * infopro["num_params"] / 2**20


def test_grid_always_measures_both_baselines_first():
    configs = grid(["resnet32"], ["infopro:balanced", "man:paper@4", "dgl+gc@2"], [2, 8], [64], ["fp32", "bf16"])
    labels = [(c.precision, c.label) for c in configs]
    assert labels[:4] == [("fp32", "e2e"), ("fp32", "e2e+gc"), ("bf16", "e2e"), ("bf16", "e2e+gc")]
    assert ("fp32", "infopro (balanced) K=8") in labels and ("bf16", "man (paper) K=4") in labels
    assert ("fp32", "dgl +gc K=2") in labels and len(configs) == 2 * (2 + 2 + 1 + 1)
    assert parse_method_spec("infopro:measured+gc") == ("infopro", "measured", True)
    with pytest.raises(ValueError, match="k=1"):
        BenchConfig(method="e2e", k=4)


def test_time_budget_records_configurations_it_could_not_start_as_skipped():
    from timm_local.bench.cli import measure_grid

    configs = grid(["resnet32"], ["dgl"], [2], [4], ["fp32"], device="cpu")
    results = measure_grid(configs, rounds=1, in_process=True, timeout=60, time_budget=0)
    assert [r["label"] for r in results] == [c.label for c in configs]
    assert all(r["error"].startswith("skipped: the time budget") for r in results)


def test_saved_tensor_meter_counts_each_saved_storage_once():
    linear = torch.nn.Linear(256, 256)
    x = torch.randn(64, 256, requires_grad=True)
    meter = SavedTensorMeter(linear)
    with meter.measure():
        y = torch.relu(linear(x))  # saves x (64 KiB) and relu's output (64 KiB); the weight is excluded
        assert meter.live == meter.peak == 2 * 64 * 256 * 4
        y.sum().backward()
    del y
    assert meter.live == 0 and meter.peak == 2 * 64 * 256 * 4


def test_cpu_allocation_peak_replays_allocations_and_frees():
    def step():
        a = torch.ones(2**18)            # 1 MiB
        b = torch.ones(2**19)            # 2 MiB, peak 3 MiB
        del a, b
        c = torch.ones(2**18)            # 1 MiB again
        del c

    peak = cpu_allocation_peak(step, allocated_before=5)
    assert peak == 3 * 2**20 + 5


def test_measured_costs_predict_the_interleaved_step_peak():
    """The split's cost model is the step's saved-for-backward peak, module by module (no guesswork)."""
    model = timm.create_model("resnet32_infopro", num_local_modules=4, split="measured")
    layout = model._describe(model.backbone)
    costs = measure_module_costs(layout, model.method, model._probe, 10, model.mean, model.std)
    starts, ends = (0, *model.cuts), (*model.cuts, layout.num_blocks)
    predicted = max(costs.module_bytes(i, j) for i, j in zip(starts, ends))
    x, y = batch(n=16)
    meter = SavedTensorMeter(model)
    with meter.measure():
        model.local_step(x, y)
    assert abs(meter.peak / 16 - predicted) <= 0.03 * predicted


def test_measured_split_holds_less_than_the_papers_tables():
    """split='balanced' beyond InfoPro*'s K <= 4 tables (and 'measured' everywhere) beats the paper's splits."""
    model = timm.create_model("resnet110_infopro", num_local_modules=16, split="balanced")
    layout = model._describe(model.backbone)
    costs = measure_module_costs(layout, model.method, model._probe, 10, model.mean, model.std)

    def peak(cuts):
        return max(costs.module_bytes(i, j) for i, j in zip((0, *cuts), (*cuts, layout.num_blocks)))

    assert model.cuts == balanced_cuts(costs, 16) and model.split_kind == "balanced"
    for k in (3, 8, 16):
        cuts = balanced_cuts(costs, k)
        assert peak(cuts) <= 0.9 * peak(layout.paper_splits["paper"][k])
        assert peak(cuts) <= peak(layout.paper_splits["balanced"].get(k, cuts))
    assert balanced_cuts(costs, 4) == layout.paper_splits["balanced"][4]  # rediscovers InfoPro*'s K=4 table
