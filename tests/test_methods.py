"""What each method computes: SupCon, λ schedules, MAN's EMA rule, MLAAN's chains, and that each learns."""

import copy

import pytest
import timm
import torch

from conftest import batch
from timm_local.methods.losses import supervised_contrastive_loss
from timm_local.methods.mlaan import LEAP_CHAINS


def supcon_brute_force(z, labels, tau=0.07):
    """METHODS.md §4.2 written as loops over anchors and pairs."""
    n = len(labels)
    total = 0.0
    for a in range(n):
        denominator = sum(torch.exp(z[a] @ z[k] / tau) for k in range(n) if k != a)
        positives = [b for b in range(n) if b != a and labels[b] == labels[a]]
        terms = [z[a] @ z[b] / tau - torch.log(denominator) for b in positives]
        total = total + (sum(terms) / len(terms) if terms else 0.0)
    return -total / n


def test_supcon_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    z = torch.nn.functional.normalize(torch.randn(12, 16, generator=g, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 2, 1, 4, 0])  # class 3 and 4: anchors without positives
    got = supervised_contrastive_loss(z, labels)
    torch.testing.assert_close(got.double(), supcon_brute_force(z, labels), rtol=1e-5, atol=1e-5)


def weights_of(model):
    return [(round(model.aux[k].recon_weight, 6), round(model.aux[k].task_weight, 6))
            for k in range(model.num_local_modules - 1)]


def test_infopro_published_lambda_schedule_by_module_index():
    # ResNet-32, CIFAR-10, K = 2: (ixx_1, ixy_1, ixx_2, ixy_2) = (5, 1, 0, 0); r = 0.
    assert weights_of(timm.create_model("resnet32_infopro", num_local_modules=2)) == [(5.0, 1.0)]
    # K = 4: (6, 0, 1, 2); r = k / 2 for k = 0, 1, 2.
    assert weights_of(timm.create_model("resnet32_infopro", num_local_modules=4)) == [(6.0, 0.0), (3.5, 1.0), (1.0, 2.0)]
    # K = 16: (5, 0.05, 0.2, 0.5); r = k / 14.
    w = weights_of(timm.create_model("resnet32_infopro", num_local_modules=16))
    assert len(w) == 15 and w[0] == (5.0, 0.05) and w[14] == (0.2, 0.5) and w[7] == (2.6, 0.275)
    # Dataset-specific rows come from the tag: STL-10 ResNet-110 K = 4 is (20, 0.2, 5, 2).
    stl = timm.create_model("resnet110_infopro.stl10", num_local_modules=4)
    assert weights_of(stl)[0] == (20.0, 0.2) and weights_of(stl)[2] == (5.0, 2.0)


def test_man_stage_rule_is_clamped_and_uses_the_next_blocks_stage():
    model = timm.create_model("resnet32_man", num_local_modules=15, weight_schedule="stage")
    w = weights_of(model)
    # next block of aux k is block k + 1; blocks 1-4 are stage 1, 5-9 stage 2, 10-14 stage 3. These 15 modules
    # are MAN's "K=16" (the stem counts as a module in MAN's code), so K - 2 = 14 (METHODS.md §5):
    # aux 0 (next block [1,1]): r = 1/14 -> (5 * 13/14, 0.5 * 13/14) = (4.642857, 0.464286).
    assert w[0] == (4.642857, 0.464286)
    assert w[4] == (round(5 * 12 / 14, 6), round(0.5 * 12 / 14, 6))  # next block 5 = [2,0]: r = 2/14
    assert w[9] == w[13] == (round(5 * 11 / 14, 6), round(0.5 * 11 / 14, 6))  # next block in stage 3: r = 3/14
    eight = weights_of(timm.create_model("resnet32_man", num_local_modules=8, weight_schedule="stage"))
    assert eight[0] == (round(5 * 5 / 6, 6), round(0.5 * 5 / 6, 6))  # K=8 is 8 modules: r = 1/6 (unchanged)
    five = weights_of(timm.create_model("resnet32_man", num_local_modules=5, weight_schedule="stage"))
    assert all(r >= 0 and t >= 0 for r, t in five)  # the reference would extrapolate below 0 for K = 3, 4
    # K = 4: r = stage / 2 reaches 1 for aux nets 1, 2, where (5, 0.5) -> (0, 0): modules 1, 2 would never train
    with pytest.raises(ValueError, match=r"module\(s\) 1, 2 recon and task weight 0 .* would never be trained"):
        timm.create_model("resnet32_man", num_local_modules=4, weight_schedule="stage")
    with pytest.raises(ValueError, match=r"module\(s\) 0 recon and task weight 0"):
        timm.create_model("resnet32_infopro", num_local_modules=3, recon_weights=(0, 5), task_weights=(0, 1))


