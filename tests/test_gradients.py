"""Gradient barriers, joint == interleaved, K = 1 == E2E (issue: timm_local core); MLAAN's shared forward (issue 12)."""
import copy

import pytest
import timm
import torch
import torch.nn.functional as F

from conftest import assert_each_loss_reaches_only_its_modules, assert_joint_equals_interleaved, batch, grads
from timm_local.local.context import LocalContext

# Weights that make every aux loss non-zero, so isolation can see each loss's reach.
ALL_ON = dict(recon_weights=(1.0, 1.0), task_weights=(1.0, 1.0))
SLOW = pytest.mark.slow  # one block per module: every loss's reach checked module by module, minutes on a CPU
CASES = [
    ("resnet32_greedy", 4, {}),
    ("resnet32_dgl", 4, {}),
    ("resnet32_dgl", 8, {"local_loss": "contrast"}),
    ("resnet32_infopro", 4, ALL_ON),
    pytest.param("resnet32_infopro", 16, ALL_ON, marks=SLOW),
    ("resnet32_infopro", 4, dict(ALL_ON, local_loss="ce", split="balanced")),
    ("resnet32_man", 4, ALL_ON),
    pytest.param("resnet32_man", 15, dict(ALL_ON, base="dgl", weight_schedule="stage"), marks=SLOW),
    ("resnet32_mlaan", 4, {}),
    ("resnet32_mlaan", 8, {"laminae": 3, "base": "infopro", **ALL_ON}),
    pytest.param("resnet32_mlaan", 15, {"final_loss": "cascade", "ema_update": "last"}, marks=SLOW),
]


