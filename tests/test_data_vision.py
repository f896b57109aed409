from __future__ import annotations

import os

import pytest
import torch
from conftest import shared_dataset, write_image_tree

from torchsmith.config import DataConfig
from torchsmith.data.registry import load_data
from torchsmith.data.vision import load_imagefolder, load_mnist_sample, load_torchvision_digits
from torchsmith.errors import UsageError


def test_embedded_sample_is_real_mnist() -> None:
    bundle = load_mnist_sample(val_fraction=0.1, seed=0)
    assert bundle.info.input_shape == (1, 28, 28) and bundle.info.num_classes == 10
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (14400, 1600, 2000)
    x, _ = bundle.train.get_batch(torch.arange(64), None, train=False)
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert abs(x.mean().item()) < 0.2 and 0.8 < x.std().item() < 1.2  # normalised with train statistics
    assert torch.bincount(bundle.test.labels, minlength=10).min() > 150  # every digit is present


def test_validation_split_is_seeded_and_disjoint() -> None:
    a, b = load_mnist_sample(seed=1), load_mnist_sample(seed=1)
    assert torch.equal(a.val.labels, b.val.labels) and torch.equal(a.val.images, b.val.images)
    c = load_mnist_sample(seed=2)
    assert not torch.equal(a.val.images, c.val.images)
    train_rows = {row.numpy().tobytes() for row in a.train.images.flatten(1)}
    val_rows = [row.numpy().tobytes() for row in a.val.images.flatten(1)]
    assert len(val_rows) > 1000 and not train_rows.intersection(val_rows)  # no validation digit is trained on


def test_mnist_idx_files(mnist_root) -> None:
    bundle = load_torchvision_digits("mnist", str(mnist_root), val_fraction=0.2, seed=0)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (480, 120, 200)
    assert bundle.info.class_names[3] == "3 - three"


def test_corrupt_idx_file_is_a_usage_error(mnist_root) -> None:
    path = mnist_root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:5000])  # truncated
    with pytest.raises(UsageError, match="mnist"):
        load_torchvision_digits("mnist", str(mnist_root))


def test_missing_mnist_dir_says_what_to_do(tmp_path) -> None:
    with pytest.raises(UsageError, match="--data-dir"):
        load_torchvision_digits("mnist", str(tmp_path / "nothing"))


def test_imagefolder_with_train_and_test(tmp_path) -> None:
    write_image_tree(tmp_path / "tree" / "train", per_class=10)
    write_image_tree(tmp_path / "tree" / "test", per_class=4)
    bundle = load_imagefolder(str(tmp_path / "tree"), val_fraction=0.2, seed=0, cache_dir=tmp_path / "cache")
    assert bundle.info.class_names == ["class0", "class1", "class2"]
    assert bundle.info.input_shape == (3, 16, 16)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (24, 6, 12)
    assert len(list((tmp_path / "cache").glob("*/meta.json"))) == 2


def test_imagefolder_cache_is_used_and_invalidated(tmp_path) -> None:
    root = write_image_tree(tmp_path / "tree", per_class=5)
    first = load_imagefolder(str(root), cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*/meta.json"))) == 1
    # Damage a file's bytes but keep its size and time (the cache key): only a cache hit still loads,
    # with the pixels decoded the first time; decoding again would fail on the damaged file.
    damaged = root / "class1" / "001.png"
    stat = damaged.stat()
    damaged.write_bytes(b"\0" * stat.st_size)
    os.utime(damaged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = load_imagefolder(str(root), cache_dir=tmp_path / "cache")
    assert torch.equal(first.train.images, again.train.images)
    damaged.write_bytes(b"\0" * (stat.st_size + 1))  # a changed size: a new key, decoded, and skipped
    assert "001.png" in str(load_imagefolder(str(root), cache_dir=tmp_path / "cache").info.problems)
    write_image_tree(tmp_path / "tree", per_class=5)  # the tree as it was
    load_imagefolder(str(root), cache_dir=tmp_path / "cache")
    entries = len(list((tmp_path / "cache").glob("*/meta.json")))
    from torchvision.io import write_png

    write_png(torch.zeros(3, 16, 16, dtype=torch.uint8), str(root / "class0" / "000.png"))
    load_imagefolder(str(root), cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*/meta.json"))) == entries + 1  # a changed file means a new key


def test_corrupt_image_names_the_file(tmp_path) -> None:
    root = write_image_tree(tmp_path / "tree", per_class=3)
    (root / "class1" / "001.png").write_bytes(b"not a png at all")
    with pytest.raises(UsageError, match=r"1 of 9 image files .* could not be read.*class1/001.png"):
        load_imagefolder(str(root), cache_dir=tmp_path / "cache")


def test_empty_and_missing_folders(tmp_path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_imagefolder(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no class folders"):
        load_imagefolder(str(tmp_path / "empty"))
    (tmp_path / "empty" / "cats").mkdir()
    with pytest.raises(UsageError, match="at least two classes"):
        load_imagefolder(str(tmp_path / "empty"), cache_dir=tmp_path / "cache")
    (tmp_path / "empty" / "dogs").mkdir()
    with pytest.raises(UsageError, match="no images found"):
        load_imagefolder(str(tmp_path / "empty"), cache_dir=tmp_path / "cache")


def test_registry_suggests_close_names() -> None:
    with pytest.raises(UsageError, match="Did you mean 'mnist'"):
        load_data(DataConfig(name="minst"), seed=0)


def test_real_cifar10_tree_reads_as_expected() -> None:
    root = shared_dataset("cifar10-jpeg")
    from torchsmith.data.vision import class_folders

    assert class_folders(root / "train") == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]


def test_idx_reader_matches_the_file_and_refuses_a_wrong_header(mnist_root) -> None:
    from torchsmith.data.idx import read_idx

    raw = mnist_root / "MNIST" / "raw"
    labels = read_idx(raw / "t10k-labels-idx1-ubyte", 1)
    assert labels.shape == (200,) and labels.dtype == torch.uint8 and int(labels.max()) <= 9
    images = read_idx(raw / "t10k-images-idx3-ubyte", 3)
    assert images.shape == (200, 28, 28) and int(images.max()) == 255
    with pytest.raises(ValueError, match="3 dimensions"):
        read_idx(raw / "t10k-labels-idx1-ubyte", 3)  # a labels file where images are expected
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="bytes of data"):
        read_idx(path, 3)
