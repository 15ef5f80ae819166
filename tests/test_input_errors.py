"""Bad input a new user tries gets one line naming the problem and the fix (docs/ERRORS.md lists them).

Data errors (corrupt images, cache location) are in tests/test_data.py; these are the model-side cases
and the hints that name commands of other tools.
"""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from timm_local.data import get_dataset_spec, layout_hint, list_datasets
from timm_local.data.source import download_command

REPO = Path(__file__).parents[1]


# ------------------------------------------------------------------------------------ Hub hints


def _hf_download_help() -> str:
    """``hf download --help`` of the installed huggingface_hub (the CLI our hints tell users to run)."""
    hf = shutil.which("hf", path=str(Path(sys.executable).parent)) or shutil.which("hf")
    assert hf is not None, "huggingface_hub's `hf` command is not installed next to this Python"
    return subprocess.run([hf, "download", "--help"], capture_output=True, text=True, check=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": str(Path(sys.executable).parent),
                               "NO_COLOR": "1", "COLUMNS": "200"}).stdout


def test_download_hints_are_commands_the_installed_hub_ships():
    help_text = _hf_download_help()
    for name in list_datasets():
        spec = get_dataset_spec(name)
        command = download_command(spec)
        assert f"`{command}`" in layout_hint(spec)
        words = command.split()
        assert words[:3] == ["hf", "download", spec.hub_id]
        for option in (w for w in words if w.startswith("--")):
            assert option in help_text, (option, command)
    assert "--revision 49ae7f9" in download_command(get_dataset_spec("stl10"))  # the pinned mirror


def test_no_hint_names_the_removed_huggingface_cli():
    """huggingface_hub 1.0 removed ``huggingface-cli``; no code or doc of ours may tell users to run it."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    offenders = [f for f in files if f.endswith((".py", ".md", ".yaml", ".toml"))
                 and re.search(r"huggingface-cli\s+(download|login|upload)", (REPO / f).read_text())]
    assert offenders == []


# ------------------------------------------------------------------------------ model arguments


@pytest.mark.parametrize("name,kwargs,closest", [
    ("resnet32_man", dict(num_local_modul=8), "num_local_modules"),  # a localize argument
    ("resnet32_man", dict(momentun=0.99), "momentum"),  # a method option
    ("resnet32_infopro", dict(in_chan=1), "in_chans"),  # a backbone argument
    ("resnet50_dgl", dict(img_siz=160), "img_size"),  # timm's ResNet, an argument of the registered variant
    ("vit_tiny_patch16_224_dgl", dict(num_local_module=2), "num_local_modules"),
])
def test_misspelled_argument_suggests_the_closest_valid_name(name, kwargs, closest):
    import timm

    with pytest.raises(ValueError) as e:
        timm.create_model(name, **kwargs)
    msg = str(e.value)
    assert isinstance(e.value, TypeError)  # as timm's own models answer an unexpected keyword
    assert f"has no option {next(iter(kwargs))!r}; did you mean {closest!r}?" in msg and "\n" not in msg
    assert "num_local_modules" in msg.split("(valid: ")[1]  # the list covers every part of the model


def test_localize_suggests_method_options():
    import timm

    import timm_local

    backbone = timm.create_model("resnet32_e2e").backbone
    with pytest.raises(ValueError, match=r"method 'man' has no option 'ema_int'; did you mean 'ema_init'\?"):
        timm_local.localize(backbone, method="man", num_local_modules=2, ema_int=True)


@pytest.mark.parametrize("value", ["two", 2.5, "8", True])
def test_non_integer_num_local_modules_names_the_key(value):
    import timm

    with pytest.raises(ValueError) as e:
        timm.create_model("resnet32_man", num_local_modules=value)
    assert str(e.value) == (f"num_local_modules takes integers (the number of local modules, e.g. "
                            f"num_local_modules=4), got {value!r} of type {type(value).__name__}")


def test_non_integer_split_names_the_key():
    import timm

    with pytest.raises(ValueError, match=r"split takes integers \(block indices, e.g. split=\[5, 10\]\), got 2.5"):
        timm.create_model("resnet32_dgl", split=[2.5, 6])


def test_integer_like_counts_still_work():
    import numpy as np
    import timm

    assert timm.create_model("resnet32_dgl", num_local_modules=np.int64(2)).num_local_modules == 2


# ---------------------------------------------------------------------------------- input size


@pytest.fixture(scope="module")
def dgl32():
    import timm

    return timm.create_model("resnet32_dgl", num_local_modules=2)


def test_local_step_channel_mismatch_says_in_chans(dgl32):
    import torch

    with pytest.raises(ValueError) as e:
        dgl32.local_step(torch.randn(2, 1, 32, 32), torch.zeros(2, dtype=torch.long))
    msg = str(e.value)
    assert "expected 3-channel images" in msg and "in_chans=1" in msg and "img_size" not in msg


@pytest.mark.parametrize("shape,img_size", [((64, 64), "img_size=64"), ((64, 48), "img_size=(64, 48)")])
def test_local_step_spatial_mismatch_says_the_images_size(dgl32, shape, img_size):
    import torch

    with pytest.raises(ValueError) as e:
        dgl32.forward_local(torch.randn(2, 3, *shape), torch.zeros(2, dtype=torch.long))
    msg = str(e.value)
    assert msg == (f"got {shape[0]}×{shape[1]} images but the model's aux nets are built for 32×32: create the "
                   f"model with {img_size}, or resize the images to 32×32")


def test_local_step_unbatched_image(dgl32):
    import torch

    with pytest.raises(ValueError, match=r"shape \(B, 3, 32, 32\), got a tensor of shape \(3, 32, 32\).*x\[None\]"):
        dgl32.local_step(torch.randn(3, 32, 32), torch.zeros(1, dtype=torch.long))
