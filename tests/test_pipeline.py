"""Pipelined local training (timm_local.pipeline, docs/PIPELINE.md) on CPU processes over gloo.

The distributed cases run this file as a worker (``python tests/test_pipeline.py <spec.json>``) in S × D local
processes started by :func:`timm_local.pipeline.launch.run_local_job` (not torchrun, which would SIGTERM the
other stages when one dies, hiding how they react). The reference is sequential ``local_step`` training of the
same model on the same batches in the test process: a pipelined DGL / InfoPro / MAN run must reach the same
weights (max abs diff ≤ 1e-6, fp32), BatchNorm in train mode.
"""
import json
import os
import signal
import sys
import time

import pytest
import torch

MODELS = {
    "dgl": ("resnet32_dgl", dict(num_local_modules=4)),
    "infopro": ("resnet32_infopro", dict(num_local_modules=4)),
    "man": ("resnet32_man", dict(num_local_modules=8)),
}
BATCH, STEPS, EPOCHS, LR = 8, 3, 2, 0.05
TIMEOUT_S = 10.0  # the stages' receive deadline in the failure cases
_START = time.monotonic()


def make_model(method):
    import timm

    import timm_local  # noqa: F401

    name, kwargs = MODELS[method]
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).train()


def make_optimizer(model):
    return torch.optim.SGD(model.local_param_groups(), lr=LR, momentum=0.9, nesterov=True, weight_decay=1e-4)


def epoch_batches(epoch, global_batch=BATCH, nan_at=None):
    """``STEPS`` fixed (x, y) batches of epoch ``epoch``; ``nan_at``: that 1-based global step's images are NaN."""
    g = torch.Generator().manual_seed(100 + epoch)
    batches = []
    for i in range(STEPS):
        x, y = torch.randn(global_batch, 3, 32, 32, generator=g), torch.randint(0, 10, (global_batch,), generator=g)
        if nan_at == epoch * STEPS + i + 1:
            x[0, 0, 0, 0] = float("nan")
        batches.append((x, y))
    return batches


def freeze_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def sequential(method, epochs=EPOCHS, global_batch=BATCH, frozen_bn=False):
    """The reference: sequential local_step training, the trainer's step order (local_step, EMA, optimizer step)."""
    model = make_model(method)
    if frozen_bn:
        freeze_bn(model)
    optimizer = make_optimizer(model)
    for epoch in range(epochs):
        for x, y in epoch_batches(epoch, global_batch):
            model.local_step(x, y)
            model.momentum_update()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return model.state_dict(), optimizer.state_dict()


# ---------------------------------------------------------------------------------------------- the worker
def _run_case(case, out_dir, rank):
    import torch.distributed as dist

    from timm_local.pipeline import create_stage

    model = make_model(case["method"])
    if case.get("frozen_bn"):
        freeze_bn(model)
    optimizer = make_optimizer(model)
    state = None
    if case.get("resume"):
        checkpoint = torch.load(case["resume"], weights_only=True)
        state = (checkpoint["state_dict"], checkpoint["optimizer"])
    global_batch = case.get("global_batch", BATCH)
    probe = epoch_batches(99)[0] if case.get("cuts") is None else None
    stage, _ = create_stage(model, optimizer, case["stages"], torch.device("cpu"), cuts=case.get("cuts"),
                            probe_batch=probe, state=state, timeout_s=case.get("timeout", 60.0))
    replicas, replica = stage.layout.replicas, stage.layout.replica
    per_replica = global_batch // replicas

    def on_step(step, losses):
        if case.get("kill_rank") == rank and step == case.get("kill_step"):
            os.kill(os.getpid(), signal.SIGKILL)

    for epoch in range(case.get("first_epoch", 0), EPOCHS):
        batches = [(x[replica * per_replica:(replica + 1) * per_replica], y[replica * per_replica:(replica + 1) * per_replica])
                   for x, y in epoch_batches(epoch, global_batch, case.get("nan_at"))]
        stats = stage.train_epoch(batches if stage.layout.is_first else None, on_step=on_step)
        assert stats.steps == STEPS and stats.wall_s >= stats.idle_s >= 0
        full = stage.gather_state()
        if full is not None and case.get("checkpoint_epoch") == epoch:
            torch.save({"state_dict": full[0], "optimizer": full[1], "epoch": epoch},
                       os.path.join(out_dir, f"{case['name']}_checkpoint.pt"))
    if full is not None:
        torch.save({"state_dict": full[0], "optimizer": full[1]}, os.path.join(out_dir, f"{case['name']}.pt"))
    totals = stage.evaluate(epoch_batches(50)[:2] if stage.layout.is_first else None)
    if totals is not None:
        with open(os.path.join(out_dir, f"{case['name']}_eval_{rank}.json"), "w") as f:
            json.dump(totals.tolist(), f)
    dist.barrier()


