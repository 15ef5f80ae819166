"""The pipeline benchmark runs end to end with tiny settings (not a timing test: nothing is compared)."""
import json

import pytest


@pytest.mark.slow
def test_pipeline_benchmark_smoke(tmp_path, monkeypatch):
    from timm_local.bench import pipeline

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "pipe.json"
    pipeline.main(["--arch", "resnet32", "--k", "4", "--steps", "2", "--warmup", "1", "--batch-size", "8",
                   "--rounds", "2", "--out", str(out)])
    run = json.loads(out.read_text())
    assert [r["mode"] for r in run["results"]] == ["sequential", "ddp", "pipeline"]
    assert all(r["images_per_s"] > 0 and len(r["rss_peak_mb_per_process"]) == r["processes"] for r in run["results"])
    # both rates; the tensor peak on top of each process's weights and optimizer state
    assert all(r["steady_images_per_s"] > 0 for r in run["results"])
    assert run["rounds"] == 2 and [len(r) for r in run["every_round"]] == [3, 3]
    assert all(r["steady_images_per_s"] in r["rounds_steady_images_per_s"] for r in run["results"])
    for r in run["results"]:
        assert all(peak > static > 0 for peak, static in zip(r["tensor_peak_mb_per_process"], r["static_mb_per_process"]))
    pipe = run["results"][-1]
    assert len(pipe["stages"]) == 2 and all(0 <= s["idle_fraction"] < 1 for s in pipe["stages"])
    assert len(pipe["module_costs"]) == 4 and run["command"].startswith("python -m timm_local.bench.pipeline")
    assert "device_name" in run and "torch" in run
    text = pipeline.table(run)
    assert "| pipeline | 2 |" in text and "x one process" in text and "busy_cpus_before" in run
    # each stage holds only its own modules' weights and optimizer state
    seq, pipe_static = run["results"][0]["static_mb_per_process"][0], pipe["static_mb_per_process"]
    assert max(pipe_static) < seq and sum(pipe_static) == pytest.approx(seq, rel=0.02)


def test_table_without_the_sequential_run_prints_no_ratios():
    from timm_local.bench.pipeline import table

    row = {"mode": "pipeline", "processes": 2, "images_per_s": 9.0, "steady_images_per_s": 10.0,
           "static_mb_per_process": [1.0, 4.0], "tensor_peak_mb_per_process": [13.0, 14.0],
           "rss_peak_mb_per_process": [783.0, 774.0], "plan": "stage 0: modules 0-1, stage 1: modules 2-3 (measured)",
           "cuts": [2], "module_costs": [{"seconds": t} for t in (0.2, 0.3, 0.25, 0.25)],
           "stages": [{"stage": 0, "modules": [0, 2], "busy_s": 1.0, "idle_s": 0.0, "wall_s": 1.0, "idle_fraction": 0.0},
                      {"stage": 1, "modules": [2, 4], "busy_s": 1.0, "idle_s": 0.0, "wall_s": 1.0, "idle_fraction": 0.0}]}
    text = table({"results": [row]})
    assert "| pipeline | 1 / 4 | 13 / 14 | – / – | 783 / 774 | – / – |" in text
    assert "| pipeline | 2 | 9.0 | – | – | 10.0 | – | – | 10.0 |" in text
    assert "stage times 0.5 / 0.5 s per micro-batch (measured): at most 2.00x one process" in text


def test_median_round_is_the_middle_steady_rate_with_every_round_attached():
    from timm_local.bench.pipeline import median_round

    rounds = [{"images_per_s": a, "steady_images_per_s": s} for a, s in [(9.0, 10.0), (7.0, 8.0), (11.0, 12.0), (1, 2)]]
    chosen = median_round(rounds)
    assert chosen["steady_images_per_s"] == 8.0 and chosen["images_per_s"] == 7.0
    assert chosen["rounds_steady_images_per_s"] == [10.0, 8.0, 12.0, 2]
    assert median_round(rounds[:3])["steady_images_per_s"] == 10.0


def test_split_argument_takes_a_name_or_block_cuts():
    from timm_local.bench.pipeline import _num_modules, parse_args

    assert parse_args(["--split", "7,18,32"]).split == [7, 18, 32]
    assert parse_args(["--split", "measured"]).split == "measured"
    assert _num_modules(None, [7, 18, 32]) == 4 and _num_modules(None, "balanced") == 4
    assert _num_modules(8, "balanced") == 8
    with pytest.raises(SystemExit, match="makes 4 local modules but --k is 8"):
        _num_modules(8, [7, 18, 32])
    with pytest.raises(SystemExit):
        parse_args(["--split", "7,x"])
