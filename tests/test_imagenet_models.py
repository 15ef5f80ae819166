"""ImageNet ResNets / ResNeXts on timm's own ResNet class (issue 5): contract, splits, gradients, timm weights.

Small configurations keep it on a CPU budget: 64 px images and stage widths (8, 16, 32, 64) (bottleneck
outputs 32..256); the published block counts are kept wherever a table depends on them.
"""
import copy

import pytest
import timm
import torch

import timm_local
from conftest import (
    assert_head_contract,
    assert_aux_kept_and_block_copies_refreshed,
    assert_each_loss_reaches_only_its_modules,
    assert_joint_equals_interleaved,
    batch,
)
from timm_local.methods.aux_imagenet import ImageNetDecoder, ImageNetHead, light_head
from timm_local.methods.mlaan import LEAP_CHAINS

ARCHS = ("resnet34", "resnet50", "resnet101", "resnet152", "resnext101_32x8d")
METHODS = ("e2e", "greedy", "dgl", "infopro", "man", "mlaan")
UPSTREAM = {"resnet34": "a1_in1k", "resnet50": "a1_in1k", "resnet101": "a1h_in1k", "resnet152": "a1h_in1k",
            "resnext101_32x8d": "tv_in1k"}
SMALL = dict(img_size=64, channels=(8, 16, 32, 64))
TINY = dict(SMALL, layers=(1, 2, 2, 1))  # resnet50 blocks at 6 positions: fast gradient checks
ALL_ON = dict(recon_weights=(1.0, 1.0), task_weights=(1.0, 1.0))


def images(n=2, size=64, seed=0):
    return batch(n=n, size=size, classes=1000, seed=seed)


def test_names_and_upstream_weights():
    names = timm_local.list_models("res*_*")
    assert {f"{a}_{m}" for a in ARCHS for m in METHODS} <= set(names)
    for arch, tag in UPSTREAM.items():
        cfg = timm.models.get_pretrained_cfg(f"{arch}_infopro")
        assert cfg.tag == tag and cfg.hf_hub_id == f"timm/{arch}.{tag}" and not cfg.url and not cfg.custom_load
        upstream = timm.models.get_pretrained_cfg(f"{arch}.{tag}")
        assert (cfg.mean, cfg.std, cfg.crop_pct, cfg.input_size) == (upstream.mean, upstream.std, upstream.crop_pct,
                                                                     upstream.input_size)
    assert "resnet101_man.a1h_in1k" in timm.list_pretrained("resnet101_*")


@pytest.mark.parametrize("name", ["resnet34_mlaan", "resnet50_e2e", "resnet101_infopro", "resnet152_man",
                                  "resnext101_32x8d_dgl", "resnet50_greedy"])
def test_timm_contract(name):
    model = timm.create_model(name, **SMALL).eval()
    assert model.pretrained_cfg["first_conv"] + ".weight" in model.state_dict()
    x, _ = images()
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, model.num_features, 2, 2)  # stride 32
        assert model(x).shape == (2, 1000)
    assert model.get_classifier() is model.fc
    assert_head_contract(model, x, features)
    counts = {}
    for module in timm.create_model(name, **SMALL).local_modules:
        for p in module.parameters():
            counts[id(p)] = counts.get(id(p), 0) + 1
    assert set(counts.values()) == {1}


def test_features_only_and_headless():
    model = timm.create_model("resnet50_man", features_only=True, **TINY).eval()
    with torch.no_grad():
        features = model(images()[0])
    assert [f.shape[1:] for f in features] == [(64, 32, 32), (32, 16, 16), (64, 8, 8), (128, 4, 4), (256, 2, 2)]
    model = timm.create_model("resnet50_dgl", num_classes=10, **TINY)
    x, y = batch(size=64)
    assert model(x).shape == (4, 10) and all(torch.isfinite(loss) for loss in model.forward_local(x, y)[1])


@pytest.mark.parametrize("name,k,cuts", [
    ("resnet101_infopro", 2, (4,)),  # InfoPro/MAN: module 0 = stem + layer1 + layer2[0]
    ("resnet152_infopro", 2, (9,)),  # layer2[5]
    ("resnext101_32x8d_infopro", 2, (6,)),  # layer2[2]
    ("resnet34_man", 2, (4,)),  # MAN's R34 entry, layer2[0]
])
def test_paper_splits(name, k, cuts):
    model = timm.create_model(name, **SMALL)
    assert model.num_local_modules == k and model.cuts == cuts and model.split_kind == "paper"


@pytest.mark.parametrize("arch,k", [("resnet34", 16), ("resnet101", 33)])
def test_mlaan_one_block_per_module_with_the_published_leap_chains(arch, k):
    model = timm.create_model(f"{arch}_mlaan", **SMALL)
    assert model.num_local_modules == k and model.split_kind == "paper" and model.method.laminae == 3
    chains = [model.aux[i].cascaded.transform.chain for i in range(2, k - 1)]
    assert chains == list(LEAP_CHAINS[(arch, k)][2:])


def test_automatic_split_where_no_table_exists():
    model = timm.create_model("resnet50_infopro", num_local_modules=3, **SMALL)
    assert model.split_kind == "auto" and len(model.cuts) == 2
    custom = timm.create_model("resnet101_infopro", **TINY)  # not the published block counts: no table
    assert custom.split_kind == "auto"


