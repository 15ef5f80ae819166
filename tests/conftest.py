"""Shared fixtures: deterministic CPU runs, small batches."""
import pytest
import torch

import timm_local  # noqa: F401  (registers the models)


@pytest.fixture(autouse=True, scope="session")
def _timm_local_cache(tmp_path_factory):
    """The decoded-data cache (``$TIMM_LOCAL_CACHE``) in a temporary folder, not ~/.cache; subprocesses inherit it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIMM_LOCAL_CACHE", str(tmp_path_factory.mktemp("timm_local_cache")))
        yield


@pytest.fixture
def fresh_accelerate_state():
    """Each ``train()`` builds its own Accelerator; forget the process-wide state before and after a test."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread(monkeypatch):
    """One intra-op thread: faster for small CPU ops, and far faster on a shared (oversubscribed) machine.

    Also ``OMP_NUM_THREADS=1``, which ``train()`` run in this process honours (it would otherwise pick the
    free cores, timm_local/train/threads.py) and which subprocesses inherit, so that in-process and
    multi-process runs that must agree to 1e-6 sum in the same order.
    """
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(n: int = 4, size: int = 32, classes: int = 10, seed: int = 0):
    """A fixed random image batch and labels."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


def grads(model) -> dict:
    """Parameter name → a copy of its gradient, for parameters that have one."""
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_each_loss_reaches_only_its_modules(model, x, y) -> None:
    """Loss k gives gradient to local modules k − depth + 1 .. k only (depth = the method's cascade depth)."""
    owner = {id(p): i for i, m in enumerate(model.local_modules) for p in m.parameters()}
    depth = model.method.cascade_depth
    for index, module in enumerate(model.local_modules):
        if module.objective is None:
            continue
        model.zero_grad(set_to_none=True)
        _, losses = model.forward_local(x, y)
        losses[index].backward()
        reached = {owner[id(p)] for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert reached == set(range(max(0, index - depth + 1), index + 1)), (index, reached)


def assert_joint_equals_interleaved(joint, interleaved, x, y) -> None:
    """forward_local + one backward of the summed losses and local_step give the same gradients and losses."""
    _, losses = joint.forward_local(x, y)
    sum(losses).backward()
    out = interleaved.local_step(x, y)
    g_joint, g_inter = grads(joint), grads(interleaved)
    assert g_joint.keys() == g_inter.keys()
    assert max((g_joint[n] - g_inter[n]).abs().max().item() for n in g_joint) <= 1e-6
    assert all(torch.allclose(a.detach(), b, atol=1e-6) for a, b in zip(losses, out.losses))


def assert_aux_kept_and_block_copies_refreshed(fresh, loaded) -> None:
    """After loading backbone-only weights: aux nets equal a fresh model's (same seed), except block
    copies meant to start equal to their source, which now equal the loaded blocks."""
    from timm_local.methods.base import BlockCopies

    holders = [m for m in loaded.aux.modules() if isinstance(m, BlockCopies)]
    copies = {id(clone) for m in holders for clone, _ in m.copied_pairs()}
    copied = tuple(f"aux.{name}." for name, m in loaded.aux.named_modules() if id(m) in copies)
    kept = {k: v for k, v in fresh.state_dict().items() if k.startswith("aux.") and not k.startswith(copied)}
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in kept.items())
    for clone, source in (pair for m in holders for pair in m.copied_pairs()):
        assert all(torch.equal(v, source.state_dict()[k]) for k, v in clone.state_dict().items())


def assert_head_contract(model, x, features) -> None:
    """timm's head contract (ECOSYSTEM.md §1.7): pre-logits width, then reset_classifier(0) returns pooled
    features and reset_classifier(0, '') the unpooled map of ``forward_features`` (``features``)."""
    with torch.no_grad():
        assert model.forward_head(features, pre_logits=True).shape == (x.shape[0], model.head_hidden_size)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (x.shape[0], model.num_features)
    model.reset_classifier(0, "")
    with torch.no_grad():
        assert model(x).shape == features.shape


def assert_ok(results):
    """Every process of a multi-process job (``timm_local.pipeline.launch`` results) exited 0."""
    for r in results:
        assert r.returncode == 0, f"rank {r.rank} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"


def max_diff(a, b) -> float:
    """Largest absolute difference between two state dicts' floating tensors (same keys)."""
    assert a.keys() == b.keys()
    return max(((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0)
               for k in a if a[k].is_floating_point())
