"""Publishing: export a run folder to the Hub layout, load it back through timm's real code paths, push, table.

Offline and on the CPU: the Hub is replaced by what it serves, a Hugging Face cache laid out by the test
(``models--<org>--<name>/refs/main`` + ``snapshots/<rev>/``) with ``HF_HUB_OFFLINE=1``.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import huggingface_hub
import pytest
import safetensors.torch
import timm
import torch
import yaml
from huggingface_hub import ModelCard, constants

import timm_local
from timm_local.hub import parse_tag, published_hub_ids, published_tags
from timm_local.hub.__main__ import main
from timm_local.hub.card import build_card
from timm_local.hub.export import export_run, ignore_in_git, rebuild_model
from timm_local.hub.push import push_folder
from timm_local.hub.run import load_reference_run, load_run
from timm_local.hub.stats import count_stats
from timm_local.hub.table import END, START, published_table, update_readme

ARCH, K, DATASET = "resnet32_dgl", 4, "cifar10"
NAME = f"{ARCH}.k{K}_{DATASET}"
ORG = "test-org"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def write_run(run_dir, model, model_kwargs, *, results=True, top1=41.5):
    """A run folder as the trainer writes it (args.yaml, last.pth.tar, results.json)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    args = {"model": ARCH, "model_kwargs": model_kwargs, "dataset": DATASET, "data_dir": None, "epochs": 2,
            "batch_size": 64, "lr": 0.1, "opt": "sgd", "weight_decay": 1e-4, "momentum": 0.9,
            "sched": "infopro_cosine", "warmup_epochs": 0, "seed": 42, "mixed_precision": "no", "world_size": 1}
    (run_dir / "args.yaml").write_text(yaml.safe_dump(args))
    torch.save({"epoch": 1, "arch": ARCH, "state_dict": model.state_dict(), "optimizer": {}, "scheduler": {},
                "args": args, "model_kwargs": model_kwargs, "metric": top1, "version": 2}, run_dir / "last.pth.tar")
    if results:
        (run_dir / "results.json").write_text(json.dumps({
            "model": ARCH, "model_kwargs": model_kwargs, "dataset": DATASET, "num_local_modules": K, "epochs": 2,
            "top1_final": top1, "top5_final": 88.25, "top1_best": top1, "best_epoch": 1, "eval_loss_final": 1.61,
            "train_images_per_sec": 310.0, "peak_memory_mb": 912.0, "wall_time_s": 55.0, "num_params": 0,
            "device": "cpu (test)", "command": "python train.py --model resnet32_dgl --epochs 2", "date": "today"}))
    return run_dir


def trained_model():
    """A LocalNet whose BN statistics moved away from their initial values (so a bad load shows in the logits)."""
    model = timm.create_model(f"{ARCH}.{DATASET}", num_local_modules=K, num_classes=10)
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 32, 32))
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One run exported (with a memory benchmark) into a temporary hub_cards/; returns paths and reference logits."""
    root = tmp_path_factory.mktemp("hub")
    model = trained_model()
    run = write_run(root / "run", model, {"num_local_modules": K})
    bench = root / "bench.json"
    bench.write_text(json.dumps({"command": "python -m timm_local.bench.memory", "device": "test-gpu",
                                 "batch_size": 128, "results": [
                                     {"model": "resnet32_e2e", "num_local_modules": 1, "peak_memory_mb": 1000.0},
                                     {"model": "resnet32_e2e", "grad_checkpointing": True, "peak_memory_mb": 10.0},
                                     {"model": ARCH, "num_local_modules": K, "peak_memory_mb": 400.0}]}))
    hub_dir = root / "hub_cards"
    assert main(["export", str(run), "--hub-dir", str(hub_dir), "--bench-json", str(bench)]) == 0
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
    return {"root": root, "run": run, "hub_dir": hub_dir, "folder": hub_dir / NAME, "x": x, "logits": logits,
            "model": model}


def hf_cache(root, folder, repo_id):
    """The Hugging Face cache a download of ``repo_id`` leaves: refs/main → snapshots/<rev>/<files>."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    return root


