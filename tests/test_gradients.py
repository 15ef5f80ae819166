"""Gradient barriers, joint == interleaved, K = 1 == E2E (issue: timm_local core)."""
import copy

import pytest
import timm
import torch
import torch.nn.functional as F

from conftest import assert_each_loss_reaches_only_its_modules, assert_joint_equals_interleaved, batch, grads

# Weights that make every aux loss non-zero, so isolation can see each loss's reach.
ALL_ON = dict(recon_weights=(1.0, 1.0), task_weights=(1.0, 1.0))
CASES = [
    ("resnet32_greedy", 4, {}),
    ("resnet32_dgl", 4, {}),
    ("resnet32_dgl", 8, {"local_loss": "contrast"}),
    ("resnet32_infopro", 4, ALL_ON),
    ("resnet32_infopro", 16, ALL_ON),
    ("resnet32_infopro", 4, dict(ALL_ON, local_loss="ce", split="balanced")),
    ("resnet32_man", 4, ALL_ON),
    ("resnet32_man", 15, dict(ALL_ON, base="dgl", weight_schedule="stage")),
    ("resnet32_mlaan", 4, {}),
    ("resnet32_mlaan", 8, {"laminae": 3, "base": "infopro", **ALL_ON}),
    ("resnet32_mlaan", 15, {"final_loss": "cascade", "ema_update": "last"}),
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
