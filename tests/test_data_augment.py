"""Batch augmentation, sharding and the tensor loader (pure torch; no files)."""
import pytest
import torch
import torch.nn.functional as F

from timm_local.constants import CIFAR10_MEAN, CIFAR10_STD
from timm_local.data import (
    EvalTransform,
    ShardSampler,
    TensorLoader,
    TrainAugment,
    crop_flip,
    draw_crop_flip,
    epoch_order,
    get_dataset_spec,
    normalize,
    shard,
)
from timm_local.data.bench_loader import benchmark_loader


def _images(n=16, c=3, h=8, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)


def _manual(x, dy, dx, flip, pad, mode):
    """Reference: pad each image with F.pad, cut the window, flip; one sample at a time."""
    n, _, h, w = x.shape
    padded = F.pad(x.float(), (pad,) * 4, mode=mode)
    out = []
    for i in range(n):
        crop = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out.append(crop.flip(-1) if flip[i] else crop)
    return torch.stack(out)


@pytest.mark.parametrize("mode", ["reflect", "constant"])
@pytest.mark.parametrize("pad", [2, 4])
def test_crop_flip_matches_manual_per_sample_crop(mode, pad):
    x = _images()
    g = torch.Generator().manual_seed(1)
    dy, dx, flip = draw_crop_flip(x.shape[0], pad, True, g)
    out = crop_flip(x, dy, dx, flip, pad, mode)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    torch.testing.assert_close(out.float(), _manual(x, dy, dx, flip, pad, mode), rtol=0, atol=0)


def test_offsets_cover_range_and_flip_is_fair():
    dy, dx, flip = draw_crop_flip(4000, 4, True, torch.Generator().manual_seed(0))
    assert set(dy.tolist()) == set(range(9)) and set(dx.tolist()) == set(range(9))
    assert 0.45 < flip.float().mean().item() < 0.55


def test_zero_vs_reflect_padding_at_the_corner():
    x = _images(n=1) | 1  # no zero pixels, so zeros can only come from padding
    zero = torch.zeros(1, dtype=torch.long)
    no_flip = torch.zeros(1, dtype=torch.bool)
    z = crop_flip(x, zero, zero, no_flip, 2, "constant")
    assert (z[..., :2, :] == 0).all() and (z[..., :, :2] == 0).all()
    assert torch.equal(z[..., 2:, 2:], x[..., :-2, :-2])
    r = crop_flip(x, zero, zero, no_flip, 2, "reflect")
    assert (r > 0).all()
    assert torch.equal(r[0, :, 0, 2:], x[0, :, 2, :-2])  # row -2 mirrors row 2 (edge not repeated)
    centre = torch.full((1,), 2, dtype=torch.long)
    assert torch.equal(crop_flip(x, centre, centre, no_flip, 2, "reflect"), x)


def test_flip_only():
    x = _images()
    zeros = torch.zeros(x.shape[0], dtype=torch.long)
    flips = torch.ones(x.shape[0], dtype=torch.bool)
    assert torch.equal(crop_flip(x, zeros, zeros, flips, 0, "constant"), x.flip(-1))


def test_svhn_never_flips_and_cifar_does():
    svhn, cifar = get_dataset_spec("svhn"), get_dataset_spec("cifar10")
    assert (svhn.pad, svhn.pad_mode, svhn.hflip) == (2, "constant", False)
    assert (cifar.pad, cifar.pad_mode, cifar.hflip) == (4, "reflect", True)
    _, _, flip = draw_crop_flip(1000, svhn.pad, svhn.hflip, torch.Generator().manual_seed(0))
    assert not flip.any()
    # With padding 0 the SVHN augmentation must be the identity (no flip sneaks in).
    aug = TrainAugment(0, "constant", svhn.hflip, svhn.mean, svhn.std)
    x = _images(n=64)
    torch.testing.assert_close(aug(x, torch.Generator().manual_seed(3)), normalize(x, svhn.mean, svhn.std))
    flipping = TrainAugment(0, "constant", True, svhn.mean, svhn.std)
    assert not torch.equal(flipping(x, torch.Generator().manual_seed(3)), normalize(x, svhn.mean, svhn.std))


def test_train_augment_is_crop_then_normalise_with_the_drawn_offsets():
    spec = get_dataset_spec("cifar10")
    x = _images(n=8, h=32, w=32)
    aug = TrainAugment(spec.pad, spec.pad_mode, spec.hflip, spec.mean, spec.std)
    out = aug(x, torch.Generator().manual_seed(5))
    dy, dx, flip = draw_crop_flip(8, spec.pad, True, torch.Generator().manual_seed(5))
    expected = normalize(_manual(x, dy, dx, flip, spec.pad, spec.pad_mode), spec.mean, spec.std)
    torch.testing.assert_close(out, expected)


def test_normalize_values_and_channels_last():
    x = _images(n=4, h=6, w=6)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    out = EvalTransform(CIFAR10_MEAN, CIFAR10_STD)(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, (x.float() / 255 - mean) / std, rtol=1e-5, atol=1e-5)
    cl = EvalTransform(CIFAR10_MEAN, CIFAR10_STD, channels_last=True)(x)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, out)


def test_epoch_order_reproducible_and_changes_per_epoch():
    a, b = epoch_order(100, seed=1, epoch=0), epoch_order(100, seed=1, epoch=0)
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(100))
    assert not torch.equal(a, epoch_order(100, seed=1, epoch=1))
    assert not torch.equal(a, epoch_order(100, seed=2, epoch=0))
    assert torch.equal(epoch_order(5, 0, 0, shuffle=False), torch.arange(5))


