"""Loading the benchmarks from local copies of their Hub layouts: synthetic copies of all four, the real
CIFAR-10 copy, the decoded-tensor cache, offline guarantees and error messages."""
import dataclasses
import io
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from timm_local.constants import CIFAR10_LABELS, STL10_LABELS, SVHN_LABELS
from timm_local.data import (
    DATASETS,
    build_loaders,
    get_dataset_spec,
    list_datasets,
    load_tensor_split,
    normalize,
    write_synthetic_copy,
)
from timm_local.data import cache as data_cache
from timm_local.data import memory as data_memory

REAL_CIFAR = Path(__file__).parents[1] / ".." / "shared" / "datasets" / "cifar10-jpeg"


@pytest.fixture(autouse=True, scope="module")
def _isolated_hf_cache(tmp_path_factory):
    """Keep datasets' cache out of the home directory (ours is in a temporary folder: conftest.py)."""
    import datasets.config

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_cache")))
        yield


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted while loading a local --data-dir")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _parquet_images(path, column):
    """Decode a parquet image column with PIL (independent of the package) -> uint8 N×3×H×W."""
    import pyarrow.parquet as pq
    from PIL import Image

    cells = pq.read_table(path).column(column).to_pylist()
    arrays = [np.array(Image.open(io.BytesIO(c["bytes"])).convert("RGB")) for c in cells]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------- specs


def test_specs_match_the_hub_layouts():
    assert list_datasets() == ["cifar10", "imagenet", "stl10", "svhn"]
    c, s, t, i = (get_dataset_spec(n) for n in ("cifar10", "svhn", "stl10", "imagenet"))
    assert (c.hub_id, c.config, c.image_column, c.label_names) == ("uoft-cs/cifar10", "plain_text", "img",
                                                                   CIFAR10_LABELS)
    assert (s.hub_id, s.config, s.image_column, s.label_names) == ("ufldl-stanford/svhn", "cropped_digits", "image",
                                                                   SVHN_LABELS)
    assert (t.hub_id, t.image_size, t.label_names) == ("tanganke/stl10", 96, STL10_LABELS)
    assert (i.hub_id, i.num_classes, i.eval_split, i.in_memory) == ("ILSVRC/imagenet-1k", 1000, "validation", False)
    assert all(spec.label_column == "label" and spec.train_split == "train" for spec in DATASETS.values())
    assert get_dataset_spec("uoft-cs/cifar10") is c and get_dataset_spec("CIFAR-10") is c
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.pad = 0


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError) as e:
        build_loaders("cifar100", None, 8)
    msg = str(e.value)
    assert "Unknown dataset 'cifar100'" in msg and "cifar10, imagenet, stl10, svhn" in msg and "--dataset" in msg


# --------------------------------------------------------------------------- synthetic Hub layouts


@pytest.mark.parametrize("name", ["cifar10", "svhn", "stl10"])
def test_synthetic_in_memory_layouts_load_and_iterate(tmp_path, name, no_network):
    spec = get_dataset_spec(name)
    root = write_synthetic_copy(name, tmp_path / name, num_train=6, num_eval=3)
    offline_before = os.environ.get("HF_HUB_OFFLINE")
    loaders = build_loaders(name, root, batch_size=4, eval_batch_size=2, device="cpu", seed=0)
    assert (loaders.num_classes, loaders.label_names, loaders.image_size) == (10, spec.label_names, spec.image_size)
    assert (loaders.mean, loaders.std) == (spec.mean, spec.std)
    assert len(loaders.train) == 2 and len(loaders.eval) == 2
    shapes = [(x.shape, x.dtype, y.dtype) for x, y in loaders.train]
    s = spec.image_size
    assert shapes == [((4, 3, s, s), torch.float32, torch.int64), ((2, 3, s, s), torch.float32, torch.int64)]
    # Eval batches are exactly the normalised images, in order, with their labels.
    pixels = _parquet_images(root / spec.hub_data_dir / "test-00000-of-00001.parquet", spec.image_column)
    x = torch.cat([x for x, _ in loaders.eval])
    y = torch.cat([y for _, y in loaders.eval])
    torch.testing.assert_close(x, normalize(pixels, spec.mean, spec.std))
    assert y.tolist() == [1, 2, 3]
    assert os.environ.get("HF_HUB_OFFLINE") == offline_before  # the offline guard restored the environment


