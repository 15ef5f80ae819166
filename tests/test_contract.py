"""timm's model contract (ECOSYSTEM.md §1.7, timm tests/test_models.py) for every registered name."""
import pytest
import timm
from timm.optim import create_optimizer_v2
import torch

import timm_local
from conftest import assert_head_contract

CIFAR_NAMES = timm_local.list_models("resnet*_*")
EXPECTED = [f"resnet{d}_{m}" for d in (32, 110) for m in ("e2e", "greedy", "dgl", "infopro", "man", "mlaan")]


def test_every_name_is_registered_and_listed():
    assert set(EXPECTED) <= set(CIFAR_NAMES)
    assert set(timm.list_models("resnet32_*")) == {n for n in EXPECTED if n.startswith("resnet32_")}


@pytest.mark.parametrize("name", EXPECTED)
def test_default_cfg_contract(name):
    model = timm.create_model(name)
    cfg = model.pretrained_cfg
    assert cfg["num_classes"] == 10 and cfg["crop_pct"] == 1.0 and cfg["input_size"] == (3, 32, 32)
    assert cfg["mean"] != (0.485, 0.456, 0.406)
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state
    model.eval()
    x = torch.randn(2, *cfg["input_size"])
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape[-2:] == cfg["pool_size"]
        assert features.shape[1] == model.num_features
        assert model(x).shape == (2, 10)
    assert model.get_classifier() is model.fc
    assert_head_contract(model, x, features)


@pytest.mark.parametrize("tag,size,pool", [("cifar10", 32, 8), ("svhn", 32, 8), ("stl10", 96, 24)])
def test_tags_build_the_right_input_size(tag, size, pool):
    model = timm.create_model(f"resnet32_infopro.{tag}").eval()
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, size, size) and cfg["pool_size"] == (pool, pool)
    assert cfg["num_classes"] == 10 and len(cfg["label_names"]) == 10 and "hf_hub_id" not in cfg
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        assert model.forward_features(x).shape[-2:] == (pool, pool)
    logits, losses = model.forward_local(x, torch.tensor([1, 2]))
    assert logits.shape == (2, 10) and len(losses) == 4


def test_unpooled_and_headless_creation():
    model = timm.create_model("resnet32_dgl", num_classes=0, global_pool="").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 64, 8, 8)
    model = timm.create_model("resnet32_dgl", num_classes=100)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    _, losses = model.forward_local(torch.randn(2, 3, 32, 32), torch.tensor([3, 99]))
    assert all(torch.isfinite(loss) for loss in losses)


def test_features_only():
    model = timm.create_model("resnet110_man", features_only=True, num_local_modules=5).eval()
    with torch.no_grad():
        features = model(torch.randn(2, 3, 32, 32))
    assert [f.shape[1:] for f in features] == [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert model.feature_info.channels() == [16, 16, 32, 64]


def test_grad_checkpointing_and_optimizer_helpers():
    model = timm.create_model("resnet32_e2e")
    model.set_grad_checkpointing(True)
    assert model.grad_checkpointing
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert model.conv1.weight.grad is not None
    assert "blocks" in model.group_matcher() and isinstance(model.no_weight_decay(), set)
    optimizer = create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=1e-4)
    assert optimizer.param_groups


def test_inference_state_dict_round_trip_is_strict():
    a = timm.create_model("resnet32_man", num_local_modules=5)
    b = timm.create_model("resnet32_man", num_local_modules=5)
    inference = a.inference_state_dict()
    assert inference and not any(k.startswith("aux.") for k in inference)
    b.load_state_dict(inference)
    x = torch.randn(2, 3, 32, 32)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))
    inference.pop("fc.weight")
    with pytest.raises(RuntimeError, match="fc.weight"):
        b.load_state_dict(inference)
