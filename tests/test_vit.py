"""Vision Transformers on timm's own VisionTransformer (issue 5): contract, cuts, token aux nets, MAN++, weights.

Small configurations: ViT-Ti with 4 blocks at 64 px (16 patches), or the 32-px small-image variants.
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
from timm_local.local import TokenFormat
from timm_local.methods.aux_tokens import TokenDecoder

METHODS = ("e2e", "greedy", "dgl", "infopro", "man", "mlaan")
IMAGENET = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224")
SMALL_IMAGE = {"vit_tiny_patch4_32": (32, ("cifar10", "svhn")), "vit_small_patch4_32": (32, ("cifar10", "svhn")),
               "vit_small_patch8_96": (96, ("stl10",))}
TINY = dict(img_size=64, depth=4)
ALL_ON = dict(recon_weights=(1.0, 1.0), task_weights=(1.0, 1.0))


def images(n=2, size=64, classes=1000, seed=0):
    return batch(n=n, size=size, classes=classes, seed=seed)


def test_names_tags_and_upstream_weights():
    names = set(timm_local.list_models("vit_*"))
    assert {f"{a}_{m}" for a in (*IMAGENET, *SMALL_IMAGE) for m in METHODS} <= names
    cfg = timm.models.get_pretrained_cfg("vit_small_patch16_224_man")
    assert cfg.hf_hub_id == "timm/vit_small_patch16_224.augreg_in21k_ft_in1k" and not cfg.custom_load
    for arch, (size, tags) in SMALL_IMAGE.items():
        for tag in tags:
            cfg = timm.models.get_pretrained_cfg(f"{arch}_dgl.{tag}")
            assert cfg.input_size == (3, size, size) and cfg.num_classes == 10 and cfg.crop_pct == 1.0
            assert cfg.fixed_input_size and not cfg.has_weights


@pytest.mark.parametrize("name,kwargs,size", [
    ("vit_tiny_patch16_224_dgl", TINY, 64),
    ("vit_tiny_patch16_224_e2e", dict(TINY, global_pool="avg", reg_tokens=2), 64),
    ("vit_tiny_patch4_32_man.cifar10", dict(depth=4), 32),
])
def test_timm_contract(name, kwargs, size):
    model = timm.create_model(name, **kwargs).eval()
    classes = model.num_classes
    tokens = 1 + getattr(model.backbone, "num_reg_tokens", 0) + (size // model.backbone.patch_embed.patch_size[0]) ** 2
    x, _ = images(size=size)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, tokens, model.num_features)
        assert model(x).shape == (2, classes)
    assert model.get_classifier() is model.head
    assert {"pos_embed", "cls_token"} <= model.no_weight_decay()
    assert_head_contract(model, x, features)


def test_tags_build_their_image_size():
    model = timm.create_model("vit_small_patch8_96_infopro.stl10", depth=2)
    assert model.backbone.patch_embed.img_size == (96, 96) and model.num_classes == 10
    assert model.mean == (0.5, 0.5, 0.5)
    x, y = images(size=96, classes=10)
    assert len(model.forward_local(x, y)[1]) == 2
    assert timm.create_model("vit_tiny_patch4_32_dgl.cifar10", depth=2).mean[0] == pytest.approx(125.3 / 255)


def test_features_only():
    model = timm.create_model("vit_tiny_patch16_224_man", features_only=True, **TINY).eval()
    with torch.no_grad():
        features = model(images()[0])
    assert [f.shape for f in features] == [(2, 192, 4, 4)] * 3 and model.feature_info.channels() == [192] * 3


def test_cuts_fall_between_blocks_and_the_ends_own_embedding_and_head():
    model = timm.create_model("vit_small_patch16_224_man", img_size=32)
    assert model.cuts == (3, 6, 9) and model.split_kind == "paper"  # MAN++: K = 4, 3 blocks per module
    first, last = model.local_modules[0], model.local_modules[-1]
    first_params = {id(p) for p in first.parameters()}
    assert {id(model.cls_token), id(model.pos_embed), id(model.patch_embed.proj.weight)} <= first_params
    assert {id(model.norm.weight), id(model.head.weight)} <= {id(p) for p in last.parameters()}
    assert [len(m.blocks) for m in model.local_modules] == [3, 3, 3, 3]
    assert timm.create_model("vit_tiny_patch16_224_dgl", **TINY).num_local_modules == 4
    assert timm.create_model("vit_tiny_patch16_224_e2e", **TINY).num_local_modules == 1


def test_man_plus_plus_aux_net():
    model = timm.create_model("vit_tiny_patch16_224_man", **TINY)
    aux = model.aux[0]
    trunk, pair = aux.transform, aux.transform.pair
    assert aux.decoder is None and pair.mix.detach().item() == 1.0 and len(trunk.extra) == 1
    assert not any(p.requires_grad for p in pair.momentum.parameters())
    source = model.blocks[1]
    assert all(torch.equal(a, b) for a, b in zip(pair.momentum.parameters(), source.parameters()))  # EMA = copy
    _, losses = model.forward_local(*images())
    losses[0].backward()
    assert pair.mix.grad is not None and pair.mix.grad.abs() > 0
    with torch.no_grad():
        source.attn.qkv.weight.add_(1.0)
    before = pair.momentum.attn.qkv.weight.clone()
    model.momentum_update()
    torch.testing.assert_close(pair.momentum.attn.qkv.weight, 0.995 * before + 0.005 * source.attn.qkv.weight)
    plain = timm.create_model("vit_tiny_patch16_224_man", mix="sum", extra_blocks=0, **TINY).aux[0].transform
    assert plain.mix is None


def test_token_decoder_puts_every_patch_back_in_place():
    tokens = TokenFormat(pool="token", num_prefix_tokens=1, patch_size=(2, 3), grid_size=(2, 2))
    decoder = TokenDecoder(2 * 3 * 3, tokens, (4, 6))
    decoder.norm = torch.nn.Identity()
    with torch.no_grad():
        decoder.to_pixels.weight.copy_(torch.eye(18))
        decoder.to_pixels.bias.zero_()
    image = torch.randn(1, 3, 4, 6)
    patches = image.reshape(1, 3, 2, 2, 2, 3).permute(0, 2, 4, 3, 5, 1).reshape(1, 4, 18)  # (gh, gw, ph, pw, C)
    x = torch.cat([torch.randn(1, 1, 18), patches], dim=1)
    torch.testing.assert_close(decoder(x), image)


CASES = [
    ("vit_tiny_patch16_224_greedy", 4, {}),
    ("vit_tiny_patch16_224_dgl", 3, {"global_pool": "avg"}),
    ("vit_tiny_patch16_224_infopro", 4, dict(ALL_ON, reg_tokens=1)),
    ("vit_tiny_patch16_224_man", 4, {}),
    ("vit_tiny_patch16_224_man", 3, dict(ALL_ON, base="infopro", mix="sum", extra_blocks=0)),
    ("vit_tiny_patch16_224_mlaan", 4, {"laminae": 3}),
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
    reference = timm.create_model("vit_tiny_patch16_224", **TINY).eval()
    path = tmp_path / "vit.pth"
    torch.save(reference.state_dict(), path)
    torch.manual_seed(5)
    fresh = timm.create_model(f"vit_tiny_patch16_224_{method}", **TINY)
    torch.manual_seed(5)
    loaded = timm.create_model(f"vit_tiny_patch16_224_{method}", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(path)), **TINY).eval()
    x, _ = images()
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))
    assert_aux_kept_and_block_copies_refreshed(fresh, loaded)


def test_timm_weights_at_another_image_size_are_resampled(tmp_path):
    reference = timm.create_model("vit_tiny_patch16_224", depth=2)  # 224 px: 197 position embeddings
    torch.save(reference.state_dict(), tmp_path / "vit.pth")
    model = timm.create_model("vit_tiny_patch16_224_dgl", pretrained=True, img_size=64, depth=2,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "vit.pth")))
    assert model.pos_embed.shape == (1, 17, 192) and torch.equal(model.blocks[1].mlp.fc2.weight,
                                                                  reference.blocks[1].mlp.fc2.weight)


def test_local_step_at_224_px():
    model = timm.create_model("vit_tiny_patch16_224_man", depth=2)
    out = model.local_step(*images(size=224))
    assert out.logits.shape == (2, 1000) and all(torch.isfinite(loss) for loss in out.losses)


def test_localize_a_plain_timm_vit():
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3, num_classes=10)
    net = timm_local.localize(vit, method="infopro", num_local_modules=3, local_loss="ce")
    assert net.cuts == (1, 2) and list(net.state_dict())[:2] == list(vit.state_dict())[:2]
    assert all(torch.isfinite(loss) for loss in net.local_step(*images(size=32, classes=10)).losses)
