"""Several GPUs per run (DistributedDataParallel): configuration, data split, and 2-process
gloo runs on the CPU that must train exactly what one process trains."""

from __future__ import annotations

import pytest

from lib import config as cfg
from lib.config import ConfigError


def _config(tmp_path, *lines: str):
    path = tmp_path / ".config"
    text = (cfg.DEFCONFIG_DIR / "demo").read_text()
    path.write_text(text + "".join(line + "\n" for line in lines))
    return cfg.load(path)


def test_one_gpu_per_run_is_the_default(tmp_path):
    train = _config(tmp_path).train
    assert (train.gpus_per_run, train.batch_rule, train.global_batch_size) == (1, "global", 128)
    assert train.rank_batch_size == train.batch_size == 128


def test_global_batch_is_split_across_the_gpus_by_default(tmp_path):
    train = _config(
        tmp_path,
        "CONFIG_GPUS_PER_RUN=4",
        "CONFIG_TRAIN_BATCH_SIZE=128",
        "CONFIG_DDP_SYNC_BATCHNORM=n",
    ).train
    assert (train.gpus_per_run, train.batch_rule) == (4, "global")
    assert (train.global_batch_size, train.rank_batch_size) == (128, 32)
    assert (train.ddp_backend, train.ddp_mask_check, train.sync_batchnorm) == ("auto", True, False)


def test_per_gpu_batch_rule_multiplies_the_global_batch(tmp_path):
    train = _config(
        tmp_path,
        "CONFIG_GPUS_PER_RUN=3",
        "CONFIG_TRAIN_BATCH_SIZE=10",
        "CONFIG_DDP_BATCH_PER_GPU=y",
        "CONFIG_DDP_SYNC_BATCHNORM=n",
    ).train
    assert (train.global_batch_size, train.rank_batch_size) == (30, 10)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ("CONFIG_GPUS_PER_RUN=3", "CONFIG_TRAIN_BATCH_SIZE=128", "CONFIG_DDP_SYNC_BATCHNORM=n"),
            "CONFIG_TRAIN_BATCH_SIZE='128' is invalid (accepted: a multiple of "
            "CONFIG_GPUS_PER_RUN=3",
        ),
        (
            ('CONFIG_MATRIX_GPUS="0,1"', "CONFIG_GPUS_PER_RUN=4", "CONFIG_DDP_SYNC_BATCHNORM=n"),
            "CONFIG_GPUS_PER_RUN='4' is invalid (accepted: 1..2, the number of GPUs in "
            "CONFIG_MATRIX_GPUS='0,1')",
        ),
        (
            ("CONFIG_GPUS_PER_RUN=2",),  # the demo trains on the CPU; SyncBatchNorm needs CUDA
            "CONFIG_DDP_SYNC_BATCHNORM='y' is invalid (accepted: n with CONFIG_TRAIN_DEVICE_CPU",
        ),
        (
            ("CONFIG_GPUS_PER_RUN=2", "CONFIG_DDP_SYNC_BATCHNORM=n", "CONFIG_DDP_BACKEND_NCCL=y"),
            "CONFIG_DDP_BACKEND_NCCL='y' is invalid (accepted: auto or gloo",
        ),
    ],
)
def test_bad_distributed_settings_are_one_line(tmp_path, lines, message):
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, *lines)
    text = str(err.value)
    assert message in text and "\n" not in text


def test_backend_and_mask_check_are_not_part_of_what_is_trained(tiny_spec, tmp_path):
    spec = tiny_spec(tmp_path, train={"gpus_per_run": 2, "sync_batchnorm": False})
    other = tiny_spec(
        tmp_path,
        train={
            "gpus_per_run": 2,
            "sync_batchnorm": False,
            "ddp_backend": "gloo",
            "ddp_mask_check": False,
        },
    )
    assert spec.identity() == other.identity()
    assert tiny_spec(tmp_path, train={"gpus_per_run": 1}).identity() != spec.identity()
