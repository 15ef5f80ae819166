"""Creating a model costs nothing once it is deleted, and the same architecture is probed only once (issue 13.1).

The construction-time probe runs the backbone under ``saved_tensors_hooks``; a pack hook that returned the
saved tensor itself made every saved output hold its own ``grad_fn`` — a reference cycle through C++ that
``gc`` never frees (~900 MiB per resnet50_man).
"""
import gc
import warnings

import pytest
import timm
import torch

import timm_local  # noqa: F401  (registers the models)
import timm_local.local.layout as layout

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = [
    ("resnet32_e2e", {}), ("resnet32_dgl", {}), ("resnet32_infopro", {}), ("resnet32_man", {}),
    ("resnet32_mlaan", {}), ("resnet32_infopro", {"num_local_modules": 4, "split": "balanced"}),
    ("resnet34_man", {"img_size": 64}), ("vit_tiny_patch16_224_man", {"img_size": 64}),
]


def live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on every object touches deprecated torch.distributed aliases
        warnings.simplefilter("ignore", FutureWarning)
        return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


@pytest.mark.parametrize("name,kwargs", MODELS, ids=[f"{n}{'-' + str(k) if k else ''}" for n, k in MODELS])
def test_a_deleted_model_leaves_no_tensor_behind(name, kwargs):
    timm.create_model(name, **kwargs)  # first creation: whatever a process caches once
    before = live_tensors()
    for _ in range(3):
        model = timm.create_model(name, **kwargs)
        del model
    assert live_tensors() == before


def test_the_same_architecture_is_probed_once(monkeypatch):
    runs = []
    probe = layout._run_probe
    monkeypatch.setattr(layout, "_run_probe", lambda *args: runs.append(args) or probe(*args))
    monkeypatch.setattr(layout, "_probe_cache", type(layout._probe_cache)())
    first = timm.create_model("resnet32_man")
    second = timm.create_model("resnet32_man")
    assert len(runs) == 1 and first._probe == second._probe
    timm.create_model("resnet32_man", img_size=48)  # another input size is another probe
    assert len(runs) == 2


def test_a_plain_training_forward_warns_once_that_it_is_end_to_end():
    """timm's train.py calls model(x) in train mode: say that this is not local learning (issue 13.3)."""
    from timm_local.local.net import PlainTrainingForwardWarning

    x = torch.randn(2, 3, 32, 32)
    model = timm.create_model("resnet32_dgl")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(x)
        model.eval()(x)  # inference: silent
        with torch.no_grad():
            model.train()(x)  # no gradients: silent
        timm.create_model("resnet32_e2e")(x)  # E2E is one module: end-to-end training is what it is for
        model.warn_plain_training_forward = False
        model(x)
    assert [type(w.message) for w in caught] == [PlainTrainingForwardWarning]
    assert "model.local_step(x, y)" in str(caught[0].message)
