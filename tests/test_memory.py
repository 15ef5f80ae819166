"""The interleaved step frees each module's graph: count bytes saved for backward (issue: timm_local core)."""
import timm
import torch

from conftest import batch
from timm_local.bench import SavedTensorMeter
from timm_local.local.split import measure_module_costs


def peak_saved_bytes(name: str, **kwargs) -> int:
    model = timm.create_model(name, **kwargs)
    meter = SavedTensorMeter(model)
    with meter.measure():
        model.local_step(*batch(n=16))
    return meter.peak


def test_interleaved_step_holds_at_most_half_of_e2e_saved_activations():
    e2e = peak_saved_bytes("resnet110_e2e")
    infopro = peak_saved_bytes("resnet110_infopro", num_local_modules=4)
    print(f"\npeak bytes saved for backward, resnet110, batch 16, 32 px: e2e {e2e / 2**20:.1f} MiB, "
          f"infopro K=4 {infopro / 2**20:.1f} MiB, ratio {infopro / e2e:.3f}")
    assert infopro <= 0.5 * e2e


def test_joint_mode_saves_no_memory():
    model = timm.create_model("resnet110_infopro", num_local_modules=4)
    meter = SavedTensorMeter(model)
    with meter.measure():
        _, losses = model.forward_local(*batch(n=16))
        sum(losses).backward()
    assert meter.peak > 0.8 * peak_saved_bytes("resnet110_e2e")


def test_mlaan_holds_two_modules_and_frees_everything_after_the_step():
    """MLAAN (2 laminae) keeps modules k − 1 and k alive while module k trains: the step's peak is the largest
    such pair, as the measured costs predict, and nothing saved outlives the step (the aux graphs, kept with
    retain_graph for the cascade, included)."""
    model = timm.create_model("resnet32_mlaan", num_local_modules=4, split="measured")
    layout = model._describe(model.backbone)
    costs = measure_module_costs(layout, model.method, model._probe, 10, model.mean, model.std)
    bounds = list(zip((0, *model.cuts), (*model.cuts, layout.num_blocks)))
    predicted = max(costs.module_bytes(*bounds[k]) + (costs.held_bytes(*bounds[k - 1]) if k else 0)
                    for k in range(len(bounds)))
    meter = SavedTensorMeter(model)
    with meter.measure():
        model.local_step(*batch(n=16))
    assert meter.live == 0
    assert abs(meter.peak / 16 - predicted) <= 0.05 * predicted
