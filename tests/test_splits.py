"""Split tables (METHODS.md §2), automatic and explicit splits."""
import pytest
import timm

from timm_local.local.split import balanced_cuts
from timm_local.models.cifar_resnet_local import paper_splits


def blocks_per_module(model):
    return [len(m.blocks) for m in model.local_modules]


@pytest.mark.parametrize("k,expected", [
    (2, [7, 8]), (3, [5, 5, 5]), (4, [3, 4, 4, 4]), (8, [1, 2, 2, 2, 2, 2, 2, 2]), (16, [0] + [1] * 15), (15, [1] * 15),
])
def test_resnet32_tables(k, expected):
    assert blocks_per_module(timm.create_model("resnet32_dgl", num_local_modules=k)) == expected


@pytest.mark.parametrize("k,expected", [
    (2, [27, 27]), (3, [18, 18, 18]), (4, [12, 14, 14, 14]), (8, [5] + [7] * 7), (16, [2] + [3] * 8 + [4] * 7),
    (32, [2, 1, 2, 1, 2, 2, 2, 2, 1, 2, 1] * 2 + [2, 2, 1, 2, 1, 2, 2, 2, 2, 2]), (54, [1] * 54),
])
def test_resnet110_tables(k, expected):
    assert blocks_per_module(timm.create_model("resnet110_dgl", num_local_modules=k)) == expected


@pytest.mark.parametrize("tag,k,expected", [
    ("cifar10", 2, [15, 39]), ("cifar10", 3, [10, 11, 33]), ("cifar10", 4, [7, 8, 12, 27]),
    ("stl10", 3, [9, 11, 34]), ("stl10", 4, [7, 8, 12, 27]),
])
def test_infopro_star_balanced_tables(tag, k, expected):
    model = timm.create_model(f"resnet110_infopro.{tag}", num_local_modules=k, split="balanced")
    assert blocks_per_module(model) == expected and model.split_kind == "balanced"


def test_automatic_split_balances_measured_activation_memory():
    model = timm.create_model("resnet32_dgl", num_local_modules=5)
    assert model.split_kind == "auto" and sum(blocks_per_module(model)) == 15
    probe = model._probe
    costs = [probe.stem_bytes * (k == 0) + sum(probe.block_bytes[j] for j in range(s, e))
             for k, (s, e) in enumerate(zip((0, *model.cuts), (*model.cuts, 15)))]
    even = [3] * 5  # equal block counts put 9 stage-1 blocks in the first 3 modules
    even_costs = [probe.stem_bytes * (k == 0) + sum(probe.block_bytes[3 * k:3 * k + 3]) for k in range(5)]
    assert max(costs) <= max(even_costs) and blocks_per_module(model) != even
    assert balanced_cuts(probe, 1) == ()


def test_explicit_split_and_even_split():
    model = timm.create_model("resnet32_infopro", split=[2, 9])
    assert blocks_per_module(model) == [2, 7, 6] and model.split_kind == "explicit"
    assert blocks_per_module(timm.create_model("resnet32_dgl", num_local_modules=4, split="even")) == [4, 4, 4, 3]


def test_tables_cover_the_papers_k():
    assert set(paper_splits(32)["paper"]) == {2, 3, 4, 8, 16}
    assert set(paper_splits(110)["paper"]) == {2, 3, 4, 8, 16, 32}


def _pair_peak(costs, cuts):
    bounds = list(zip((0, *cuts), (*cuts, costs.num_blocks)))
    return max(costs.module_bytes(*bounds[k]) + (costs.held_bytes(*bounds[k - 1]) if k else 0)
               for k in range(len(bounds)))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [2, 3, 4])
def test_a_cascade_split_minimises_the_largest_pair_of_consecutive_modules(seed, k):
    """For cascade methods (MLAAN holds modules k − 1 and k) the split's peak equals a brute force over every split."""
    import itertools
    import random

    from timm_local.local.split import ModuleCosts

    rng = random.Random(seed)
    n = 9
    costs = ModuleCosts(stem_bytes=rng.randint(1, 50), block_bytes=tuple(rng.randint(1, 50) for _ in range(n)),
                        feature_bytes=tuple(rng.randint(1, 20) for _ in range(n + 1)),
                        saved_by_producer=tuple(rng.random() < 0.5 for _ in range(n + 1)),
                        aux_bytes=(0, *(rng.randint(0, 30) for _ in range(n - 1)), 0), first_module_aux=False,
                        cascade_depth=2)
    brute = min(_pair_peak(costs, cuts) for cuts in itertools.combinations(range(1, n), k - 1))
    cuts = balanced_cuts(costs, k)
    assert len(cuts) == k - 1 and _pair_peak(costs, cuts) == brute


def test_mlaans_measured_split_holds_less_than_the_papers_split():
    from timm_local.local.split import measure_module_costs

    model = timm.create_model("resnet110_mlaan", num_local_modules=4, split="measured")
    costs = measure_module_costs(model._describe(model.backbone), model.method, model._probe, 10, model.mean,
                                 model.std)
    assert costs.cascade_depth == 2 and not costs.first_module_aux and max(costs.aux_bytes) > 0
    assert _pair_peak(costs, model.cuts) < 0.8 * _pair_peak(costs, paper_splits(110)["paper"][4])
