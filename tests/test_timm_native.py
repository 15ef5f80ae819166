"""timm 1.0.31's model API on our models (issue 13 items 4–8): device/dtype, in_chans, reset_classifier,
set_input_size, drop_path_rate, forward_intermediates and fx.

ImageNet-size models are kept small (64 px, resnet34 / vit_tiny) for a CPU budget.
"""
import pytest
import timm
import torch

import timm_local  # noqa: F401  (registers the models)

SMALL = dict(img_size=64)
# One name per aux-net family (CIFAR / ImageNet CNN / tokens), with momentum copies (MAN) and clones (MLAAN).
PLACED = [("resnet32_man", {}), ("resnet32_mlaan", {}), ("resnet32_infopro", {}), ("resnet34_man", SMALL),
          ("resnet34_infopro", SMALL), ("vit_tiny_patch16_224_man", SMALL), ("vit_tiny_patch16_224_infopro", SMALL)]


def tensors(model):
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


# ------------------------------------------------------------------------------------------ item 4
@pytest.mark.parametrize("name,kwargs", PLACED)
def test_device_meta_builds_every_tensor_on_meta(name, kwargs):
    model = timm.create_model(name, device="meta", **kwargs)
    assert any(n.startswith("aux.") for n in tensors(model))
    elsewhere = [n for n, t in tensors(model).items() if t.device.type != "meta"]
    assert not elsewhere, f"not on meta: {elsewhere[:5]}"


@pytest.mark.parametrize("name,kwargs", PLACED)
def test_dtype_builds_every_floating_tensor_in_that_dtype(name, kwargs):
    model = timm.create_model(name, dtype=torch.bfloat16, **kwargs)
    wrong = [n for n, t in tensors(model).items() if t.is_floating_point() and t.dtype != torch.bfloat16]
    assert not wrong, f"not bfloat16: {wrong[:5]}"
    assert torch.get_default_dtype() == torch.float32  # the build does not leak its default dtype


def test_a_bfloat16_model_trains_locally():
    model = timm.create_model("resnet32_man", dtype=torch.bfloat16)
    logits, losses = model.local_step(torch.randn(4, 3, 32, 32, dtype=torch.bfloat16), torch.tensor([0, 1, 2, 3]))
    assert logits.dtype == torch.bfloat16 and all(torch.isfinite(loss) for loss in losses)
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "momentum" not in n)


@pytest.mark.parametrize("name,kwargs", [("resnet32_infopro", dict(num_local_modules=3, split="measured")),
                                         ("resnet32_man", dict(num_local_modules=5)),  # no table: 'auto'
                                         ("resnet50_dgl", SMALL), ("resnet50_man", SMALL)])
