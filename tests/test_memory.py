"""The interleaved step frees each module's graph: count bytes saved for backward (issue: timm_local core)."""
import timm
import torch

from conftest import batch


class SavedTensorMeter:
    """Peak bytes of activation storage held for backward, via ``saved_tensors_hooks``.

    Each saved tensor's storage is counted once while any saved reference to it is alive; the
    reference dies when autograd frees the graph. Parameters are excluded (they are not activations).
    """

    def __init__(self, model: torch.nn.Module):
        self.param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.refs: dict[int, int] = {}
        self.live = self.peak = 0

    def pack(self, tensor):
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in self.param_storages:
            return tensor
        return _Saved(tensor, ptr, self)

    @staticmethod
    def unpack(saved):
        return saved.tensor if isinstance(saved, _Saved) else saved

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


class _Saved:
    def __init__(self, tensor, ptr, meter):
        self.tensor, self.ptr, self.meter = tensor, ptr, meter
        if meter.refs.get(ptr, 0) == 0:
            meter.live += tensor.untyped_storage().nbytes()
            meter.peak = max(meter.peak, meter.live)
        meter.refs[ptr] = meter.refs.get(ptr, 0) + 1

    def __del__(self):
        refs = self.meter.refs
        refs[self.ptr] -= 1
        if refs[self.ptr] == 0:
            self.meter.live -= self.tensor.untyped_storage().nbytes()


def peak_saved_bytes(name: str, **kwargs) -> int:
    model = timm.create_model(name, **kwargs)
    meter = SavedTensorMeter(model)
    with meter.hooks():
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
    with meter.hooks():
        _, losses = model.forward_local(*batch(n=16))
        sum(losses).backward()
    assert meter.peak > 0.8 * peak_saved_bytes("resnet110_e2e")