@pytest.fixture
def offline_cache(exported, tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE = a cache holding <ORG>/<NAME>."""
    cache = hf_cache(tmp_path / "hf-cache", exported["folder"], f"{ORG}/{NAME}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once at import; set it for this process too
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def logits_of(model, x):
    with torch.no_grad():
        return model.eval()(x)


# ------------------------------------------------------------------------------------------------ export
def test_export_writes_the_hub_layout(exported):
    folder = exported["folder"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == ARCH and config["num_classes"] == 10
    assert config["label_names"][0] == "airplane"
    assert config["pretrained_cfg"]["tag"] == f"k{K}_{DATASET}"
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and config["pretrained_cfg"]["crop_pct"] == 1.0
    assert config["model_args"]["num_local_modules"] == K
    assert config["model_args"]["aux_config"] == exported["model"].method.aux_config
    weights = safetensors.torch.load_file(folder / "model.safetensors")
    assert weights.keys() == exported["model"].inference_state_dict().keys()
    assert not any(k.startswith("aux.") for k in weights)


def test_local_dir_loads_identical_logits(exported):
    model = timm.create_model(f"local-dir:{exported['folder']}", pretrained=True)
    assert torch.equal(logits_of(model, exported["x"]), exported["logits"])
    assert model.num_local_modules == K  # model_args rebuild the same local modules
    assert model.pretrained_cfg["label_names"][0] == "airplane"


def test_model_card(exported):
    card = ModelCard.load(exported["folder"] / "README.md")
    assert card.data.library_name == "timm" and card.data.datasets == ["uoft-cs/cifar10"]
    (result,) = card.data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_type) == ("accuracy", 41.5, "uoft-cs/cifar10")
    stats = count_stats(exported["model"])
    text = card.text
    assert f"Params (M): {stats.params / 1e6:.2f}" in text and f"GMACs: {stats.macs / 1e9:.3f}" in text
    assert 0 < stats.macs and stats.params < stats.train_params
    assert "400 MB vs 1000 MB for E2E (-60.0%)" in text and "test-gpu" in text
    assert "python train.py --model resnet32_dgl --epochs 2" in text
    usage = text[text.index("```python"):]
    assert usage.splitlines()[1].startswith("import timm_local")
    assert "@inproceedings{belilovsky2020decoupled" in text and "@techreport{krizhevsky2009learning" in text


def test_card_says_not_measured_without_results_or_benchmark(exported, tmp_path):
    run_dir = write_run(tmp_path / "unfinished", exported["model"], {"num_local_modules": K}, results=False)
    run = load_run(run_dir / "last.pth.tar")
    model = rebuild_model(run)
    card = build_card(NAME, f"{ORG}/{NAME}", model, run, count_stats(model))
    assert "Peak training memory vs E2E:** not yet measured" in card.text
    assert "not yet measured (the run had not finished" in card.text
    assert card.data.to_dict()["timm_local"]["peak_memory_mb"] is None


def test_export_rejects_a_checkpoint_that_does_not_fit_its_run(exported, tmp_path):
    run_dir = write_run(tmp_path / "bad", exported["model"], {"num_local_modules": 8})  # trained with K=4
    with pytest.raises(ValueError, match="does not fit timm.create_model"):
        export_run(run_dir, hub_dir=tmp_path / "cards")
    with pytest.raises(ValueError, match="must be 'resnet32_dgl.<tag>'"):
        export_run(exported["run"], name="resnet32_man.k4_cifar10", hub_dir=tmp_path / "cards")


def test_large_weights_are_git_ignored_once(tmp_path):
    ignore_in_git(tmp_path, "resnet101_man.k4_in1k/model.safetensors")
    ignore_in_git(tmp_path, "resnet101_man.k4_in1k/model.safetensors")
    assert (tmp_path / ".gitignore").read_text() == "/resnet101_man.k4_in1k/model.safetensors\n"


# ------------------------------------------------------------------------------------------------ loading
def test_mismatched_weights_give_a_clear_error(exported, tmp_path):
    weights = safetensors.torch.load_file(exported["folder"] / "model.safetensors")
    truncated = {k: v for k, v in weights.items() if not k.startswith("layer3.4.")}  # e.g. a shallower ResNet
    wrong_head = {**weights, "fc.weight": torch.zeros(100, 64), "fc.bias": torch.zeros(100)}
    for state_dict, error in ((truncated, "missing keys.*layer3.4.conv1.weight"),
                              (wrong_head, "size mismatch for fc.weight")):
        safetensors.torch.save_file(state_dict, tmp_path / "wrong.safetensors")
        with pytest.raises(RuntimeError, match=error):
            timm.create_model(ARCH, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "wrong.safetensors")))


def test_num_classes_adapts_the_head(exported):
    model = timm.create_model(f"local-dir:{exported['folder']}", pretrained=True, num_classes=100)
    assert model.get_classifier().out_features == 100 and model.num_classes == 100
    assert torch.equal(model.conv1.weight, exported["model"].conv1.weight)
    assert logits_of(model, exported["x"]).shape == (4, 100)


def test_registry_hf_hub_id_downloads_from_the_cache(exported, offline_cache):
    overlay = dict(hf_hub_id=f"{ORG}/{NAME}")  # what the registry sets for a hub_cards/ folder (tested below)
    model = timm.create_model(f"{ARCH}.cifar10", pretrained=True, pretrained_cfg_overlay=overlay)
    assert torch.equal(logits_of(model, exported["x"]), exported["logits"])


def test_hf_hub_prefix_downloads_from_the_cache(exported, offline_cache):
    model = timm.create_model(f"hf-hub:{ORG}/{NAME}", pretrained=True)
    assert torch.equal(logits_of(model, exported["x"]), exported["logits"])
    assert model.num_local_modules == K and model.pretrained_cfg["tag"] == f"k{K}_{DATASET}"
    with pytest.raises(huggingface_hub.errors.LocalEntryNotFoundError):
        timm.create_model(f"hf-hub:{ORG}/resnet32_dgl.k8_cifar10", pretrained=True)  # not in the cache


# ------------------------------------------------------------------------------------------------ registry
def test_tags_parse():
    assert parse_tag("k16_cifar10") == parse_tag("r400_k16_cifar10")
    assert (parse_tag("k16_cifar10").dataset, parse_tag("k16_cifar10").num_local_modules) == ("cifar10", 16)
    assert (parse_tag("svhn").dataset, parse_tag("svhn").num_local_modules) == ("svhn", None)
    assert parse_tag(None).dataset is None


def test_hub_cards_folders_become_hf_hub_ids(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("TIMM_LOCAL_HUB_ORG", ORG)
    cards = tmp_path / "cards"
    shutil.copytree(exported["folder"], cards / NAME)
    (cards / "resnet32_man.k4_cifar10").mkdir()  # no config.json: not published
    with pytest.warns(UserWarning, match="not a published model folder"):
        assert published_hub_ids(cards) == {NAME: f"{ORG}/{NAME}"}
    with pytest.warns(UserWarning):
        assert published_tags(ARCH, cards) == {f"k{K}_{DATASET}": f"{ORG}/{NAME}"}
    assert set(published_hub_ids()) <= set(timm_local.list_pretrained())  # the repository's own hub_cards/


@pytest.mark.parametrize("weights_in_cards", [True, False], ids=["committed-file", "hub-cache"])
def test_registered_tag_loads_in_a_fresh_process(exported, tmp_path, weights_in_cards):
    """``import timm_local`` reads hub_cards/ → ``create_model('<arch>.<tag>', pretrained=True)``, offline.

    With the weights committed in the folder (a clone), timm loads that file and the HF cache stays
    empty; without them (a folder holding only the card and config), the Hub id is used (here: a cache).
    The bare architecture name picks the published tag as timm's default.
    """
    cards = tmp_path / "cards"
    shutil.copytree(exported["folder"], cards / NAME)
    if weights_in_cards:
        cache = tmp_path / "empty-hf-cache"
        cache.mkdir()
    else:
        (cards / NAME / "model.safetensors").unlink()
        cache = hf_cache(tmp_path / "hf-cache", exported["folder"], f"{ORG}/{NAME}")
    torch.save({"x": exported["x"], "logits": exported["logits"]}, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import timm, torch, timm_local
        assert timm_local.list_pretrained({ARCH + '*'!r}) == [{NAME!r}], timm_local.list_pretrained()
        cfg = timm.get_pretrained_cfg({NAME!r})
        assert cfg.hf_hub_id == {f'{ORG}/{NAME}'!r}
        assert (cfg.file is not None) == {weights_in_cards!r}, cfg.file
        expected = torch.load({str(tmp_path / 'expected.pt')!r})
        for name in ({NAME!r}, {ARCH!r}):
            model = timm.create_model(name, pretrained=True).eval()
            assert model.num_local_modules == {K}
            with torch.no_grad():
                assert torch.equal(model(expected["x"]), expected["logits"]), name
    """)
    env = {**os.environ, "TIMM_LOCAL_HUB_CARDS": str(cards), "TIMM_LOCAL_HUB_ORG": ORG, "HF_HUB_CACHE": str(cache),
           "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    if weights_in_cards:
        assert not any(cache.iterdir())


# ------------------------------------------------------------------------------------------------ push, table
def test_push_dry_run_lists_the_files(exported, capsys):
    assert main(["push", str(exported["folder"]), "--repo-id", f"{ORG}/{NAME}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would upload to https://huggingface.co/{ORG}/{NAME}" in out
    for name in ("config.json", "model.safetensors", "README.md"):
        assert name in out


def test_push_without_token_says_how_to_log_in(exported, tmp_path, monkeypatch):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    assert huggingface_hub.get_token() is None
    with pytest.raises(RuntimeError, match="hf auth login.*HF_TOKEN"):
        push_folder(exported["folder"], f"{ORG}/{NAME}")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        push_folder(tmp_path, dry_run=True)


def test_table_of_published_models(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("TIMM_LOCAL_HUB_ORG", ORG)
    table = published_table(exported["hub_dir"])
    assert f"[`{NAME}`](https://huggingface.co/{ORG}/{NAME}) | cifar10 | dgl | {K} | 41.50 | -60.0%" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{START}\nold\n{END}\ntail\n")
    update_readme(readme, table)
    assert readme.read_text() == f"# x\n{START}\n{table}\n{END}\ntail\n"
    assert published_table(tmp_path / "empty") == "_No published models yet._"


def test_export_holds_the_backbone_parameters_only(exported):
    """timm's scripts count every parameter (aux nets and momentum copies included); the Hub folder has the network's."""
    model = exported["model"]
    weights = safetensors.torch.load_file(exported["folder"] / "model.safetensors")
    params = dict(model.named_parameters())
    exported_params = {k for k in weights if k in params}
    assert exported_params == {n for n, _ in model.backbone.named_parameters()}
    backbone = sum(weights[k].numel() for k in exported_params)
    assert backbone == count_stats(model).params < sum(p.numel() for p in model.parameters())
    loaded = timm.create_model(f"local-dir:{exported['folder']}", pretrained=True)
    assert sum(p.numel() for p in loaded.backbone.parameters()) == backbone


def test_the_e2e_reference_may_be_a_finished_runs_record_without_weights(exported, tmp_path):
    """A later session on a fresh machine has only the record the sweep report copied (args.yaml, results.json)."""
    record = tmp_path / "resnet32_e2e-k1"
    record.mkdir()
    args = yaml.safe_load((exported["run"] / "args.yaml").read_text())
    (record / "args.yaml").write_text(yaml.safe_dump({**args, "model": "resnet32_e2e", "model_kwargs": {}}))
    results = json.loads((exported["run"] / "results.json").read_text())
    (record / "results.json").write_text(json.dumps({**results, "model": "resnet32_e2e", "top1_final": 77.25}))
    hub_dir = tmp_path / "hub_cards"
    assert main(["export", str(exported["run"]), "--hub-dir", str(hub_dir), "--reference-run", str(record)]) == 0
    card = (hub_dir / NAME / "README.md").read_text()
    assert "77.25" in card and "resnet32_e2e" in card
    with pytest.raises(FileNotFoundError, match="neither a run folder with last.pth.tar nor a finished run's record"):
        load_reference_run(tmp_path)