def _worker(spec_path):
    import datetime

    import torch.distributed as dist

    from timm_local.pipeline import PipelineError

    with open(spec_path) as f:
        spec = json.load(f)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank = dist.get_rank()
    try:
        for case in spec["cases"]:
            _run_case(case, spec["out"], rank)
    except PipelineError as error:
        print(f"PIPELINE_ERROR rank {rank} after {time.monotonic() - _START:.1f}s: {error}", file=sys.stderr, flush=True)
        os._exit(3)  # a failed pipeline does not wait for its peers to tear down the process group
    dist.destroy_process_group()


def launch(tmp_path, world_size, cases, timeout=300):
    from timm_local.pipeline.launch import run_local_job

    spec = tmp_path / f"spec_{len(list(tmp_path.iterdir()))}.json"
    spec.write_text(json.dumps({"out": str(tmp_path), "cases": cases}))
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    return run_local_job([sys.executable, __file__, str(spec)], world_size, timeout, env=env)


def assert_ok(results):
    for r in results:
        assert r.returncode == 0, f"rank {r.rank} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max(((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0)
               for k in a if a[k].is_floating_point())


def assert_same_weights(path, reference, method, tol=1e-6):
    """The saved pipelined state equals the reference (weights, buffers, optimizer momentum), and training moved it."""
    got = torch.load(path, weights_only=True)
    model_ref, optimizer_ref = reference
    assert max_diff(got["state_dict"], model_ref) <= tol
    momentum = {str(i): s["momentum_buffer"] for i, s in optimizer_ref["state"].items()}
    got_momentum = {str(i): s["momentum_buffer"] for i, s in got["optimizer"]["state"].items()}
    assert max_diff(got_momentum, momentum) <= tol
    initial = make_model(method).state_dict()
    assert max_diff(initial, model_ref) > 1e-3


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def two_stages(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe2")
    cases = [dict(name="dgl", method="dgl", stages=2, cuts=[2], checkpoint_epoch=0),
             dict(name="infopro", method="infopro", stages=2),  # the time-balanced plan, measured on rank 0
             dict(name="man", method="man", stages=2, cuts=[3])]
    assert_ok(launch(out, 2, cases))
    return out


@pytest.fixture(scope="module")
def three_stages(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe3")
    cases = [dict(name="dgl", method="dgl", stages=3, cuts=[1, 3]),
             dict(name="infopro", method="infopro", stages=3, cuts=[1, 2]),
             dict(name="man", method="man", stages=3)]
    assert_ok(launch(out, 3, cases))
    return out


@pytest.mark.parametrize("method", ["dgl", "infopro", "man"])
def test_two_stages_equal_sequential(two_stages, method):
    assert_same_weights(two_stages / f"{method}.pt", sequential(method), method)


@pytest.mark.parametrize("method", ["dgl", "infopro", "man"])
def test_three_stages_equal_sequential(three_stages, method):
    assert_same_weights(three_stages / f"{method}.pt", sequential(method), method)


if __name__ == "__main__":
    _worker(sys.argv[1])