def test_svhn_config_folder_without_readme(tmp_path):
    root = write_synthetic_copy("svhn", tmp_path / "svhn", num_train=4, num_eval=2, readme=False)
    assert not (root / "README.md").exists() and (root / "cropped_digits").is_dir()
    loaders = build_loaders("svhn", root, batch_size=4)
    assert loaders.train.dataset_size == 4 and loaders.eval.dataset_size == 2


def test_imagenet_parquet_layout_streams_through_workers(tmp_path, no_network):
    root = write_synthetic_copy("imagenet", tmp_path / "imagenet", num_train=6, num_eval=3)
    loaders = build_loaders("imagenet", root, batch_size=4, eval_batch_size=2, image_size=64, workers=0,
                            hf_cache_dir=tmp_path / "hf", channels_last=True)
    assert loaders.num_classes == 1000 and len(loaders.label_names) == 1000 and loaders.image_size == 64
    batches = [(x.shape, y.tolist()) for x, y in loaders.train]
    assert [b[0] for b in batches] == [(4, 3, 64, 64), (2, 3, 64, 64)]
    assert sorted(sum((b[1] for b in batches), [])) == list(range(6))
    x, y = next(iter(loaders.eval))
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32 and y.tolist() == [1, 2]
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert -3 < x.min() and x.max() < 3  # normalised with the ImageNet mean/std


def test_imagenet_sharding_resume_and_transform_sizes(tmp_path):
    from torchvision import transforms as T

    from timm_local.data import imagenet_transforms

    root = write_synthetic_copy("imagenet", tmp_path / "imagenet", num_train=7, num_eval=5)
    kw = dict(batch_size=2, image_size=32, workers=0, hf_cache_dir=tmp_path / "hf", seed=3)
    shards = [build_loaders("imagenet", root, rank=r, world_size=2, **kw) for r in range(2)]
    train = [sum((y.tolist() for _, y in ld.train), []) for ld in shards]
    assert len(train[0]) == len(train[1]) == 4 and set(train[0] + train[1]) == set(range(7))
    evals = [sum((y.tolist() for _, y in ld.eval), []) for ld in shards]
    assert sorted(evals[0] + evals[1]) == [(i + 1) % 1000 for i in range(5)]  # disjoint, no padding

    loader = shards[0].train
    loader.set_epoch(1)
    full = [y.tolist() for _, y in loader]
    loader.load_state_dict({"epoch": 1, "batch": 1})
    loader.set_epoch(1)
    assert [y.tolist() for _, y in loader] == full[1:] and loader.state_dict() == {"epoch": 1, "batch": 2}

    train_tf, eval_tf = imagenet_transforms(224)
    assert isinstance(train_tf.transforms[0], T.RandomResizedCrop) and train_tf.transforms[0].size == (224, 224)
    assert isinstance(train_tf.transforms[1], T.RandomHorizontalFlip)
    assert eval_tf.transforms[0].size == 256 and eval_tf.transforms[1].size == (224, 224)
    assert imagenet_transforms(64)[1].transforms[0].size == 73  # floor(64 / 0.875)


def test_imagenet_with_worker_processes_and_max_samples(tmp_path):
    root = write_synthetic_copy("imagenet", tmp_path / "imagenet", num_train=5, num_eval=3)
    loaders = build_loaders("imagenet", root, batch_size=2, image_size=32, workers=1, max_train_samples=3,
                            hf_cache_dir=tmp_path / "hf")
    assert loaders.train.dataset_size == 3
    assert [x.shape[0] for x, _ in loaders.train] == [2, 1]


# ------------------------------------------------------------------------------------- real CIFAR-10


@pytest.fixture(scope="module")
def real_cifar(tmp_path_factory):
    if not (REAL_CIFAR / "README.md").is_file():
        pytest.skip(f"real CIFAR-10 copy not found at {REAL_CIFAR.resolve()} (../shared/datasets/cifar10-jpeg)")
    before = sorted(p.name for p in REAL_CIFAR.iterdir())
    loaders = build_loaders("cifar10", REAL_CIFAR, batch_size=256, max_train_samples=512, max_eval_samples=300)
    assert sorted(p.name for p in REAL_CIFAR.iterdir()) == before  # read-only data dir: cache went elsewhere
    return loaders