@pytest.mark.parametrize("name,k,kwargs", CASES)
def test_every_parameter_belongs_to_exactly_one_local_module(name, k, kwargs):
    model = timm.create_model(name, num_local_modules=k, **kwargs)
    counts = {}
    for module in model.local_modules:
        for p in module.parameters():
            counts[id(p)] = counts.get(id(p), 0) + 1
    assert all(c == 1 for c in counts.values())
    assert set(counts) == {id(p) for p in model.parameters()}
    trainable = [p for g in model.local_param_groups() for p in g["params"]]
    assert len(trainable) == len({id(p) for p in trainable}) == sum(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name,k,kwargs", CASES)
def test_each_local_loss_reaches_only_its_modules(name, k, kwargs):
    assert_each_loss_reaches_only_its_modules(timm.create_model(name, num_local_modules=k, **kwargs), *batch())


@pytest.mark.parametrize("name,k,kwargs", CASES)
def test_joint_and_interleaved_give_the_same_gradients_and_step(name, k, kwargs):
    torch.manual_seed(1)
    joint = timm.create_model(name, num_local_modules=k, **kwargs)
    interleaved = copy.deepcopy(joint)
    assert_joint_equals_interleaved(joint, interleaved, *batch())
    for model in (joint, interleaved):
        optimizer = torch.optim.SGD(model.local_param_groups(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
        model.momentum_update()
        optimizer.step()
    state_joint, state_inter = joint.state_dict(), interleaved.state_dict()
    assert max((state_joint[n].float() - state_inter[n].float()).abs().max().item() for n in state_joint) <= 1e-6


@pytest.mark.parametrize("name", ["resnet32_infopro", "resnet32_man", "resnet32_mlaan", "resnet32_dgl"])
def test_one_module_is_exactly_end_to_end(name):
    local = timm.create_model(name, num_local_modules=1)
    reference = copy.deepcopy(local.backbone)
    x, y = batch()
    local.local_step(x, y)
    F.cross_entropy(reference(x), y).backward()
    expected = {n: p.grad for n, p in reference.named_parameters()}
    got = grads(local)
    assert got.keys() == expected.keys()
    for n in got:
        torch.testing.assert_close(got[n], expected[n], rtol=0, atol=1e-6)


def test_e2e_model_is_plain_backprop():
    model = timm.create_model("resnet32_e2e")
    assert model.num_local_modules == 1
    x, y = batch()
    out = model.local_step(x, y)
    assert torch.allclose(out.losses[0], F.cross_entropy(out.logits, y))


def test_custom_backward_is_called_once_per_local_loss():
    model = timm.create_model("resnet32_dgl", num_local_modules=4)
    calls = []
    model.local_step(*batch(), backward=lambda loss: (calls.append(loss.detach()), loss.backward()))
    assert len(calls) == 4


def test_local_step_keeps_no_graph():
    model = timm.create_model("resnet32_man", num_local_modules=5)
    out = model.local_step(*batch())
    assert not out.logits.requires_grad and all(not loss.requires_grad for loss in out.losses)


def mlaan_step_by_reevaluation(model, x, y):
    """The MLAAN step as timm_local computed it before the shared forward (issue 12, item 3), kept here as
    the reference: module k runs on its detached input (the independent path), and every cascaded loss
    re-runs modules f..k, f = max(0, k − L + 1), from the stored detached input of module f; each local loss
    is back-propagated at once. Module 0's stored input is the image, so the stem runs in both passes."""
    modules, depth = model.local_modules, model.method.cascade_depth
    ctx = LocalContext(image=x, target=y, mean=model.mean, std=model.std)
    inputs, h, last = {}, x, len(modules) - 1
    for k, module in enumerate(modules):
        inputs[k] = h
        objective = module.objective
        if objective is None:
            with torch.no_grad():
                h = module.body(h)
            continue
        out = module.body(h)
        z = inputs[objective.first]
        for j in range(objective.first, k + 1):
            z = modules[j].body(z)
        if k < last:
            loss = objective.cascade_weight * objective.cascaded(z, ctx)
            loss = loss + objective.independent_weight * objective.independent(out, ctx)
        else:
            loss = objective.cascade_weight * F.cross_entropy(z, y)
            if objective.independent_weight is not None:
                loss = loss + objective.independent_weight * F.cross_entropy(out, y)
        loss.backward()
        h = out.detach()


STEM_STATS = ("bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked")


@pytest.mark.parametrize("k,kwargs", [
    (4, {}),
    (8, {"laminae": 3, "base": "infopro", **ALL_ON}),
    (15, {"final_loss": "cascade", "ema_update": "last"}),
])
def test_mlaan_shared_forward_matches_the_reevaluating_step(k, kwargs, one_thread):
    """Same gradients (1e-6) and, after an optimizer step, the same weights and BatchNorm statistics; only
    the stem's statistics differ (one update instead of the old two, see test_methods)."""
    torch.manual_seed(2)
    new = timm.create_model("resnet32_mlaan", num_local_modules=k, **kwargs)
    old = copy.deepcopy(new)
    x, y = batch(8, seed=5)
    mlaan_step_by_reevaluation(old, x, y)
    new.local_step(x, y)
    g_old, g_new = grads(old), grads(new)
    assert g_old.keys() == g_new.keys()
    assert max((g_old[n] - g_new[n]).abs().max().item() for n in g_old) <= 1e-6
    for model in (old, new):
        model.momentum_update()
        torch.optim.SGD(model.local_param_groups(), lr=0.1, momentum=0.9).step()
    s_old, s_new = old.state_dict(), new.state_dict()
    for name in s_old:
        if name in STEM_STATS:
            assert not torch.equal(s_old[name], s_new[name]), name
        else:
            torch.testing.assert_close(s_new[name], s_old[name], rtol=0, atol=1e-6, msg=name)


class ReturnsACopy(torch.nn.Module):
    """A prepared module's forward as Accelerate's mixed precision makes it: the output handed back is a new
    tensor (there ``h.float()``), not the one the objective saw; here an exact copy, so gradients stay exact."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, h, ctx):
        out, loss = self.module(h, ctx)
        return out.clone(), loss


MLAAN_ZOO = {"base": "infopro", "laminae": 2, "ema_update": "all", "final_loss": "weighted"}


@pytest.mark.parametrize("name,k,kwargs", [("resnet32_mlaan", 8, MLAAN_ZOO), ("resnet32_mlaan", 4, {}),
                                           ("resnet32_infopro", 4, ALL_ON)])
def test_a_module_that_returns_a_copy_of_its_output_gets_the_same_gradients(name, k, kwargs, one_thread):
    """The interleaved MLAAN step differentiates against the tensor the objective saw, not the one returned
    (before, the zoo sweep's first bf16 step raised "grad can be implicitly created only for scalar outputs")."""
    torch.manual_seed(3)
    plain = timm.create_model(name, num_local_modules=k, **kwargs)
    wrapped = copy.deepcopy(plain)
    x, y = batch(8, seed=4)
    plain.local_step(x, y)
    wrapped.local_step(x, y, modules=[ReturnsACopy(m) for m in wrapped.local_modules])
    g_plain, g_wrapped = grads(plain), grads(wrapped)
    assert g_plain.keys() == g_wrapped.keys() and g_plain
    assert all(torch.equal(g_plain[n], g_wrapped[n]) for n in g_plain)


def test_mlaan_trains_every_module_through_accelerates_bf16_prepare(one_thread, fresh_accelerate_state):
    """The trainer's path: modules prepared by ``Accelerator(mixed_precision='bf16')``, its ``backward``."""
    from accelerate import Accelerator

    torch.manual_seed(3)
    model = timm.create_model("resnet32_mlaan", num_local_modules=8, **MLAAN_ZOO)
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    modules = [accelerator.prepare_model(m, evaluation_mode=True) for m in model.local_modules]
    out = model.local_step(*batch(8, seed=4), backward=accelerator.backward, modules=modules)
    assert out.logits.dtype == torch.float32 and all(torch.isfinite(loss) for loss in out.losses)
    trainable = [p for g in model.local_param_groups() for p in g["params"]]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