def test_man_one_block_per_module_resnet110_divides_by_53():
    w = weights_of(timm.create_model("resnet110_man", num_local_modules=54, weight_schedule="stage"))
    assert w[0] == (round(5 * 52 / 53, 6), round(0.5 * 52 / 53, 6))  # "K=55": next block [1,1], r = 1/53
    assert w[-1] == (round(5 * 50 / 53, 6), round(0.5 * 50 / 53, 6))  # next block in stage 3: r = 3/53


def test_mlaan_infopro_stage_rule_divides_by_the_papers_k():
    """MLAAN's infopro base uses the stage of module k's own last block; its 15-module "K=16" divides by 14."""
    model = timm.create_model("resnet32_mlaan", num_local_modules=15, base="infopro")

    def paths(k):
        return [(round(p.recon_weight, 6), round(p.task_weight, 6)) for p in (model.aux[k].independent,
                                                                              model.aux[k].cascaded)]
    assert paths(1) == [(4.642857, 0.464286)] * 2  # last block 1 = [1,1]: r = 1/14
    assert paths(5) == [(round(5 * 12 / 14, 6), round(0.5 * 12 / 14, 6))] * 2  # last block 5 = [2,0]: r = 2/14
    assert paths(13) == [(round(5 * 11 / 14, 6), round(0.5 * 11 / 14, 6))] * 2  # stage 3: r = 3/14


def test_man_momentum_copy_follows_the_next_modules_first_block():
    model = timm.create_model("resnet32_man", num_local_modules=5, momentum=0.9)
    for k, cut in enumerate(model.cuts):
        pair = model.aux[k].transform
        source = model.local_modules[k + 1].blocks[0]
        assert pair.source is source
        for ema_p, src_p, lb_p in zip(pair.momentum.parameters(), source.parameters(), pair.learnable.parameters()):
            assert torch.equal(ema_p, src_p) and ema_p.data_ptr() != src_p.data_ptr()
            assert not ema_p.requires_grad and lb_p.requires_grad
        assert any(not torch.equal(a, b) for a, b in zip(pair.learnable.parameters(), source.parameters()))
    pair = model.aux[1].transform
    source = model.local_modules[2].blocks[0]
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
        for b in source.buffers():
            b.add_(3)
    before = [p.clone() for p in pair.momentum.parameters()]
    buffers_before = [b.clone() for b in pair.momentum.buffers()]
    model.momentum_update()
    for old, new, src in zip(before, pair.momentum.parameters(), source.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * src)
    assert all(torch.equal(a, b) for a, b in zip(buffers_before, pair.momentum.buffers()))


def test_man_reference_random_ema_init():
    model = timm.create_model("resnet32_man", num_local_modules=5, ema_init="random")
    pair = model.aux[0].transform
    assert not torch.equal(pair.momentum.conv1.weight, pair.source.conv1.weight)


def test_mlaan_chains_follow_the_reference_tables():
    model = timm.create_model("resnet32_mlaan", num_local_modules=15)
    assert model.aux[0].__class__.__name__ == "Identity"  # module 0: no loss of its own (§9 B12)
    assert model.aux[1].cascaded.transform.chain == LEAP_CHAINS[("resnet32", 15)][1] == (5, 10, 12, 14)
    assert model.aux[10].cascaded.transform.chain == (11, 12, 14)
    assert model.aux[13].cascaded.transform.chain == (14,)
    first = model.aux[5].cascaded.transform.first
    assert first.source is model.backbone.layer3[0]
    assert torch.equal(first.learnable.conv1.weight, first.source.conv1.weight)  # CIFAR code: clones are copies
    auto = timm.create_model("resnet32_mlaan", num_local_modules=4)
    chains = [auto.aux[k].cascaded.transform.chain for k in range(1, 3)]
    assert all(chain[-1] == 14 for chain in chains)


def test_mlaan_last_only_ema_update_freezes_other_twins():
    model = timm.create_model("resnet32_mlaan", num_local_modules=4, ema_update="last", momentum=0.5)
    twins = {k: model.aux[k].cascaded.transform.first for k in (1, 2)}
    before = {k: twin.momentum.conv1.weight.clone() for k, twin in twins.items()}
    with torch.no_grad():
        for twin in twins.values():
            twin.source.conv1.weight.add_(1.0)
    model.momentum_update()
    assert torch.equal(twins[1].momentum.conv1.weight, before[1])
    assert not torch.equal(twins[2].momentum.conv1.weight, before[2])


def _bn_batch_stats(bn_input):
    """Per-channel batch mean and unbiased variance, what one train-mode BatchNorm forward averages in."""
    return bn_input.mean((0, 2, 3)), bn_input.var((0, 2, 3), unbiased=True)


