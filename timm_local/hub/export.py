"""Export a training run as the exact Hub repository folder ``<hub_dir>/<arch>.<tag>/``.

Files written:

* ``config.json``: timm's layout (``architecture``, ``num_classes``, ``label_names``, ``model_args``,
  ``pretrained_cfg``), written by timm's own ``save_config_for_hf``. ``model_args`` holds the run's
  ``create_model`` kwargs plus ``num_local_modules`` and every option of the method, so
  ``create_model("hf-hub:<org>/<name>")`` rebuilds the same K local modules.
* ``model.safetensors``: ``LocalNet.inference_state_dict()`` (backbone and head, no aux nets), which
  timm loads strictly.
* ``README.md``: the model card (:mod:`timm_local.hub.card`).

The default name is ``<arch>.k<K>_<dataset>`` (ImageNet as timm's ``in1k``). The folder is checked by
loading it back with ``timm.create_model("local-dir:<folder>", pretrained=True)``: the logits must be
identical. Weights above :data:`~timm_local.hub.settings.MAX_COMMITTED_WEIGHTS_MB` (ImageNet models)
are still written, for ``push``, but listed in ``<hub_dir>/.gitignore`` so that only their card and
config are committed.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Union

import timm
import torch
from safetensors.torch import save_file
from timm.models._hub import save_config_for_hf

from ..data.specs import get_dataset_spec
from ..local import LocalNet
from .card import build_card
from .memory import compare_memory
from .run import Run, load_reference_run, load_run
from .settings import MAX_COMMITTED_WEIGHTS_MB, hub_cards_dir, hub_org
from .stats import count_stats

WEIGHTS_NAME = "model.safetensors"
DATASET_TAGS = {"imagenet": "in1k"}  # timm's abbreviation; the other datasets keep their name
TRAINING_ONLY_KWARGS = ("drop_rate", "drop_path_rate")  # regularisation, not architecture (timm drops them too)
TAG_OPTIONS = ("dataset",)  # set by the model files from the tag ('k16_svhn' -> the method's dataset='svhn')


def default_name(arch: str, num_local_modules: int, dataset: str) -> str:
    """``resnet32_man``, 16, ``cifar10`` → ``resnet32_man.k16_cifar10``."""
    name = get_dataset_spec(dataset).name
    return f"{arch}.k{num_local_modules}_{DATASET_TAGS.get(name, name)}"


def rebuild_model(run: Run) -> LocalNet:
    """The run's LocalNet, built as the trainer built it, with the checkpoint loaded strictly (aux nets included)."""
    spec = get_dataset_spec(run.dataset)
    tagged = f"{run.arch}.{spec.name}"
    name = tagged if tagged in timm.list_models(run.arch, include_tags=True) else run.arch
    kwargs = {"num_classes": spec.num_classes, **run.model_kwargs}
    model = timm.create_model(name, **kwargs)
    if not isinstance(model, LocalNet):
        raise ValueError(f"{run.checkpoint_path}: {run.arch} is not a timm_local model, so it cannot be exported")
    try:
        model.load_state_dict(run.state_dict)
    except RuntimeError as e:
        raise ValueError(f"{run.checkpoint_path} does not fit timm.create_model({name!r}, **{kwargs}), the model "
                         f"its run describes: {e}") from e
    return model.eval()


def model_args(model: LocalNet, run: Run) -> dict[str, Any]:
    """``create_model`` kwargs that rebuild the same local modules: the run's, K and the method's options.

    Options that are None (resolved by the method at build time) and those the tag sets are left out.
    """
    method = {f.name: getattr(model.method, f.name) for f in dataclasses.fields(model.method)
              if f.name not in TAG_OPTIONS}
    run_kwargs = {k: v for k, v in run.model_kwargs.items() if k not in TRAINING_ONLY_KWARGS}
    return {**run_kwargs, "num_local_modules": model.num_local_modules,
            **{k: v for k, v in method.items() if v is not None}}


def export_run(path: Union[str, Path], name: Optional[str] = None, hub_dir: Optional[Union[str, Path]] = None,
               bench_json: Optional[Union[str, Path]] = None,
               reference_run: Optional[Union[str, Path]] = None) -> Path:
    """Write the Hub folder of a run (a run folder or a checkpoint file); return the folder.

    Args:
        name: ``<arch>.<tag>``; default ``<arch>.k<K>_<dataset>``.
        hub_dir: parent folder (default: hub_cards/, see :func:`~timm_local.hub.settings.hub_cards_dir`).
        bench_json: a benchmark JSON with this model's and E2E's peak training memory
            (:mod:`timm_local.hub.memory`); without it the card says "not yet measured".
        reference_run: the E2E run folder of the same recipe, whose final top-1 the card states.
    """
    run = load_run(path)
    model = rebuild_model(run)
    name = name or default_name(run.arch, model.num_local_modules, run.dataset)
    arch, _, tag = name.partition(".")
    if arch != run.arch or not tag:
        raise ValueError(f"--name {name!r} must be '{run.arch}.<tag>' (the run trained {run.arch}), "
                         f"e.g. {default_name(run.arch, model.num_local_modules, run.dataset)!r}")
    memory = None
    if bench_json is not None:
        memory = compare_memory(bench_json, run.arch, model.method.name, model.num_local_modules)
    hub_dir = Path(hub_dir) if hub_dir is not None else hub_cards_dir()
    folder = hub_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    weights = write_weights(model, folder)
    write_config(model, run, folder, tag)
    reference = load_reference_run(reference_run) if reference_run is not None else None
    card = build_card(name, f"{hub_org()}/{name}", model, run, count_stats(model), memory, reference)
    card.save(folder / "README.md")
    if weights.stat().st_size > MAX_COMMITTED_WEIGHTS_MB * 2**20:
        ignore_in_git(hub_dir, f"{name}/{WEIGHTS_NAME}")
    verify_folder(folder, model)
    return folder


def write_weights(model: LocalNet, folder: Path) -> Path:
    """``model.safetensors``: the inference state dict (no ``aux.*``)."""
    path = folder / WEIGHTS_NAME
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.inference_state_dict().items()}
    save_file(state_dict, str(path), metadata={"format": "pt"})
    return path


def write_config(model: LocalNet, run: Run, folder: Path, tag: str) -> Path:
    """``config.json`` in timm's layout, with the export's tag and the dataset's label names."""
    labels = model.pretrained_cfg.get("label_names") or get_dataset_spec(run.dataset).label_names
    model_config = {"pretrained_cfg": {"tag": tag}, **({"label_names": list(labels)} if labels else {})}
    path = folder / "config.json"
    save_config_for_hf(model, str(path), model_config=model_config, model_args=model_args(model, run))
    return path


def ignore_in_git(hub_dir: Path, relative_path: str) -> None:
    """Add ``/<relative_path>`` to ``<hub_dir>/.gitignore`` (once)."""
    gitignore = hub_dir / ".gitignore"
    rule = f"/{relative_path}"
    lines = gitignore.read_text().splitlines() if gitignore.is_file() else []
    if rule not in lines:
        with open(gitignore, "a") as f:
            f.write(f"{rule}\n")


def verify_folder(folder: Path, model: LocalNet) -> None:
    """Load ``folder`` the way users will (``local-dir:``, pretrained, strict) and compare logits with ``model``."""
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, *model.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = model.eval()(x), loaded(x)
    if not torch.equal(expected, got):
        raise RuntimeError(f"{folder} does not reproduce the run's model: the logits differ by up to "
                           f"{(expected - got).abs().max().item():.3g}")
