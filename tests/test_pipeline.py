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

from conftest import assert_ok, max_diff

# The stages run one thread each (_worker); the sequential references in this process must too, or kernels
# sum in another order and SGD grows the difference past 1e-6 (2e-3 after 6 steps with 2 threads).
pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = {
    "dgl": ("resnet32_dgl", dict(num_local_modules=4)),
    "infopro": ("resnet32_infopro", dict(num_local_modules=4)),
    "man": ("resnet32_man", dict(num_local_modules=8)),
}
BATCH, STEPS, EPOCHS, LR = 8, 3, 2, 0.05
FROZEN_BN_LR = 0.002  # without batch statistics ResNet-32 diverges at LR within these steps
TIMEOUT_S = 10.0  # the stages' receive deadline in the failure cases
_START = time.monotonic()


def make_model(method):
    import timm

    import timm_local  # noqa: F401

    name, kwargs = MODELS[method]
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).train()


def make_optimizer(model, lr=LR):
    return torch.optim.SGD(model.local_param_groups(), lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4)


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


def sequential(method, epochs=EPOCHS, global_batch=BATCH, frozen_bn=False, lr=LR):
    """The reference: sequential local_step training, the trainer's step order (local_step, EMA, optimizer step)."""
    model = make_model(method)
    if frozen_bn:
        freeze_bn(model)
    optimizer = make_optimizer(model, lr)
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
    optimizer = make_optimizer(model, case.get("lr", LR))
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
@pytest.mark.slow
def test_two_stages_equal_sequential(two_stages, method):
    assert_same_weights(two_stages / f"{method}.pt", sequential(method), method)


@pytest.mark.parametrize("method", ["dgl", "infopro", "man"])
@pytest.mark.slow
def test_three_stages_equal_sequential(three_stages, method):
    assert_same_weights(three_stages / f"{method}.pt", sequential(method), method)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """4 processes: 2 stages × 2 replicas, then 1 stage × 4 replicas, on the same global batches (BN frozen)."""
    out = tmp_path_factory.mktemp("replicas")
    common = dict(method="dgl", frozen_bn=True, global_batch=16, lr=FROZEN_BN_LR)
    assert_ok(launch(out, 4, [dict(name="s2d2", stages=2, cuts=[2], **common),
                              dict(name="s1d4", stages=1, cuts=[], **common)]))
    return out


@pytest.mark.slow
def test_two_stages_two_replicas_equal_one_stage_four_replicas(replicas):
    """With BN frozen every DGL loss is a mean of per-sample CE, so the replicas' averaged gradient is the global
    batch's (tests/test_ddp.py explains why BN in train mode cannot match across batch splits).
    Splitting a batch differently changes the order of the sums, so they agree to float rounding, not bit for
    bit; without batch statistics the network amplifies it over the steps (max abs diff ~5e-6 on updates of
    ~3e-2), hence atol 1e-5 here where test_ddp.py's single step needs 1e-6."""
    s2d2 = torch.load(replicas / "s2d2.pt", weights_only=True)["state_dict"]
    s1d4 = torch.load(replicas / "s1d4.pt", weights_only=True)["state_dict"]
    reference, _ = sequential("dgl", global_batch=16, frozen_bn=True, lr=FROZEN_BN_LR)
    for key, value in reference.items():
        torch.testing.assert_close(s2d2[key], s1d4[key], rtol=1e-5, atol=1e-5, msg=key)
        torch.testing.assert_close(s2d2[key], value, rtol=1e-5, atol=1e-5, msg=key)


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """Stage 1 (rank 1) is SIGKILLed in epoch 2, after the checkpoint of epoch 1; then a run resumes from it."""
    out = tmp_path_factory.mktemp("killed")
    start = time.monotonic()
    results = launch(out, 2, [dict(name="dgl", method="dgl", stages=2, cuts=[2], checkpoint_epoch=0, kill_rank=1,
                                   kill_step=STEPS + 2, timeout=TIMEOUT_S)])
    elapsed = time.monotonic() - start
    resumed = launch(out, 2, [dict(name="resumed", method="dgl", stages=2, cuts=[2], first_epoch=1,
                                   resume=str(out / "dgl_checkpoint.pt"))])
    return results, elapsed, resumed, out


@pytest.mark.slow
def test_killed_stage_stops_the_others_with_a_clear_error(killed):
    results, elapsed, _, _ = killed
    assert results[1].returncode == -signal.SIGKILL
    assert results[0].returncode == 3, results[0].stderr[-3000:]
    line = [x for x in results[0].stderr.splitlines() if x.startswith("PIPELINE_ERROR")][0]
    assert "stage 0 (rank 0, modules 0-1)" in line and "stage 1 (rank 1)" in line and "crashed or was killed" in line
    assert elapsed < 60 + TIMEOUT_S


@pytest.mark.slow
def test_resume_after_a_kill_equals_the_uninterrupted_run(killed, two_stages):
    _, _, resumed, out = killed
    assert_ok(resumed)
    got = torch.load(out / "resumed.pt", weights_only=True)["state_dict"]
    uninterrupted = torch.load(two_stages / "dgl.pt", weights_only=True)["state_dict"]
    assert max_diff(got, uninterrupted) <= 1e-6


