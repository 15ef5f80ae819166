"""DDP on the CPU: ``torchrun --nproc_per_node 2`` (gloo, ``Accelerator(cpu=True)``), one training step.

After one :func:`timm_local.train.train_step` both ranks must hold identical weights, equal (to
float rounding) to a single-process step on the concatenated batch.

Why BatchNorm is frozen (eval mode) here: in train mode BN normalises with the statistics of the
batch each process sees, so a step on two batches of B is *not* the same computation as a step on
one batch of 2B; no correct DDP scheme can make them equal (SyncBN aside). With BN frozen every
loss below is a mean of per-sample terms (cross-entropy heads: DGL, MAN with base='dgl', MLAAN
with base='dgl'; no contrastive loss, which couples samples), so the mean over the two ranks'
gradients equals the gradient on the concatenated batch exactly, up to summation order.

Cases: per-module DDP wrappers (DGL, MAN incl. its momentum copies), and MLAAN, whose cascaded
losses reach into earlier modules and is therefore synced by the manual all-reduce. The last case
is a negative control: MLAAN forced through per-module DDP wrappers leaves module 0 (trained only
by cascaded gradient, METHODS.md §9 B12) different on the two ranks, which is why the trainer
does not do that.
"""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

CASES = {
    "dgl": ("resnet32_dgl", dict(num_local_modules=2)),
    "man": ("resnet32_man", dict(num_local_modules=3, base="dgl")),
    "mlaan": ("resnet32_mlaan", dict(num_local_modules=3, base="dgl")),
}
BATCH_PER_RANK = 4


def make_model_and_batch(name, kwargs, world_size):
    """The same model and global batch on every process (seeded); BN frozen as explained above."""
    import timm

    import timm_local  # noqa: F401

    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs)
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH_PER_RANK * world_size, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (BATCH_PER_RANK * world_size,), generator=g)
    return model, x, y


def one_step(accelerator, name, kwargs, world_size, rank, force_ddp_wrappers=False):
    from timm_local.train import parse_args, train_step
    from timm_local.train.distributed import GradientSync, prepare_local_modules
    from timm_local.train.optim import create_optimizer

    model, x, y = make_model_and_batch(name, kwargs, world_size)
    optimizer = create_optimizer(model, parse_args(["--lr", "0.1"]))
    if force_ddp_wrappers:
        *modules, optimizer = accelerator.prepare(*model.local_modules, optimizer)
        sync = GradientSync(model.local_modules, enabled=False)
    else:
        modules, optimizer, sync = prepare_local_modules(accelerator, model, optimizer)
    part = slice(rank * BATCH_PER_RANK, (rank + 1) * BATCH_PER_RANK)
    train_step(model, modules, optimizer, sync, accelerator, x[part], y[part])
    return {k: v.clone() for k, v in model.state_dict().items()}


def _worker(out_dir):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    assert world == 2 and accelerator.distributed_type.value == "MULTI_CPU"
    for case, (name, kwargs) in CASES.items():
        torch.save(one_step(accelerator, name, kwargs, world, rank), os.path.join(out_dir, f"{case}_{rank}.pt"))
    name, kwargs = CASES["mlaan"]
    torch.save(one_step(accelerator, name, kwargs, world, rank, force_ddp_wrappers=True),
               os.path.join(out_dir, f"mlaan_naive_{rank}.pt"))
    with open(os.path.join(out_dir, f"done_{rank}.json"), "w") as f:
        json.dump({"rank": rank}, f)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_outputs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), __file__, str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def single_process():
    """The same step in one process on the concatenated batch (no DDP)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from timm_local.train import parse_args, train_step
    from timm_local.train.distributed import prepare_local_modules
    from timm_local.train.optim import create_optimizer

    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=True)
    states = {}
    for case, (name, kwargs) in CASES.items():
        model, x, y = make_model_and_batch(name, kwargs, 2)
        optimizer = create_optimizer(model, parse_args(["--lr", "0.1"]))
        modules, optimizer, sync = prepare_local_modules(accelerator, model, optimizer)
        train_step(model, modules, optimizer, sync, accelerator, x, y)
        states[case] = model.state_dict()
    AcceleratorState._reset_state(reset_partial_state=True)
    return states


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.slow
def test_ranks_identical_and_equal_to_single_process(ddp_outputs, single_process, case):
    rank0 = torch.load(ddp_outputs / f"{case}_0.pt")
    rank1 = torch.load(ddp_outputs / f"{case}_1.pt")
    reference = single_process[case]
    changed = 0
    for key, value in reference.items():
        assert torch.equal(rank0[key], rank1[key]), f"{case}: {key} differs between ranks"
        if value.is_floating_point():
            torch.testing.assert_close(rank0[key], value, rtol=1e-5, atol=1e-6, msg=f"{case}: {key}")
            changed += 1
    assert changed


def test_per_module_ddp_wrappers_also_sync_mlaan(ddp_outputs, single_process):
    """MLAAN's interleaved step gives each parameter its whole gradient in one backward pass (local/cascade.py),
    so per-module DDP wrappers, which desynchronised the ranks when every cascade re-ran earlier modules, now
    agree with the single-process step too; the trainer keeps its one manual all-reduce (GradientSync)."""
    rank0 = torch.load(ddp_outputs / "mlaan_naive_0.pt")
    rank1 = torch.load(ddp_outputs / "mlaan_naive_1.pt")
    for key, value in single_process["mlaan"].items():
        assert torch.equal(rank0[key], rank1[key]), key
        if value.is_floating_point():
            torch.testing.assert_close(rank0[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_train_py_under_torchrun(tmp_path):
    """The whole trainer (run folder, checkpoint, evaluation reduce) on 2 CPU processes, MLAAN (manual sync)."""
    from timm_local.data import write_synthetic_copy

    data = write_synthetic_copy("cifar10", tmp_path / "data", num_train=32, num_eval=16)
    train_py = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), train_py, "--cpu", "--dataset", "cifar10", "--data-dir", str(data),
           "--model", "resnet32_mlaan", "--model-kwargs", "num_local_modules=3", "--epochs", "1", "-b", "8",
           "--output", str(tmp_path), "--experiment", "ddp"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["world_size"] == 2 and results["num_local_modules"] == 3
    assert torch.load(tmp_path / "ddp" / "last.pth.tar", weights_only=True)["epoch"] == 0


if __name__ == "__main__":
    _worker(sys.argv[1])
