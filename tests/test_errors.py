"""Bad input gets a ValueError that says what to do."""
import pytest
import timm
import torch

from conftest import batch


@pytest.mark.parametrize("kwargs,message", [
    (dict(bogus_option=1), "has no option 'bogus_option'"),
    (dict(num_local_modules=20), "1 <= K <= 15"),
    (dict(num_local_modules=0), "1 <= K <= 15"),
    (dict(split=[5, 3]), "not strictly increasing"),
    (dict(split=[3, 15]), "outside"),
    (dict(split=[3, 9], num_local_modules=4), "makes 3 local modules"),
    (dict(split="nonsense"), "unknown split"),
    (dict(aux_config="9c9f"), "aux_config"),
    (dict(local_loss="mse"), "local_loss"),
])
def test_bad_model_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model("resnet32_infopro", **kwargs)


def test_bad_method_specific_arguments():
    with pytest.raises(ValueError, match="momentum"):
        timm.create_model("resnet32_man", momentum=1.5)
    with pytest.raises(ValueError, match="base"):
        timm.create_model("resnet32_mlaan", base="greedy")
    with pytest.raises(ValueError, match="num_local_modules must be 1"):
        timm.create_model("resnet32_e2e", num_local_modules=4)
    with pytest.raises(ValueError, match="depth"):
        from timm_local.models.cifar_resnet_local import CifarResNet
        CifarResNet(depth=33)


def test_wrong_input_size_and_channels():
    model = timm.create_model("resnet32_infopro", num_local_modules=4)
    with pytest.raises(ValueError, match="img_size=96"):
        model.local_step(*batch(size=96))
    with pytest.raises(ValueError, match="in_chans=1"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="labels"):
        model.forward_local(torch.randn(4, 3, 32, 32), torch.zeros(3, dtype=torch.long))


def test_headless_model_refuses_local_training():
    model = timm.create_model("resnet32_dgl", num_classes=0)
    with pytest.raises(ValueError, match="num_classes"):
        model.local_step(*batch())


def test_unknown_tag_and_localize_of_an_unknown_backbone():
    import timm_local

    with pytest.raises(RuntimeError, match="Invalid pretrained tag"):
        timm.create_model("resnet32_man.bogus")
    with pytest.raises(ValueError, match="local_layout"):
        timm_local.localize(torch.nn.Linear(3, 3), method="dgl")
    with pytest.raises(ValueError, match="unknown local-learning method"):
        timm_local.localize(timm.create_model("resnet32_e2e").backbone, method="backprop")