@pytest.mark.slow
def test_nan_stops_every_stage_naming_stage_module_and_step(tmp_path):
    results = launch(tmp_path, 3, [dict(name="nan", method="dgl", stages=3, cuts=[1, 3], nan_at=2, timeout=TIMEOUT_S)])
    lines = {r.rank: [x for x in r.stderr.splitlines() if x.startswith("PIPELINE_ERROR")] for r in results}
    assert all(r.returncode == 3 for r in results), [r.stderr[-2000:] for r in results]
    assert "stage 0 (rank 0, module 0): the local loss of module 0 is nan at step 2" in lines[0][0]
    for rank in (1, 2):
        assert f"stage {rank} (rank {rank}," in lines[rank][0] and "stopped because stage 0" in lines[rank][0]
        assert "module 0 is nan at step 2" in lines[rank][0]


@pytest.mark.slow
def test_evaluation_runs_stage_by_stage(two_stages):
    """The last stage's totals equal the plain forward of the final weights on the same batches."""
    totals = json.loads((two_stages / "dgl_eval_1.json").read_text())
    model = make_model("dgl")
    model.load_state_dict(torch.load(two_stages / "dgl.pt", weights_only=True)["state_dict"])
    model.eval()
    loss, hits, count = 0.0, 0, 0
    with torch.no_grad():
        for x, y in epoch_batches(50)[:2]:
            logits = model(x)
            loss += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
            hits += int((logits.argmax(-1) == y).sum())
            count += y.shape[0]
    assert totals[3] == count and totals[1] == hits and abs(totals[0] - loss) < 1e-4


# ---------------------------------------------------------------------------------------------- in one process
def test_local_step_range_chained_equals_local_step():
    from conftest import batch, grads

    x, y = batch(4)
    whole, parts = make_model("infopro"), make_model("infopro")
    out = whole.local_step(x, y)
    h = x
    for start, stop in ((0, 1), (1, 3), (3, 4)):
        part = parts.local_step_range(h, x, y, start, stop)
        h = part.logits
    assert torch.equal(h, out.logits)
    g_whole, g_parts = grads(whole), grads(parts)
    assert g_whole.keys() == g_parts.keys() and all(torch.equal(g_whole[k], g_parts[k]) for k in g_whole)
    whole.eval()
    with torch.no_grad():
        chained = whole.forward_range(whole.forward_range(x, 0, 2), 2, 4)
        assert torch.equal(chained, whole(x))


def test_balanced_plan_minimises_the_slowest_stage():
    from timm_local.pipeline import balanced_plan

    plan = balanced_plan([1.0, 1.0, 1.0, 3.0], 2)
    assert plan.cuts == (3,) and plan.describe() == "stage 0: modules 0-2, stage 1: module 3 (measured)"
    assert balanced_plan([2.0, 1.0, 1.0, 2.0], 2).cuts == (2,)
    assert balanced_plan([1.0] * 6, 3).cuts == (2, 4)


def test_plan_balance_is_the_slowest_stage_against_the_sum():
    from timm_local.pipeline import balanced_plan

    seconds = [0.5, 0.6, 0.7, 0.9]
    plan = balanced_plan(seconds, 2)
    assert plan.cuts == (2,) and plan.stage_seconds(seconds) == pytest.approx([1.1, 1.6])
    assert plan.speedup_bound(seconds) == pytest.approx(2.7 / 1.6)
    assert plan.balance_text(seconds) == "stage times 1.1 / 1.6 s per micro-batch (measured): at most 1.69x one process"


@pytest.mark.parametrize("cuts, stages, message", [
    ([1, 2], 2, "makes 3 stages but --pipeline asks for 2: give 1 module indices"),
    ([3, 2], 3, "give strictly increasing module indices in 1..3"),
    ([4], 2, "give strictly increasing module indices in 1..3"),
    ([], 5, "--pipeline 5 asks for 5 stages but the model has 4 local modules"),
])
def test_explicit_plan_errors_name_the_fix(cuts, stages, message):
    from timm_local.pipeline import explicit_plan

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        explicit_plan(cuts, stages, 4)


def test_mlaan_cascade_across_a_stage_boundary_is_refused():
    import timm

    from timm_local.pipeline import explicit_plan, resolve_plan

    model = timm.create_model("resnet32_mlaan", num_local_modules=4)
    with pytest.raises(ValueError, match="cascaded loss of module 2 spans modules 1..2, across the stage boundary "
                                         "before module 2.*without --pipeline"):
        resolve_plan(model, 2, [2], None)
    assert explicit_plan([], 1, 4).num_stages == 1
    resolve_plan(model, 1, None, None)  # one stage holds every cascade


def test_process_layout():
    from timm_local.pipeline import process_layout

    layout = process_layout(2, 4, 3)
    assert (layout.stage, layout.replica, layout.prev_rank, layout.next_rank, layout.writer_rank) == (1, 1, 1, None, 2)
    with pytest.raises(ValueError, match="multiple of the stage count"):
        process_layout(3, 4, 0)


def test_measure_module_costs_leaves_the_model_alone():
    from conftest import batch

    from timm_local.pipeline import measure_module_costs

    model = make_model("dgl")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    costs = measure_module_costs(model, *batch(4), repeats=1)
    assert len(costs) == 4 and all(c.seconds > 0 and c.saved_bytes > 0 and c.weight_bytes > 0 for c in costs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state()) and all(p.grad is None for p in model.parameters())


if __name__ == "__main__":
    _worker(sys.argv[1])