def test_mlaan_step_updates_batchnorm_statistics_as_the_reference_does(one_thread):
    """METHODS.md §6.2, §9 B13, with 2 laminae, K = 4 (cuts 3, 7, 11): the reference runs the stem once per step,
    module 0's blocks twice (own path, cascade 1), module 1's three times (own path, cascades 1 and 2). With
    momentum m = 0.1, n identical updates from (mean 0, var 1) give mean (1 − 0.9ⁿ)·μ, var 0.9ⁿ + (1 − 0.9ⁿ)·v."""
    model = timm.create_model("resnet32_mlaan", num_local_modules=4)
    assert model.cuts == (3, 7, 11)
    x, y = batch(n=8, seed=4)
    with torch.no_grad():  # the batch statistics each BatchNorm sees, from an untouched copy
        probe = copy.deepcopy(model.backbone)
        stem_conv = probe.conv1(x)
        h = probe.forward_stem(x)
        block0_conv = probe.layer1[0].conv1(h)
        for block in probe.layer1[:3]:
            h = block(h)
        block3_conv = probe.layer1[3].conv1(h)
    model.local_step(x, y)
    for bn, bn_input, n in ((model.backbone.bn1, stem_conv, 1), (model.backbone.layer1[0].bn1, block0_conv, 2),
                            (model.backbone.layer1[3].bn1, block3_conv, 3)):
        mean, var = _bn_batch_stats(bn_input)
        keep = 0.9 ** n
        torch.testing.assert_close(bn.running_mean, (1 - keep) * mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, keep + (1 - keep) * var, rtol=1e-5, atol=1e-6)
        assert bn.num_batches_tracked.item() == n


def test_mlaan_infopro_reference_independent_head_is_contrastive():
    """resnetInfoProbin.py builds the independent head with its defaults ('1c2f', contrast, 128-d) whatever the
    cascaded path uses (METHODS.md §6.4); independent_head='same' repeats the cascaded path's settings."""
    model = timm.create_model("resnet32_mlaan", num_local_modules=15, base="infopro", local_loss="ce",
                              aux_config="2c2f", independent_head="reference")
    independent, cascaded = model.aux[5].independent, model.aux[5].cascaded
    assert (independent.loss_kind, cascaded.loss_kind) == ("contrast", "ce")
    assert independent.head[-1].out_features == 128 and cascaded.head[-1].out_features == 10
    assert sum(isinstance(m, torch.nn.Conv2d) for m in independent.head) == 1  # 1c2f
    assert sum(isinstance(m, torch.nn.Conv2d) for m in cascaded.head) == 2  # 2c2f
    same = timm.create_model("resnet32_mlaan", num_local_modules=15, base="infopro", local_loss="ce")
    assert same.aux[5].independent.loss_kind == "ce" and same.aux[5].independent.head[-1].out_features == 10
    with pytest.raises(ValueError, match=r"independent_head='reference' .* use it with base='infopro'"):
        timm.create_model("resnet32_mlaan", independent_head="reference")


LEARNERS = [
    ("resnet32_greedy", {}), ("resnet32_dgl", {}), ("resnet32_infopro", {}),
    ("resnet32_infopro", {"local_loss": "ce"}),
    ("resnet32_man", {"recon_weights": (5.0, 1.0), "task_weights": (0.5, 0.5)}),
    ("resnet32_man", {"base": "dgl"}), ("resnet32_mlaan", {}), ("resnet32_e2e", {"num_local_modules": 1}),
]


@pytest.mark.parametrize("name,kwargs", LEARNERS)
def test_a_few_sgd_steps_lower_every_local_loss(name, kwargs):
    kwargs = {"num_local_modules": 4, **kwargs}
    model = timm.create_model(name, **kwargs)
    x, y = batch(n=16, seed=5)
    optimizer = torch.optim.SGD(model.local_param_groups(), lr=0.05, momentum=0.9)
    history = []
    for _ in range(8):
        optimizer.zero_grad(set_to_none=True)
        out = model.local_step(x, y)
        model.momentum_update()
        optimizer.step()
        history.append([loss.item() for loss in out.losses])
    for k, module in enumerate(model.local_modules):
        if module.objective is not None:
            assert history[-1][k] < history[0][k], (k, [h[k] for h in history])


def test_loading_backbone_weights_refreshes_block_copies():
    source = timm.create_model("resnet32_mlaan", num_local_modules=4)
    target = timm.create_model("resnet32_mlaan", num_local_modules=4)
    target.load_state_dict(source.inference_state_dict())
    chain = target.aux[2].cascaded.transform
    assert torch.equal(chain.first.momentum.conv1.weight, chain.first.source.conv1.weight)
    assert all(torch.equal(c.conv1.weight, s.conv1.weight) for c, s in chain.copied_pairs())
    man = timm.create_model("resnet32_man", num_local_modules=5)
    lb_before = man.aux[0].transform.learnable.conv1.weight.clone()
    man.load_state_dict(source.inference_state_dict())
    pair = man.aux[0].transform
    assert torch.equal(pair.momentum.conv1.weight, pair.source.conv1.weight)
    assert torch.equal(pair.learnable.conv1.weight, lb_before)  # LB is initialised independently, not a copy