@pytest.mark.parametrize("n,world", [(10, 3), (12, 4), (2, 3), (7, 1)])
def test_shards_even_and_exact(n, world):
    order = epoch_order(n, 0, 0)
    even = [shard(order, r, world, even=True) for r in range(world)]
    assert len({len(s) for s in even}) == 1 and len(even[0]) == -(-n // world)
    assert set(torch.cat(even).tolist()) == set(range(n))
    exact = [shard(order, r, world, even=False) for r in range(world)]
    flat = torch.cat(exact).tolist()
    assert sorted(flat) == list(range(n))  # disjoint and covering, no repeats
    with pytest.raises(ValueError, match="rank"):
        shard(order, world, world)


def _loader(n=10, batch_size=4, **kw):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    labels = torch.arange(n)
    kw.setdefault("transform", TrainAugment(1, "constant", True, (0.0,) * 3, (1 / 255,) * 3))
    return TensorLoader(images, labels, batch_size, **kw)


def _epoch_labels(loader, epoch):
    loader.set_epoch(epoch)
    return [y.tolist() for _, y in loader]


def test_tensor_loader_shuffle_reproducible_and_per_epoch():
    a, b = _loader(seed=3), _loader(seed=3)
    assert _epoch_labels(a, 0) == _epoch_labels(b, 0)
    assert _epoch_labels(a, 0) != _epoch_labels(a, 1)
    assert _epoch_labels(a, 1) == _epoch_labels(b, 1)
    assert _epoch_labels(a, 0) != _epoch_labels(_loader(seed=4), 0)
    flat = sum(_epoch_labels(a, 5), [])
    assert sorted(flat) == list(range(10))
    assert _epoch_labels(_loader(shuffle=False), 0) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_tensor_loader_drop_last_and_len():
    keep = _loader(n=10, batch_size=4)
    assert len(keep) == 3 and [len(y) for y in _epoch_labels(keep, 0)] == [4, 4, 2]
    drop = _loader(n=10, batch_size=4, drop_last=True)
    assert len(drop) == 2 and [len(y) for y in _epoch_labels(drop, 0)] == [4, 4]


def test_tensor_loader_batches_are_augmented_and_normalised():
    loader = _loader(n=6, batch_size=6, shuffle=False)
    x, y = next(iter(loader))
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (6, 3, 4, 4)
    # labels == pixel values, so any non-zero pixel equals its label (zeros come from the zero padding)
    for img, label in zip(x, y):
        assert set(img.unique().tolist()) <= {0.0, float(label)}


def test_tensor_loader_ddp_shards_disjoint_and_covering():
    world = 3
    per_rank = []
    for rank in range(world):
        loader = _loader(n=10, batch_size=2, seed=7, rank=rank, world_size=world)
        per_rank.append(sum(_epoch_labels(loader, 2), []))
    assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == 4  # ceil(10/3), padded
    assert set(sum(per_rank, [])) == set(range(10))
    order = epoch_order(10, 7, 2).tolist()
    assert [order[r::world] for r in range(world)] == [p[:len(order[r::world])] for r, p in enumerate(per_rank)]
    evals = [sum(_epoch_labels(_loader(n=10, batch_size=2, rank=r, world_size=world, shuffle=False,
                                       even_shards=False), 0), []) for r in range(world)]
    assert sorted(sum(evals, [])) == list(range(10))


def test_tensor_loader_resume_mid_epoch_is_exact():
    ref = _loader(n=22, batch_size=4, seed=1)
    ref.set_epoch(2)
    batches = []
    for i, (x, y) in enumerate(ref):
        batches.append((x, y))
        if i == 2:
            state = ref.state_dict()
    assert state == {"epoch": 2, "batch": 3}
    assert ref.state_dict() == {"epoch": 2, "batch": len(ref)}

    resumed = _loader(n=22, batch_size=4, seed=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the usual loop calls set_epoch again: the resume point survives
    rest = list(resumed)
    assert len(rest) == len(batches) - 3
    for (x0, y0), (x1, y1) in zip(batches[3:], rest):
        assert torch.equal(y0, y1) and torch.equal(x0, x1)
    assert len(list(resumed)) == len(batches)  # next iteration is a full epoch again
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # another epoch: resume point dropped
    assert len(list(resumed)) == len(batches)
    resumed.set_epoch(2)
    resumed.skip(4)
    assert [y.tolist() for _, y in resumed] == [y.tolist() for _, y in batches[4:]]


def test_shard_sampler_skip_and_epoch():
    s = ShardSampler(10, rank=1, world_size=2, seed=0)
    s.set_epoch(4)
    full = list(s)
    assert len(full) == len(s) == 5
    s.skip_samples(2)
    assert list(s) == full[2:]
    assert list(s) == full


def test_channels_last_and_validation():
    loader = _loader(transform=EvalTransform((0.5,) * 3, (0.5,) * 3, channels_last=True))
    x, _ = next(iter(loader))
    assert x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="uint8"):
        TensorLoader(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long), 2, transform=EvalTransform((0,), (1,)))
    with pytest.raises(ValueError, match="batch_size"):
        _loader(batch_size=0)


def test_benchmark_loader_counts_batches():
    stats = benchmark_loader(_loader(n=40, batch_size=8), epochs=2, warmup_batches=1)
    assert stats["batches"] == 10 and stats["images"] == 80 and stats["batches_per_s"] > 0