def test_imagenet_aux_nets_match_the_published_ones_at_the_published_point():
    head = ImageNetHead((512, 28, 28), (2048, 7, 7), 1000)
    convs = [m for m in head if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (512, 128, 1, 1), (128, 256, 3, 2), (256, 512, 3, 2), (512, 2048, 1, 1)]
    assert head(torch.randn(2, 512, 28, 28)).shape == (2, 1000)
    decoder = ImageNetDecoder((512, 28, 28), (224, 224))
    convs = [m for m in decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(512, 128), (128, 32), (32, 12), (12, 3)]
    assert decoder.sizes == ((56, 56), (112, 112), (224, 224))
    assert decoder(torch.randn(1, 512, 28, 28)).shape == (1, 3, 224, 224)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in light_head(64, 10)) == 2  # MLAAN R34 below 256 channels
    assert sum(isinstance(m, torch.nn.Conv2d) for m in light_head(256, 10)) == 0


CASES = [
    ("resnet50_greedy", 3, {}),
    ("resnet50_dgl", 3, {}),
    ("resnet50_infopro", 3, ALL_ON),
    ("resnet50_man", 3, ALL_ON),
    ("resnet50_mlaan", 6, {}),
    ("resnet50_mlaan", 4, {"base": "infopro", "laminae": 2, **ALL_ON}),
]


@pytest.mark.parametrize("name,k,kwargs", CASES)
def test_each_local_loss_reaches_only_its_modules(name, k, kwargs):
    model = timm.create_model(name, num_local_modules=k, **TINY, **kwargs)
    assert len({id(p) for m in model.local_modules for p in m.parameters()}) == len(list(model.parameters()))
    assert_each_loss_reaches_only_its_modules(model, *images())


@pytest.mark.parametrize("name,k,kwargs", CASES)
def test_joint_and_interleaved_give_the_same_gradients(name, k, kwargs):
    joint = timm.create_model(name, num_local_modules=k, **TINY, **kwargs)
    assert_joint_equals_interleaved(joint, copy.deepcopy(joint), *images())


@pytest.mark.parametrize("method", METHODS)
def test_timm_weights_fill_the_backbone_and_leave_the_aux_nets_but_refresh_block_copies(tmp_path, method):
    reference = timm.create_model("resnet50", **{k: v for k, v in TINY.items() if k != "img_size"}).eval()
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    torch.manual_seed(3)
    fresh = timm.create_model(f"resnet50_{method}", **TINY)
    torch.manual_seed(3)
    loaded = timm.create_model(f"resnet50_{method}", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                               **TINY)
    x, _ = images()
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), reference(x))
    assert_aux_kept_and_block_copies_refreshed(fresh, loaded)


def test_timm_weights_with_another_head_size(tmp_path):
    reference = timm.create_model("resnet50", **{k: v for k, v in TINY.items() if k != "img_size"})
    torch.save(reference.state_dict(), tmp_path / "resnet50.pth")
    ten = timm.create_model("resnet50_man", pretrained=True, num_classes=10,
                            pretrained_cfg_overlay=dict(file=str(tmp_path / "resnet50.pth")), **TINY)
    assert torch.equal(ten.conv1.weight, reference.conv1.weight) and ten.fc.out_features == 10  # timm's fc dropped


def test_local_step_at_224_px():
    model = timm.create_model("resnext101_32x8d_man", img_size=224, channels=(8, 16, 32, 64), layers=(1, 2, 1, 1))
    x, y = images(size=224)
    out = model.local_step(x, y)
    assert out.logits.shape == (2, 1000) and all(torch.isfinite(loss) for loss in out.losses)
    with pytest.raises(ValueError, match=r"built for 224×224: create the model with img_size=64, or resize"):
        model.local_step(*images(size=64))


def test_localize_any_timm_resnet_and_convnext():
    resnet = timm.create_model("resnet18d", channels=(8, 16, 32, 64))
    net = timm_local.localize(resnet, method="infopro", num_local_modules=3, local_loss="ce")
    assert net.method.name == "infopro" and net.local_step(*batch(size=224, classes=1000)).logits.shape == (4, 1000)
    convnext = timm.create_model("convnext_atto", dims=(8, 16, 32, 64), depths=(1, 1, 2, 1), num_classes=10)
    net = timm_local.localize(convnext, method="dgl", num_local_modules=3)
    assert sum(len(m.blocks) for m in net.local_modules) == 5  # downsample joins each stage's first block
    assert all(torch.isfinite(loss) for loss in net.local_step(*batch(size=224)).losses)
    with pytest.raises(ValueError, match="needs `stem`, `stages` and `forward_head`"):
        timm_local.localize(timm.create_model("mobilenetv3_small_050"), method="dgl", num_local_modules=2)


def test_unknown_argument_names_both_sides():
    with pytest.raises(ValueError, match="'bogus'.*num_local_modules.*the ResNet backbone: .*layers"):
        timm.create_model("resnet50_dgl", bogus=1)


def test_short_training_run_through_train_py(tmp_path):
    """One epoch of train.py on a synthetic 64-px copy of the ImageNet Hub layout."""
    from accelerate.state import AcceleratorState

    from timm_local.data import write_synthetic_copy
    from timm_local.train import parse_args, train

    data = write_synthetic_copy("imagenet", tmp_path / "imagenet", num_train=8, num_eval=4)
    args = parse_args(["--dataset", "imagenet", "--data-dir", str(data), "--workers", "0", "--model", "resnet50_infopro",
                       "--model-kwargs", "img_size=64", "layers=(1,1,1,1)", "channels=(8,16,32,64)",
                       "num_local_modules=2", "--epochs", "1", "-b", "4", "--output", str(tmp_path),
                       "--experiment", "run", "--bench-loader-batches", "1", "--log-interval", "1"])
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        results = train(args)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert results["num_local_modules"] == 2 and results["model"] == "resnet50_infopro"
    checkpoint = torch.load(tmp_path / "run" / "last.pth.tar", weights_only=True)
    model = timm.create_model(checkpoint["arch"], **checkpoint["model_kwargs"])
    timm.models.load_checkpoint(model, str(tmp_path / "run" / "model_best.pth.tar"))