def test_real_cifar10_copy(real_cifar):
    train, test = real_cifar.train, real_cifar.eval
    assert train.images.shape == (512, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and train.labels[0].item() == 6  # the first image is a frog
    assert test.labels[0].item() == 3  # official test order starts with a cat
    assert real_cifar.label_names == CIFAR10_LABELS
    assert len(train) == 2 and len(test) == 2
    x, y = next(iter(train))
    assert x.shape == (256, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (256,)
    assert abs(x.mean().item()) < 0.3 and 0.7 < x.std().item() < 1.3  # CIFAR mean/std normalisation


def test_real_cifar10_relative_path(monkeypatch):
    if not REAL_CIFAR.is_dir():
        pytest.skip("real CIFAR-10 copy absent")
    monkeypatch.chdir(Path(__file__).parents[1])
    split = load_tensor_split(get_dataset_spec("cifar10"), "../shared/datasets/cifar10-jpeg", "train", 16)
    assert split.labels[0].item() == 6 and split.images.shape == (16, 3, 32, 32)


# --------------------------------------------------------------------------------------------- cache


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_cache_hit_skips_decode_and_key_follows_the_bytes(tmp_path, monkeypatch):
    spec = get_dataset_spec("cifar10")
    import pyarrow.parquet as pq

    root = write_synthetic_copy("cifar10", tmp_path / "c", num_train=5, num_eval=2)
    parquet = root / "plain_text" / "train-00000-of-00001.parquet"
    plain = dict(compression="none", use_dictionary=False, write_statistics=False)  # size independent of order
    pq.write_table(pq.read_table(parquet), parquet, **plain)
    data_files = _files_under(root)
    first = load_tensor_split(spec, root, "train")
    assert not first.from_cache and first.cache_file.parent == data_cache.default_cache_dir()
    assert _files_under(root) == data_files  # a writable data dir gets nothing of ours
    assert not list(first.cache_file.parent.glob("*.tmp"))  # atomic write left no temp file

    def no_decode(*a, **k):
        raise AssertionError("decoded although cached")

    with monkeypatch.context() as m:
        m.setattr(data_memory, "decode_split", no_decode)
        second = load_tensor_split(spec, root, "train")
        assert second.from_cache and torch.equal(second.images, first.images)
        assert torch.equal(second.labels, first.labels) and second.label_names == CIFAR10_LABELS
        head = load_tensor_split(spec, root, "train", max_samples=3)  # sliced from the full entry
        assert head.from_cache and torch.equal(head.images, first.images[:3])
        st = parquet.stat()
        os.utime(parquet, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, newer mtime: same entry
        assert load_tensor_split(spec, root, "train").from_cache

    # Other bytes of the same size and mtime (rows reversed) are another entry, not the stale one.
    st = parquet.stat()
    pq.write_table(pq.read_table(parquet)[::-1], parquet, **plain)
    os.utime(parquet, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert parquet.stat().st_size == st.st_size  # else this would not test what it says
    third = load_tensor_split(spec, root, "train")
    assert not third.from_cache and third.cache_file != first.cache_file
    assert torch.equal(third.images, first.images.flip(0))


def test_cache_key_covers_split_max_samples_path_and_bytes(tmp_path):
    f, g = tmp_path / "a.parquet", tmp_path / "b.parquet"
    f.write_bytes(b"x")
    g.write_bytes(b"y")
    keys = {data_cache.cache_key("cifar10", s, n, data_cache.fingerprints([str(p)]))
            for s in ("train", "test") for n in (None, 10) for p in (f, g)}
    assert len(keys) == 8
    g.write_bytes(b"x")  # same bytes at another path: still another entry (the path is part of the key)
    assert data_cache.fingerprints([str(f)])[0]["sha256"] == data_cache.fingerprints([str(g)])[0]["sha256"]
    assert data_cache.cache_key("cifar10", "train", None, data_cache.fingerprints([str(f)])) != \
        data_cache.cache_key("cifar10", "train", None, data_cache.fingerprints([str(g)]))


def test_cache_goes_to_the_user_cache_dir_never_the_data_dir(tmp_path, monkeypatch):
    root = write_synthetic_copy("cifar10", tmp_path / "data", num_train=2, num_eval=2)
    data_files = _files_under(root)
    spec = get_dataset_spec("cifar10")
    monkeypatch.setenv("TIMM_LOCAL_CACHE", str(tmp_path / "env_cache"))
    assert load_tensor_split(spec, root, "train").cache_file.parent == tmp_path / "env_cache"
    monkeypatch.delenv("TIMM_LOCAL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert load_tensor_split(spec, root, "train").cache_file.parent == tmp_path / "xdg" / "timm_local"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_cache.default_cache_dir() == tmp_path / "home" / ".cache" / "timm_local"
    explicit = load_tensor_split(spec, root, "test", cache_dir=tmp_path / "mine")
    assert explicit.cache_file.parent == tmp_path / "mine"
    assert _files_under(root) == data_files


def test_unwritable_cache_dir_names_the_variable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match=r"cannot write the decoded-data cache folder .*TIMM_LOCAL_CACHE="):
        data_cache.cache_root(blocker / "cache")


# -------------------------------------------------------------------------------------------- errors


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        build_loaders("cifar10", tmp_path / "nope", 8)
    msg = str(e.value)
    assert "does not exist" in msg and "nope" in msg and "uoft-cs/cifar10" in msg
    assert "README.md" in msg and "plain_text/train-*.parquet" in msg


def test_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="No data files found") as e:
        build_loaders("svhn", tmp_path, 8)
    assert "cropped_digits/train-*.parquet" in str(e.value)


def test_missing_split(tmp_path):
    root = write_synthetic_copy("cifar10", tmp_path / "c", num_train=2, num_eval=2)
    (root / "plain_text" / "test-00000-of-00001.parquet").unlink()
    readme = (root / "README.md").read_text()
    (root / "README.md").write_text(readme.replace("  - split: test\n    path: plain_text/test-*\n", ""))
    with pytest.raises(ValueError) as e:
        build_loaders("cifar10", root, 8)
    msg = str(e.value)
    assert "Split 'test' not found" in msg and "['train']" in msg and "README.md" in msg


def test_missing_image_column(tmp_path):
    wrong = dataclasses.replace(get_dataset_spec("cifar10"), image_column="image")
    root = write_synthetic_copy(wrong, tmp_path / "c", num_train=2, num_eval=2)
    with pytest.raises(ValueError) as e:
        build_loaders("cifar10", root, 8)
    msg = str(e.value)
    assert "has columns ['image', 'label']" in msg and "image column 'img'" in msg and "missing: ['img']" in msg


def test_missing_label_column(tmp_path):
    wrong = dataclasses.replace(get_dataset_spec("stl10"), label_column="fine_label")
    root = write_synthetic_copy(wrong, tmp_path / "s", num_train=2, num_eval=2, image_size=96)
    with pytest.raises(ValueError, match=r"label column 'label' \(missing: \['label'\]\)"):
        build_loaders("stl10", root, 8)


def test_wrong_image_size(tmp_path):
    root = write_synthetic_copy("cifar10", tmp_path / "c", num_train=2, num_eval=2, image_size=24)
    with pytest.raises(ValueError) as e:
        build_loaders("cifar10", root, 8)
    msg = str(e.value)
    assert "24×24" in msg and "expects 32×32" in msg and "'cifar10'" in msg and "--data-dir" in msg
    with pytest.raises(ValueError, match="native 32 px"):
        build_loaders("cifar10", root, 8, image_size=64)


def test_wrong_config_and_wrong_dataset(tmp_path):
    root = write_synthetic_copy("cifar10", tmp_path / "c", num_train=2, num_eval=2)
    (root / "README.md").write_text((root / "README.md").read_text().replace("plain_text\n", "other\n", 1))
    with pytest.raises(ValueError) as e:
        build_loaders("cifar10", root, 8)
    assert "configs ['other']" in str(e.value) and "needs config 'plain_text'" in str(e.value)
    svhn = write_synthetic_copy("svhn", tmp_path / "s", num_train=2, num_eval=2)
    with pytest.raises(ValueError, match="has 10 classes, but dataset 'imagenet' has 1000"):
        build_loaders("imagenet", svhn, 8, hf_cache_dir=tmp_path / "hf")


def test_bad_max_samples(tmp_path):
    root = write_synthetic_copy("cifar10", tmp_path / "c", num_train=2, num_eval=2)
    with pytest.raises(ValueError, match="max_samples must be a positive integer"):
        build_loaders("cifar10", root, 8, max_train_samples=0)


# -------------------------------------------------------------------------------------------- decode


def _replace_image_bytes(parquet: Path, column: str, row: int, new_bytes) -> None:
    """Rewrite one image cell of a parquet file (everything else, schema metadata included, kept)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(parquet)
    cells = table.column(column).to_pylist()
    cells[row] = {**cells[row], "bytes": new_bytes(cells[row]["bytes"])}
    i = table.schema.get_field_index(column)
    pq.write_table(table.set_column(i, table.schema.field(i), pa.array(cells, type=table.schema.field(i).type)),
                   parquet)


@pytest.mark.parametrize("split,row,damage,reason", [
    ("train", 3, lambda b: b[: len(b) // 2], "truncated or damaged PNG data"),
    ("test", 1, lambda b: b"<html>404 Not Found</html>", "26 bytes in no image format PIL reads"),
])
def test_corrupt_image_in_memory_names_split_row_column_and_file(tmp_path, split, row, damage, reason):
    root = write_synthetic_copy("cifar10", tmp_path / "c", num_train=5, num_eval=3)
    parquet = root / "plain_text" / f"{split}-00000-of-00001.parquet"
    _replace_image_bytes(parquet, "img", row, damage)
    with pytest.raises(ValueError) as e:
        build_loaders("cifar10", root, 8)
    msg = str(e.value)
    assert type(e.value).__name__ == "CorruptImageError" and "\n" not in msg
    assert f"row {row} of split {split!r} of {root.resolve()}" in msg and "column 'img'" in msg
    assert f"file {parquet.resolve()}, its row {row}" in msg and reason in msg
    assert "download it again" in msg and "remove the row" in msg


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_jpeg_in_streamed_split_is_one_line_from_the_workers(tmp_path, workers):
    from timm_local.data.decode import CorruptImageError

    root = write_synthetic_copy("imagenet", tmp_path / "imagenet", num_train=6, num_eval=2)
    parquet = root / "data" / "train-00000-of-00001.parquet"
    _replace_image_bytes(parquet, "image", 4, lambda b: b[: len(b) // 2])
    loaders = build_loaders("imagenet", root, batch_size=3, image_size=32, workers=workers,
                            hf_cache_dir=tmp_path / "hf")
    assert [y.tolist() for _, y in loaders.eval] == [[1, 2]]  # the intact split still loads
    with pytest.raises(CorruptImageError) as e:
        for _ in loaders.train:
            pass
    msg = str(e.value)
    assert "\n" not in msg and "Caught" not in msg  # not DataLoader's wrapped worker traceback
    assert f"row 4 of split 'train' of {root.resolve()}" in msg and "column 'image'" in msg
    assert f"file {parquet.resolve()}, its row 4" in msg and "truncated or damaged JPEG data" in msg



@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision.io decoders, deprecated in 0.29
@pytest.mark.parametrize("fmt,mode", [("PNG", "L"), ("PNG", "RGBA"), ("PNG", "P"), ("JPEG", "L"), ("JPEG", "CMYK"),
                                      ("JPEG", "RGB"), ("BMP", "RGB"), ("WEBP", "RGB")])
def test_decode_rgb_matches_pil_convert(fmt, mode):
    from PIL import Image

    from timm_local.data.decode import decode_rgb

    arr = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format=fmt)
    data = buf.getvalue()
    expected = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
    got = decode_rgb(data)
    assert got.shape == (3, 7, 9) and got.dtype == torch.uint8
    assert (got.int() - expected.int()).abs().max() <= (2 if mode == "CMYK" else 0)


def test_decode_rejects_out_of_range_labels():
    import datasets

    from timm_local.data.decode import decode_split

    png = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png, format="PNG")
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": png.getvalue(), "path": None}] * 2, "label": [9, 10]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))
    with pytest.raises(ValueError, match=r"Row 1 of svhn-copy has label 10, outside \[0, 10\)"):
        decode_split(ds, image_column="image", label_column="label", image_size=4, num_classes=10, dataset="svhn",
                     where="svhn-copy")


def test_real_cifar10_decode_is_bit_identical_to_pil(real_cifar):
    pixels = _parquet_images(REAL_CIFAR / "plain_text" / "test-00000-of-00001.parquet", "img")
    assert torch.equal(real_cifar.eval.images, pixels[:300])
