"""configs/: every YAML parses through train.py's two-stage parser and builds its model; config errors are clear."""
import glob
import os
import re

import pytest
import timm

from timm_local.data import get_dataset_spec
from timm_local.sweep import load_sweep
from timm_local.train import parse_args
from timm_local.train.setup import model_name_for_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
CONFIGS = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "*", "*.yaml"))
                 if os.path.basename(os.path.dirname(p)) != "sweeps")  # one train.py config per paper-table entry
SWEEPS = sorted(glob.glob(os.path.join(CONFIG_DIR, "sweeps", "*.yaml")))
# <model>_k<K>[_variant][_flavour].yaml: up to two suffixes, e.g. resnet32_mlaan_k15_dgl_recommended.yaml (MLAAN ships
# the paper's setting under the plain name and timm_local's recommended variant with '_recommended').
NAME = re.compile(r"^(?P<model>[a-z0-9_]+?_(e2e|greedy|dgl|infopro|man|mlaan))_k(?P<k>\d+)(_[a-z0-9]+){0,2}\.yaml$")
# ImageNet recipes (METHODS.md §7.2): (batch per process, lr, epochs) by method; per-epoch cosine, no warm-up.
IMAGENET_RECIPES = {"infopro": (128, 0.4, 90), "man": (128, 0.05, 90), "mlaan": ((128, 64), 0.05, 150)}


def test_configs_cover_the_paper_tables():
    names = {os.path.relpath(p, CONFIG_DIR) for p in CONFIGS}
    for k in (2, 4, 8, 16):
        for method in ("greedy", "dgl"):
            assert f"cifar10/resnet32_{method}_k{k}.yaml" in names
        for data in ("cifar10", "svhn", "stl10"):
            assert {f"{data}/resnet110_dgl_k{k}.yaml", f"{data}/resnet110_infopro_k{k}_contrast.yaml",
                    f"{data}/resnet110_infopro_k{k}_softmax.yaml"} <= names
    for k in (2, 3, 4):
        assert {f"cifar10/resnet110_infopro_k{k}_balanced.yaml", f"stl10/resnet110_infopro_k{k}_balanced.yaml"} <= names
    for method in ("man", "mlaan"):
        for base in ("dgl", "infopro"):
            assert {f"cifar10/resnet32_{method}_k15_{base}.yaml", f"cifar10/resnet32_{method}_k8_{base}.yaml",
                    f"cifar10/resnet110_{method}_k32_{base}.yaml", f"cifar10/resnet110_{method}_k54_{base}.yaml"} <= names


# What the MLAAN reference files run (METHODS.md §6.2, §6.4): resnetMLAAN.py (base dgl), resnetInfoProbin.py (infopro).
MLAAN_PAPER = {"dgl": dict(laminae=2, ema_update="last", final_loss="cascade"),
               "infopro": dict(laminae=3, ema_update="last", final_loss="cascade", local_loss="ce",
                               independent_head="reference")}
MLAAN_RECOMMENDED = dict(laminae=2, ema_update="all", final_loss="weighted")


@pytest.mark.parametrize("path", [p for p in CONFIGS if "_mlaan_" in p and "/cifar10/" in p
                                  and not p.endswith("_recommended.yaml")], ids=os.path.basename)
def test_mlaan_configs_ship_the_papers_setting_and_ours(path):
    """The plain name is the paper's published CIFAR setting, ``_recommended`` timm_local's variant; headers say so."""
    recommended = path[:-len(".yaml")] + "_recommended.yaml"
    assert os.path.exists(recommended)
    base = parse_args(["--config", path]).model_kwargs["base"]
    for config, expected, says in ((path, MLAAN_PAPER[base], "Setting: the paper's"),
                                   (recommended, MLAAN_RECOMMENDED, "Setting: timm_local's recommended variant")):
        kwargs = parse_args(["--config", config]).model_kwargs
        assert {k: kwargs.get(k) for k in expected} == expected, config
        with open(config) as f:
            assert any(line.startswith("# " + says) for line in f), config


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, CONFIG_DIR))
def test_config_builds_its_model(path):
    args = parse_args(["--config", path])
    folder, name = os.path.basename(os.path.dirname(path)), os.path.basename(path)
    match = NAME.match(name)
    assert match, f"{name} does not follow <model>_k<K>[_suffix[_suffix]].yaml"
    assert args.model == match["model"] and args.dataset == folder
    method = match["model"].rsplit("_", 1)[1]
    if folder == "imagenet":
        batch_sizes, lr, epochs = IMAGENET_RECIPES[method]
        assert args.batch_size in (batch_sizes if isinstance(batch_sizes, tuple) else (batch_sizes,))
        assert (args.lr, args.epochs, args.sched, args.warmup_epochs) == (lr, epochs, "cosine", 0)
    else:
        r400 = method in ("man", "mlaan") or name.endswith("_r400.yaml")
        assert args.epochs == (400 if r400 else 160)
        assert (args.batch_size, args.lr) == ((128, 0.1) if folder == "stl10" else (1024, 0.8))
        assert (args.sched, args.warmup_epochs) == ("infopro_cosine", 10)
    assert (args.opt, args.momentum, args.weight_decay) == ("sgd", 0.9, 1e-4)
    spec = get_dataset_spec(args.dataset)
    model = timm.create_model(model_name_for_dataset(args.model, spec.name), num_classes=spec.num_classes,
                              **args.model_kwargs)
    assert model.num_local_modules == int(match["k"]) == args.model_kwargs["num_local_modules"]


def test_quickstart_config_is_the_short_local_learning_run():
    args = parse_args(["--config", os.path.join(CONFIG_DIR, "quickstart.yaml")])
    assert (args.model, args.dataset, args.epochs, args.max_train_samples, args.max_eval_samples) == (
        "resnet32_infopro", "cifar10", 2, 6000, 2000)
    assert args.mixed_precision == "auto"  # bf16 only where the CPU has it natively (10x slower where emulated)
    assert timm.create_model(args.model, **args.model_kwargs).num_local_modules == 4


@pytest.mark.parametrize("path", SWEEPS, ids=os.path.basename)
def test_sweep_files_resolve_to_valid_train_configs(path, monkeypatch):
    monkeypatch.chdir(os.path.dirname(CONFIG_DIR))  # the sweep's paths are relative to the repository root
    sweep = load_sweep(path)
    assert sweep.runs and all(run.hub_name.startswith(run.config["model"] + ".") for run in sweep.runs)
    epochs = {run.config["epochs"] for run in sweep.runs}
    assert len(epochs) == 1  # one shared recipe


def test_unknown_config_key_names_the_closest(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: resnet32_dgl\nbatch_sise: 64\n")
    with pytest.raises(ValueError, match=r"unknown config key 'batch_sise'; did you mean 'batch_size'"):
        parse_args(["--config", str(path)])


def test_flags_win_over_config_and_model_kwargs_merge(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model: resnet32_man\nlr: 0.8\nbatch-size: 1024\nmodel_kwargs:\n  num_local_modules: 15\n"
                    "  momentum: 0.995\n")
    args = parse_args(["-c", str(path), "--lr", "0.1", "--model-kwargs", "momentum=0.999", "base='dgl'", "img_size=96"])
    assert (args.lr, args.batch_size) == (0.1, 1024)
    assert args.model_kwargs == {"num_local_modules": 15, "momentum": 0.999, "base": "dgl", "img_size": 96}
