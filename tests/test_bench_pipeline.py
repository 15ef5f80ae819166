"""The pipeline benchmark runs end to end with tiny settings (not a timing test: nothing is compared)."""
import json

import pytest


@pytest.mark.slow
def test_pipeline_benchmark_smoke(tmp_path, monkeypatch):
    from timm_local.bench import pipeline

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "pipe.json"
    pipeline.main(["--arch", "resnet32", "--k", "4", "--steps", "2", "--warmup", "1", "--batch-size", "8",
                   "--out", str(out)])
    run = json.loads(out.read_text())
    assert [r["mode"] for r in run["results"]] == ["sequential", "ddp", "pipeline"]
    assert all(r["images_per_s"] > 0 and len(r["rss_peak_mb_per_process"]) == r["processes"] for r in run["results"])
    pipe = run["results"][-1]
    assert len(pipe["stages"]) == 2 and all(0 <= s["idle_fraction"] < 1 for s in pipe["stages"])
    assert len(pipe["module_costs"]) == 4 and run["command"].startswith("python -m timm_local.bench.pipeline")
    assert "device_name" in run and "torch" in run
    assert "| pipeline | 2 |" in pipeline.table(run)
