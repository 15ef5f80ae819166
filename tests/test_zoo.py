"""The committed model zoo: every hub_cards/ folder loads with pretrained=True offline, and validate.py
re-measures the recorded top-1 exactly (benchmarks/cifar10/runs/<run>/validate_first1000.json, written
by benchmarks/cifar10/report.py from the training checkpoint; here through the exported weights)."""
import json
from pathlib import Path

import pytest
import timm
import torch
from accelerate.state import AcceleratorState

import timm_local
from timm_local.hub import published_hub_ids
from timm_local.validate import main as validate_main

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"
RECORDS = sorted((ROOT / "benchmarks" / "cifar10" / "runs").glob("*/validate_first1000.json"))


def test_list_pretrained_is_exactly_the_committed_folders():
    folders = {p.name for p in (ROOT / "hub_cards").iterdir() if (p / "config.json").is_file()}
    assert set(published_hub_ids()) == folders
    for name in folders:
        assert name in timm.list_pretrained(name.partition(".")[0] + "*")
        assert timm.get_pretrained_cfg(name).file == str(ROOT / "hub_cards" / name / "model.safetensors")
    assert set(timm_local.list_pretrained("resnet32_*")) == {n for n in folders if n.startswith("resnet32_")}


@pytest.mark.parametrize("record", RECORDS, ids=[p.parent.name for p in RECORDS])
def test_pretrained_weights_reproduce_the_recorded_top1(record, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected = json.loads(record.read_text())
    if not DATA_DIR.is_dir():
        pytest.skip("the shared CIFAR-10 copy is not next to the repository")
    if int(expected.get("threads", 1)) != 1:
        pytest.skip("recorded with several threads; this test runs with one")
    AcceleratorState._reset_state(reset_partial_state=True)
    got = validate_main(["--model", expected["hub_name"], "--pretrained", "--dataset", "cifar10", "--data-dir",
                         str(DATA_DIR), "--max-eval-samples", str(expected["max_eval_samples"]), "--workers", "0",
                         *expected["validate_flags"]])
    AcceleratorState._reset_state(reset_partial_state=True)
    # bf16 kernels differ between CPUs (native AMX / AVX512-BF16 where the record was made, emulated on AVX2):
    # the same weights may flip an image or two of the 1,000; anything more is a real change of the weights
    one_image = 100.0 / expected["max_eval_samples"]
    exact = precision_is_native(expected["validate_flags"])
    tolerance = 0.0 if exact else 2 * one_image + 1e-9
    assert abs(got["top1"] - expected["top1"]) <= tolerance and abs(got["top5"] - expected["top5"]) <= tolerance


def precision_is_native(flags) -> bool:
    """True unless the record's flags ask for bf16 and this CPU emulates it."""
    from timm_local.precision import native_bf16

    return "bf16" not in flags or native_bf16("cpu") is not False


def test_bare_architecture_name_loads_its_published_default(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    names = sorted(published_hub_ids())
    if not names:
        pytest.skip("no published model yet")
    arch = names[0].partition(".")[0]
    tag = timm.get_pretrained_cfg(arch).tag
    assert f"{arch}.{tag}" in names  # timm's default tag of the architecture is a published one
    default, tagged = timm.create_model(arch, pretrained=True), timm.create_model(f"{arch}.{tag}", pretrained=True)
    assert default.num_local_modules == tagged.num_local_modules
    expected = tagged.inference_state_dict()  # the published weights (the aux nets start fresh in both)
    assert all(torch.equal(v, expected[k]) for k, v in default.inference_state_dict().items())


def test_timms_end_to_end_weights_are_listed_only_as_backbone_initialisation():
    """resnet50_man.a1_in1k loads timm/resnet50.a1_in1k: useful to start from, not MAN weights (issue 13.9)."""
    from timm.models import get_pretrained_cfg

    assert "resnet50_man.a1_in1k" not in timm_local.list_pretrained("resnet50_*")
    assert "resnet50_man.a1_in1k" in timm_local.list_pretrained("resnet50_*", include_backbone_init=True)
    cfg = get_pretrained_cfg("resnet50_man.a1_in1k")
    assert cfg.hf_hub_id == "timm/resnet50.a1_in1k" and cfg.notes[0].startswith("backbone initialisation")
    assert not any(get_pretrained_cfg(name).notes for name in timm_local.list_pretrained())