def test_a_measured_split_on_meta_gives_the_real_models_cuts(name, kwargs):
    """A measured split runs the backbone, which meta cannot: it measures a zero-filled CPU copy instead (timm's
    test_model_default_cfgs builds every name on meta; resnet50's default split is measured)."""
    with torch.device("meta"):  # timm's test_model_default_cfgs also makes meta the default device
        meta = timm.create_model(name, device="meta", **kwargs)
    real = timm.create_model(name, **kwargs)
    assert meta.split_kind == real.split_kind != "paper"
    assert meta.cuts == real.cuts
    assert all(t.is_meta for t in tensors(meta).values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name,kwargs", PLACED)
def test_device_cuda_builds_every_tensor_on_the_gpu(name, kwargs):
    model = timm.create_model(name, device="cuda", **kwargs)
    assert all(t.device.type == "cuda" for t in tensors(model).values())


# ------------------------------------------------------------------------------------------ item 6
@pytest.mark.parametrize("name,kwargs", [("resnet32_man", {}), ("resnet34_infopro", SMALL),
                                         ("vit_tiny_patch16_224_man", SMALL)])
def test_reset_classifier_follows_the_model_dtype_and_mode(name, kwargs):
    model = timm.create_model(name, **kwargs).to(torch.bfloat16).eval()
    model.reset_classifier(7)
    wrong = [n for n, t in tensors(model).items() if t.is_floating_point() and t.dtype != torch.bfloat16]
    assert not wrong, f"not bfloat16 after reset_classifier: {wrong[:5]}"
    training = [n for n, m in model.named_modules() if m.training]
    assert not training, f"in train mode after reset_classifier: {training[:5]}"
    assert model.get_classifier().out_features == 7 and model.aux[-1] is not None
    model.train()
    model.reset_classifier(3)
    assert all(m.training for m in model.modules())


# ------------------------------------------------------------------------------------------ item 5
@pytest.mark.parametrize("name,kwargs", [("resnet34_infopro", SMALL), ("resnet34_man", SMALL),
                                         ("vit_tiny_patch16_224_infopro", SMALL), ("resnet32_infopro", {})])
def test_one_channel_images_reconstruct_one_channel(name, kwargs):
    model = timm.create_model(name, in_chans=1, num_classes=5, **kwargs)
    assert model.in_chans == 1 and len(model.mean) == len(model.std) == 1
    size = model._input_size[1:]
    x = torch.randn(2, 1, *size)
    logits, losses = model.local_step(x, torch.tensor([0, 4]))
    assert logits.shape == (2, 5) and all(torch.isfinite(loss) for loss in losses)


def test_one_channel_normalisation_is_the_channel_average():
    model = timm.create_model("resnet32_infopro", in_chans=1)  # CIFAR-10's per-channel mean / std
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    assert model.mean == pytest.approx((sum(mean) / 3,)) and model.std == pytest.approx((sum(std) / 3,))


# ------------------------------------------------------------------------------------------ item 7
def test_set_input_size_resizes_the_vit_and_rebuilds_its_aux_nets():
    model = timm.create_model("vit_tiny_patch16_224_infopro", img_size=64, num_classes=5)
    model.set_input_size(img_size=(96, 96))
    assert model._input_size == (3, 96, 96) and model.pos_embed.shape[1] == 1 + 6 * 6
    assert model.pos_embed is model.backbone.pos_embed  # the resampled embedding is the model's parameter
    assert any(p is model.pos_embed for p in model.local_modules[0].parameters())
    logits, losses = model.local_step(torch.randn(2, 3, 96, 96), torch.tensor([0, 4]))
    assert logits.shape == (2, 5) and all(torch.isfinite(loss) for loss in losses)
    assert model._model_args["img_size"] == (96, 96)


@pytest.mark.parametrize("name,kwargs", [("resnet32_dgl", {}), ("resnet34_dgl", SMALL)])
def test_a_resnet_has_no_set_input_size_as_timms_resnets(name, kwargs):
    model = timm.create_model(name, **kwargs)
    assert hasattr(timm.create_model("resnet18"), "set_input_size") is False  # timm's own ResNet: none
    assert not hasattr(model, "set_input_size")  # timm's tests and tools check hasattr / callable(getattr(...))
    with pytest.raises(AttributeError, match="object has no attribute 'set_input_size'"):
        model.set_input_size(img_size=64)


def test_drop_path_rate_is_stochastic_depth_on_the_cifar_resnets():
    model = timm.create_model("resnet32_greedy", drop_path_rate=0.2)
    last = model.layer3[-1].drop_path
    assert last.drop_prob == pytest.approx(0.2) and isinstance(model.layer1[0].drop_path, torch.nn.Identity)
    x = torch.randn(4, 3, 32, 32)
    assert not torch.equal(model.train()(x), model(x))  # random paths in training
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    assert model.state_dict().keys() == timm.create_model("resnet32_greedy").state_dict().keys()


# ------------------------------------------------------------------------------------------ item 8
TRACED = [("resnet32_man", {}), ("resnet34_infopro", SMALL), ("vit_tiny_patch16_224_man", SMALL)]


@pytest.mark.parametrize("name,kwargs", TRACED)
def test_forward_intermediates_as_timm_tests_it(name, kwargs):
    model = timm.create_model(name, **kwargs).eval()
    x = torch.randn(2, *model._input_size)
    with torch.no_grad():
        output, intermediates = model.forward_intermediates(x)
        assert torch.allclose(output, model.forward_features(x))
        assert len(intermediates) == len(model.feature_info)
        if name.startswith("resnet"):
            channels = [info["num_chs"] for info in model.feature_info]
            assert [t.shape[1] for t in intermediates] == channels
        last = model.forward_intermediates(x, indices=1, intermediates_only=True)
        assert len(last) == 1 and torch.equal(last[0], intermediates[-1])
        getter = timm.create_model(name, features_only=True, feature_cls="getter", **kwargs).eval()
        assert all(f.dim() == 4 for f in getter(x))


@pytest.mark.parametrize("name,kwargs", TRACED)
def test_fx_traces_the_plain_forward(name, kwargs):
    from timm.models import create_feature_extractor

    model = timm.create_model(name, **kwargs).eval()
    x = torch.randn(2, *model._input_size)
    graph = torch.fx.symbolic_trace(model)
    assert not any(n.op == "call_module" and n.target.startswith("aux") for n in graph.graph.nodes)
    with torch.no_grad():
        assert torch.equal(graph(x), model(x))
        assert torch.allclose(torch.jit.script(graph)(x), model(x))  # timm's fx + TorchScript test
        node = "layer1" if name.startswith("resnet") else "blocks.0"
        features = create_feature_extractor(model, return_nodes=[node])(x)
        assert list(features) == [node]
        fx_net = timm.create_model(name, features_only=True, feature_cls="fx", **kwargs).eval()
        assert len(fx_net(x)) == len(fx_net.feature_info.channels())


@pytest.mark.parametrize("name,kwargs", [("resnet32_man", {}), ("resnet32_mlaan", {}), ("resnet34_infopro", SMALL),
                                         ("vit_tiny_patch4_32_dgl", {})])
def test_torchscript_scripts_the_plain_inference_model(name, kwargs, tmp_path):
    """``torch.jit.script(model)`` gives the backbone (timm's state-dict names, no aux nets), which saves and
    loads as any TorchScript module and computes the eager model's logits (timm's test_model_forward_torchscript)."""
    model = timm.create_model(name, **kwargs).eval()
    x = torch.randn(2, *model._input_size)
    scripted = torch.jit.script(model)
    assert set(scripted.state_dict()) == {k for k in model.state_dict() if not k.startswith("aux.")}
    torch.jit.save(scripted, tmp_path / "model.pt")
    loaded = torch.jit.load(tmp_path / "model.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
