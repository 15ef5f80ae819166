"""The throughput probe that sizes part 2: training steps/s of every run alone, and all at once.

Contract:
- :func:`probe_worker` (``python -m timm_local.evidence.probe '<json>'``) builds each requested model as
  train.py does (``timm.create_model(model, num_classes=10, **model_kwargs)``, channels_last, bf16
  autocast), runs the trainer's step (``local_step`` → ``momentum_update`` → SGD step → ``zero_grad``)
  on a fixed batch of the training batch size, and prints one marked JSON line: per run, the steps/s
  over ``seconds`` after ``warmup`` steps, and the wall-clock time (``time.time()``) at which it was
  ready; :func:`run_probe` turns that into ``ready_s``, the seconds from launching the process to ready
  (imports, model built, warm-up), which sizes the runs' start-up cost.
- With ``barrier`` (a folder and a count), each worker writes ``<barrier>/<name>`` when warmed up and
  waits (at most the barrier's ``timeout`` s) until ``count`` workers are ready, so concurrent workers time
  the same interval.
- :func:`run_probe`: phase ``solo`` (in the calling process, the runs one after another) and phase
  ``concurrent`` (one fresh process per run, all at once, behind a barrier). It returns
  ``{"solo": {name: result}, "concurrent": {name: result}, "wall_s": ...}``; a worker that fails
  raises RuntimeError with the end of its output.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

MARK = "PROBE_RESULT "


def _make_step(model, optimizer, x, y, precision: str, device: str):
    import torch

    def step() -> None:
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                            enabled=precision == "bf16"):
            model.local_step(x, y)
        model.momentum_update()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def _sync(device: str) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _wait_for(barrier: Optional[dict], name: str) -> bool:
    """Mark ``name`` ready and wait for the others; False if they were not all ready in time."""
    if not barrier:
        return True
    folder = Path(barrier["folder"])
    (folder / name).touch()
    deadline = time.monotonic() + barrier.get("timeout", 60.0)
    while len(list(folder.iterdir())) < barrier["count"]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def probe_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time each of ``spec['runs']`` (see module docstring); returns the result mapping."""
    import timm
    import torch

    import timm_local  # noqa: F401  (registers the models)
    from timm_local.bench.step import create_optimizer

    device, batch_size = spec["device"], spec["batch_size"]
    results = {}
    for run in spec["runs"]:
        torch.manual_seed(0)
        model = timm.create_model(run["model"], num_classes=10, **run["model_kwargs"])
        model.to(device=device, memory_format=torch.channels_last).train()
        optimizer = create_optimizer(model, device)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, 3, 32, 32, generator=g).to(device, memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch_size,), generator=g).to(device)
        step = _make_step(model, optimizer, x, y, spec["precision"], device)
        for _ in range(spec["warmup"]):
            step()
        _sync(device)
        ready_at = time.time()
        together = _wait_for(spec.get("barrier"), run["name"])
        steps, start = 0, time.perf_counter()
        while steps < 2 or time.perf_counter() - start < spec["seconds"]:
            step()
            steps += 1
            if steps % 5 == 0:
                _sync(device)
        _sync(device)
        elapsed = time.perf_counter() - start
        results[run["name"]] = {"steps_per_s": steps / elapsed, "steps": steps, "seconds": elapsed,
                                "ready_at": ready_at, "together": together}
        del model, optimizer, step, x, y
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()  # the solo phase runs in the caller, which must not keep the GPU's memory
    return results


def _worker_command(spec: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "timm_local.evidence.probe", json.dumps(spec)]


def _read_result(code: int, output: str, what: str) -> dict[str, Any]:
    for line in output.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    raise RuntimeError(f"the throughput probe ({what}) failed with exit code {code}: {output[-1500:]}")


def run_probe(runs: Sequence[dict[str, Any]], *, device: str, batch_size: int, precision: str = "bf16",
              solo_s: float, concurrent_s: float, warmup: int = 3, threads: Optional[int] = None,
              timeout: float = 120.0) -> dict[str, Any]:
    """Both phases for ``runs`` (``{"name", "model", "model_kwargs"}`` each); see the module docstring."""
    start = time.monotonic()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    base = {"device": device, "batch_size": batch_size, "precision": precision, "warmup": warmup}
    result = {"solo": probe_worker({**base, "runs": list(runs), "seconds": solo_s})}
    with tempfile.TemporaryDirectory(prefix="probe-barrier-") as folder:
        barrier = {"folder": folder, "count": len(runs), "timeout": timeout / 2}
        launched_at = time.time()
        workers = [subprocess.Popen(_worker_command({**base, "runs": [run], "seconds": concurrent_s,
                                                     "barrier": barrier}),
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                   for run in runs]
        outputs = []
        for worker in workers:
            try:
                out, _ = worker.communicate(timeout=max(1.0, timeout - (time.monotonic() - start)))
            except subprocess.TimeoutExpired:
                worker.kill()
                out, _ = worker.communicate()
            outputs.append((worker.returncode, out))
    result["concurrent"] = {}
    for code, out in outputs:
        result["concurrent"].update(_read_result(code, out, "concurrent"))
    for figures in result["concurrent"].values():
        figures["ready_s"] = figures["ready_at"] - launched_at
    result["wall_s"] = time.monotonic() - start
    return result


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m timm_local.evidence.probe '<spec as JSON>'``: print the result as one marked JSON line."""
    argv = sys.argv[1:] if argv is None else argv
    print(MARK + json.dumps(probe_worker(json.loads(argv[0]))), flush=True)


if __name__ == "__main__":
    main()
