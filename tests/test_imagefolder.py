"""Your own ImageFolder: two directories at any path, classes read from the folders, checked
in one line before any run starts, trained end to end with the class names recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lib import config as cfg
from lib.cli import main as cli_main
from lib.config import ConfigError
from lib.data import DataError, build_loaders, folder_classes
from lib.matrix import plan


def write_folder(split_dir: Path, classes, per_class: int = 2, size=(20, 24)) -> None:
    """Tiny noise JPEGs, `per_class` in each class folder."""
    rng = np.random.default_rng(len(classes) + per_class)
    for cls in classes:
        folder = split_dir / cls
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", format="JPEG")


CLASSES = ("tulip", "daisy", "rose")  # sorted: daisy 0, rose 1, tulip 2


@pytest.fixture
def own_folders(tmp_path):
    """Train and validation directories in unrelated places, neither under a data dir."""
    train_dir, val_dir = tmp_path / "photos" / "training", tmp_path / "held-out"
    write_folder(train_dir, CLASSES, per_class=4)
    write_folder(val_dir, CLASSES, per_class=2)
    return train_dir, val_dir


def own_spec(tiny_spec, tmp_path, train_dir, val_dir, **data):
    return tiny_spec(
        tmp_path,
        model={"stem": "imagenet"},
        data={
            "name": "imagefolder",
            "train_dir": str(train_dir),
            "val_dir": str(val_dir),
            "image_size": 16,
            **data,
        },
        train={"batch_size": 4},
    )


def test_classes_come_from_the_folders_in_imagefolder_order(tiny_spec, tmp_path, own_folders):
    spec = own_spec(tiny_spec, tmp_path, *own_folders)
    assert folder_classes(spec.data) == ["daisy", "rose", "tulip"]
    train_loader, test_loader = build_loaders(spec, "cpu")
    assert (train_loader.num_samples, test_loader.num_samples) == (12, 6)
    labels = torch.cat([y for _, y in test_loader]).tolist()
    assert labels == [0, 0, 1, 1, 2, 2]
    images, _ = next(iter(train_loader))
    assert images.shape == (4, 3, 16, 16)
    # The directories name the data: part of the identity, absent from every other run.json.
    assert spec.identity()["data"]["train_dir"] == str(own_folders[0])
    assert "train_dir" not in tiny_spec(tmp_path).to_dict()["data"]


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("no_train", "CONFIG_DATA_IMAGEFOLDER_TRAIN_DIR="),
        ("val_lacks_a_class", "1 missing in validation (rose)"),
        ("val_has_an_extra_class", "1 only in validation (lily)"),
        ("empty_class", "class folder 'daisy' has no image"),
        ("no_class_folders", "has no class folders"),
    ],
)
def test_unusable_folders_are_one_line_naming_the_option(
    tiny_spec, tmp_path, own_folders, damage, words
):
    train_dir, val_dir = own_folders
    if damage == "no_train":
        train_dir = tmp_path / "nowhere"
    elif damage == "val_lacks_a_class":
        for image in (val_dir / "rose").iterdir():
            image.unlink()
        (val_dir / "rose").rmdir()
    elif damage == "val_has_an_extra_class":
        write_folder(val_dir, ["lily"])
    elif damage == "empty_class":
        for image in (train_dir / "daisy").iterdir():
            image.rename(train_dir / "daisy" / f"{image.stem}.txt")
    else:
        val_dir = tmp_path / "empty"
        val_dir.mkdir()
    spec = own_spec(tiny_spec, tmp_path, train_dir, val_dir)
    for attempt in (lambda: folder_classes(spec.data), lambda: build_loaders(spec, "cpu")):
        with pytest.raises(DataError) as err:
            attempt()
        message = str(err.value)
        assert "\n" not in message and words in message and message.startswith("imagefolder: ")


def folder_config(tmp_path, train_dir, val_dir, *extra: str) -> Path:
    path = tmp_path / ".config"
    text = (cfg.DEFCONFIG_DIR / "imagefolder").read_text()
    lines = [
        f'CONFIG_DATA_IMAGEFOLDER_TRAIN_DIR="{train_dir}"',
        f'CONFIG_DATA_IMAGEFOLDER_VAL_DIR="{val_dir}"',
        *extra,
    ]
    path.write_text(text + "".join(line + "\n" for line in lines))
    return path


def test_the_imagefolder_defconfig_reads_both_directories(tmp_path, own_folders):
    config = cfg.load(folder_config(tmp_path, *own_folders))
    assert config.data.name == "imagefolder" and config.model.name == "resnet18"
    assert (config.data.train_dir, config.data.val_dir) == tuple(map(str, own_folders))
    assert config.data.image_size == 224 and config.data.decode == "pil"
    specs = plan(config)
    assert specs and all(s.data.train_dir == str(own_folders[0]) for s in specs)


@pytest.mark.parametrize(
    ("lines", "words"),
    [
        (['CONFIG_DATA_IMAGEFOLDER_VAL_DIR=""'], "CONFIG_DATA_IMAGEFOLDER_VAL_DIR=''"),
        (
            ['CONFIG_DATA_IMAGEFOLDER_VAL_DIR="{train}/"'],
            "other than CONFIG_DATA_IMAGEFOLDER_TRAIN",
        ),
    ],
)
def test_missing_or_identical_directories_are_refused(tmp_path, own_folders, lines, words):
    train_dir, val_dir = own_folders
    extra = [line.format(train=train_dir) for line in lines]
    with pytest.raises(ConfigError) as err:
        cfg.load(folder_config(tmp_path, train_dir, val_dir, *extra))
    assert "\n" not in str(err.value) and words in str(err.value)


@pytest.mark.parametrize("command", ["check-config", "dry-run"])
def test_check_config_and_dry_run_check_the_folders(
    tmp_path, own_folders, monkeypatch, capsys, command
):
    train_dir, val_dir = own_folders
    monkeypatch.setenv("KCONFIG_CONFIG", str(folder_config(tmp_path, train_dir, val_dir)))
    assert cli_main([command]) == 0
    assert "imagefolder" in capsys.readouterr().out
    write_folder(val_dir, ["lily"])  # a class the training directory does not have
    assert cli_main([command]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: imagefolder: ")
    assert "1 only in validation (lily)" in err[0]


def test_a_run_trains_on_your_own_folders_and_records_the_classes(tiny_spec, tmp_path, own_folders):
    from lib.train import train

    spec = own_spec(tiny_spec, tmp_path, *own_folders)
    document = train(spec)
    assert document["summary"]["status"] == "completed"
    info = document["model_info"]
    assert info["num_classes"] == 3 and info["class_names"] == ["daisy", "rose", "tulip"]
    assert (info["train_images"], info["test_images"]) == (12, 6)
    on_disk = json.loads((Path(spec.out_dir) / "metrics.json").read_text())
    assert on_disk["model_info"]["class_names"] == info["class_names"]
    checkpoint = torch.load(Path(spec.out_dir) / "checkpoint_last.pt", weights_only=True)
    assert checkpoint["model"]["fc.weight"].shape[0] == 3  # the classifier has 3 outputs
    # The reported accuracy is what an independent evaluation of the saved model measures:
    # torchvision's ImageFolder and evaluation transforms, no code of the training loop.
    from torchvision import datasets, transforms

    from lib.spec import ModelSpec
    from models import build_model

    model = build_model(ModelSpec(name="resnet18", stem="imagenet"), 3, 16)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    evaluation = transforms.Compose(
        [
            transforms.Resize(18),  # round(16 * 256 / 224)
            transforms.CenterCrop(16),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    val = datasets.ImageFolder(own_folders[1], evaluation)
    with torch.no_grad():
        correct = sum(int(model(image[None]).argmax()) == label for image, label in val)
    assert document["epochs"][-1]["test_top1"] == pytest.approx(100.0 * correct / len(val))
