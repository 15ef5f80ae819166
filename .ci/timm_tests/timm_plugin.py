"""pytest plugin that runs timm's own tests/test_models.py on timm_local's names (see selection.py).

Loaded with ``-p timm_plugin`` (``.ci/timm_tests.sh``) before timm's file is collected, it

* imports timm_local, so our names are in timm's registry;
* restricts ``timm.list_models`` / ``timm.list_pretrained`` — which timm's file calls at import time to
  parametrize its tests — to ``selection.NAMES``: timm's own filters run first (the real function is
  called with the same arguments), so each test keeps timm's choice among our names. ``module=`` filters
  name timm's modules: our ResNets count as timm's ``resnet`` module and our ViTs as
  ``vision_transformer`` (``forward_intermediates`` is delegated to those backbones);
* deselects what selection.EXCLUDED lists and the tests that do not run on our names;
* runs ``test_model_backward`` on a local-learning model (more than one local module) through
  :class:`LocalStepForward`.
"""
from __future__ import annotations

import fnmatch

import pytest
import timm
import torch
from torch import nn

import timm_local
from timm_local.local.net import LocalNet

from selection import EXCLUDED, NAMES

OUR_MODULES = {"resnet": ("resnet_local", "cifar_resnet_local"), "vision_transformer": ("vit_local",)}
TIMM_MARKERS = ("base", "cfg", "cfg_nonstd", "forward", "backward", "torchscript", "features", "fxforward", "fxbackward")
_list_models, _list_pretrained = timm.list_models, timm.list_pretrained


def _ours(names):
    keep = set(NAMES)
    return [n for n in names if n.split(".")[0] in keep]


def list_models(filter="", module="", *args, **kwargs):
    modules = [module] if isinstance(module, str) else list(module)
    if modules and modules != [""]:
        modules += [ours for m in modules for ours in OUR_MODULES.get(m, ())]
    return _ours(_list_models(filter, modules if modules != [""] else "", *args, **kwargs))


def list_pretrained(filter="", exclude_filters=""):
    return _ours(_list_pretrained(filter, exclude_filters))


def pytest_configure(config):
    unknown = set(NAMES) - set(timm_local.list_models())
    if unknown:
        raise pytest.UsageError(f"selection.NAMES has names timm_local does not register: {sorted(unknown)}")
    timm.list_models, timm.list_pretrained = list_models, list_pretrained
    for marker in TIMM_MARKERS:  # timm's pyproject.toml registers them; the sdist's test file alone does not
        config.addinivalue_line("markers", f"{marker}: timm's CI group")


def pytest_collection_modifyitems(config, items):
    keep, excluded, not_ours = [], [], []
    for item in items:
        name = item.callspec.params.get("model_name") if hasattr(item, "callspec") else None
        if not isinstance(name, str) or name.split(".")[0] not in NAMES:  # an empty set's NOTSET too
            not_ours.append(item)
        elif any(fnmatch.fnmatch(name, p) for p in EXCLUDED.get(item.originalname, ((), ""))[0]):
            excluded.append(item)
        else:
            keep.append(item)
    config.hook.pytest_deselected(items=excluded + not_ours)
    items[:] = keep
    config._timm_local_counts = (len(keep), len(excluded), len(not_ours))


def pytest_report_collectionfinish(config, start_path, items):
    kept, excluded, not_ours = config._timm_local_counts
    lines = [f"timm_local: {kept} items of timm's tests on {len(NAMES)} of our names; deselected {excluded} "
             f"excluded (selection.EXCLUDED) and {not_ours} on timm's own fixed models"]
    lines += [f"  excluded {test} on {' '.join(names)}: {reason}" for test, (names, reason) in EXCLUDED.items()]
    return lines


class LocalStepForward(nn.Module):
    """A local-learning model as timm's backward test sees it: in train mode with gradients enabled,
    ``forward(x)`` is one ``local_step(x, y)`` on labels drawn from ``num_classes`` — each module's local
    loss is back-propagated into that module and its aux net — and returns the step's (detached) logits
    as a leaf, so the test's own ``outputs.mean().backward()`` adds nothing: the test's checks (every
    parameter has a gradient, output shape, no NaN) check what ``local_step`` did.

    ``parameters()`` are the trainable ones: MAN's momentum copies (``requires_grad=False``) follow their
    source by ``momentum_update()``, not by a gradient.
    """

    def __init__(self, net: LocalNet):
        super().__init__()
        self.net = net

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

    @property
    def num_features(self) -> int:
        return self.net.num_features

    def named_parameters(self, *args, **kwargs):
        return ((n, p) for n, p in super().named_parameters(*args, **kwargs) if p.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return self.net(x)
        generator = torch.Generator().manual_seed(0)
        target = torch.randint(self.net.num_classes, (x.shape[0],), generator=generator).to(x.device)
        logits, _ = self.net.local_step(x, target)
        return logits.requires_grad_()


@pytest.fixture(autouse=True)
def _backward_through_local_step(request, monkeypatch):
    """``test_model_backward``: a local-learning model comes wrapped in :class:`LocalStepForward`, built for
    the input size the test feeds (timm's ``_get_input_size(model_name=..., target=TARGET_BWD_SIZE)``):
    our ImageNet-size models build their aux nets for one size, given at creation as ``img_size=``."""
    if getattr(request.node, "originalname", None) != "test_model_backward":
        return
    timm_tests = request.module

    def create_model(model_name, **kwargs):
        size = timm_tests._get_input_size(model_name=model_name, target=timm_tests.TARGET_BWD_SIZE)
        if size != timm.get_pretrained_cfg_value(model_name, "input_size"):
            kwargs["img_size"] = size[1:]
        model = timm.create_model(model_name, **kwargs)
        if isinstance(model, LocalNet) and model.num_local_modules > 1:
            return LocalStepForward(model)
        return model

    monkeypatch.setattr(timm_tests, "create_model", create_model)
