"""Several GPUs per run (DistributedDataParallel): configuration, data split, and 2-process
gloo runs on the CPU that must train exactly what one process trains."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import ddp_worker
import pytest
import torch
from test_runner import wait_for
from torch import nn

import lib.distributed
import lib.spec
import lib.train
from lib import config as cfg
from lib.config import ConfigError
from lib.data import build_loaders
from lib.distributed import DistributedError, RunGroup
from lib.metrics import read_metrics
from lib.runner import EXIT_REFUSED, _slots, run_matrix
from lib.spec import OptimizerSpec, PruningSpec, RunSpec
from lib.train import train
from models import build_model
from optimizers import build_optimizer


def _config(tmp_path, *lines: str):
    path = tmp_path / ".config"
    text = (cfg.DEFCONFIG_DIR / "demo").read_text()
    path.write_text(text + "".join(line + "\n" for line in lines))
    return cfg.load(path)


def test_one_gpu_per_run_is_the_default(tmp_path):
    train = _config(tmp_path).train
    assert (train.gpus_per_run, train.batch_rule, train.global_batch_size) == (1, "global", 64)
    assert train.rank_batch_size == train.batch_size == 64


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


def test_sync_batchnorm_defaults_follow_the_device(tmp_path):
    # The demo trains on the CPU: SyncBatchNorm (CUDA only) is off by default there.
    assert _config(tmp_path, "CONFIG_GPUS_PER_RUN=2").train.sync_batchnorm is False
    on_gpu = _config(tmp_path, "CONFIG_GPUS_PER_RUN=2", "CONFIG_TRAIN_DEVICE_AUTO=y")
    assert on_gpu.train.sync_batchnorm is True


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
            # the demo trains on the CPU; SyncBatchNorm needs CUDA
            ("CONFIG_GPUS_PER_RUN=2", "CONFIG_DDP_SYNC_BATCHNORM=y"),
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


# ---------------------------------------------------------------------------------------------
# The data of an epoch: the single-process order, split across the ranks
# ---------------------------------------------------------------------------------------------


def _batches(loader, epoch: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


@pytest.mark.parametrize("train_size", [13, 17])
def test_ranks_split_the_single_process_batches(tiny_spec, tmp_path, train_size):
    data = {"synthetic_train_size": train_size, "synthetic_val_size": 13}
    one = tiny_spec(tmp_path, data=data)
    two = tiny_spec(tmp_path, data=data, train={"gpus_per_run": 2, "sync_batchnorm": False})
    whole = [_batches(loader) for loader in build_loaders(one, "cpu")]
    shares = [build_loaders(two, "cpu", rank, 2) for rank in (0, 1)]
    for split, loaders in enumerate(zip(*shares, strict=True)):
        per_rank = [_batches(loader) for loader in loaders]
        assert len(loaders[0]) == len(loaders[1])
        # 17 = 2 x 8 + 1: a last training batch smaller than the rank count is left out (every
        # rank must take every step); evaluation keeps every image.
        dropped = 1 if split == 0 and train_size == 17 else 0
        assert len(per_rank[0]) == len(whole[split]) - dropped
        for index, (images, targets) in enumerate(whole[split][: len(per_rank[0])]):
            parts = [ranks[index] for ranks in per_rank if index < len(ranks)]
            assert torch.equal(torch.cat([p[0] for p in parts]), images)
            assert torch.equal(torch.cat([p[1] for p in parts]), targets)
            assert abs(parts[0][1].shape[0] - parts[-1][1].shape[0]) <= 1


def test_a_rank_weights_its_loss_so_the_average_is_the_global_mean():
    group = RunGroup(rank=0, world=2)
    loss = torch.tensor(2.0)
    assert group.rank_loss(loss, 4, 8) is loss  # full batches: DDP's average is the mean
    # Shares 3 and 2 of 5: (3/5 * 2 * mean0 + 2/5 * 2 * mean1) / 2 = (sum0 + sum1) / 5.
    assert float(group.rank_loss(loss, 3, 5)) == pytest.approx(2.0 * 3 * 2 / 5)
    assert RunGroup().rank_loss(loss, 3, 5) is loss


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_process_under_torchrun_joins_a_group_of_one(monkeypatch):
    """torchrun with one process (make gpu-check's nccl part, on the CPU with gloo here): the
    rank joins a real process group, so DDP and the collectives run; without torchrun's
    environment a run touches nothing in torch.distributed."""
    monkeypatch.setattr(lib.distributed, "_arm_parent_death_signal", lambda: None)
    train = lib.spec.TrainSpec(device="cpu", sync_batchnorm=False)
    with RunGroup.start(train, lib.train.resolve_device) as group:
        assert not group.distributed and not torch.distributed.is_initialized()
    for name, value in {
        "TORCHELASTIC_RUN_ID": "test",
        "WORLD_SIZE": "1",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }.items():
        monkeypatch.setenv(name, value)
    with RunGroup.start(train, lib.train.resolve_device) as group:
        assert group.distributed and group.is_main and group.world == 1
        assert torch.distributed.is_initialized()
        assert torch.distributed.get_backend() == "gloo"
        assert group.sum(torch.tensor([2.0, 3.0])).tolist() == [2.0, 3.0]
        assert group.gather({"rank": 0}) == [{"rank": 0}]
        model = group.wrap(nn.Linear(2, 1), torch.device("cpu"))
        assert isinstance(model, nn.parallel.DistributedDataParallel)
    assert not torch.distributed.is_initialized()
    # SyncBatchNorm (on by default) runs on CUDA only: refused in one line, as for N ranks.
    with pytest.raises(DistributedError, match="SyncBatchNorm needs CUDA"):
        with RunGroup.start(lib.spec.TrainSpec(device="cpu"), lib.train.resolve_device):
            pass
    assert not torch.distributed.is_initialized()


# ---------------------------------------------------------------------------------------------
# The mask check
# ---------------------------------------------------------------------------------------------


def _pruned_optimizer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    optimizer = build_optimizer(
        model,
        OptimizerSpec(name="sgd", lr=0.1),
        PruningSpec(method="magnitude", sparsity=0.5, start_step=1, end_epoch=1, interval=1),
        steps_per_epoch=2,
    )
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    optimizer.step()  # step 1 updates the masks
    return model, optimizer


def test_mask_check_passes_when_ranks_agree_and_fails_in_one_line_when_not(monkeypatch):
    model, optimizer = _pruned_optimizer()
    calls = []

    def identical_peer(tensor, op):  # MAX with a rank holding the same masks: unchanged
        calls.append(tensor.shape)

    monkeypatch.setattr(lib.distributed.dist, "all_reduce", identical_peer)
    RunGroup(rank=0, world=2).check_masks(optimizer, model)
    assert len(calls) == 1  # one small all-reduce per mask update, whatever the model size

    def peer_with_one_more_pruned_weight(tensor, op):
        tensor[1, 0] += 1  # the other rank's count for the Linear weight is one higher

    monkeypatch.setattr(lib.distributed.dist, "all_reduce", peer_with_one_more_pruned_weight)
    with pytest.raises(DistributedError) as err:
        RunGroup(rank=0, world=2).check_masks(optimizer, model)
    text = str(err.value)
    assert "pruning masks differ between the 2 GPUs" in text and "step 1" in text
    assert "(first in 2.weight)" in text and "\n" not in text


# ---------------------------------------------------------------------------------------------
# The runner: settings refused before any run starts
# ---------------------------------------------------------------------------------------------


def _run_matrix(specs, matrix_dir, **kwargs) -> tuple[int, str]:
    out = io.StringIO()
    report = {"baseline": "", "candidate": "", "plots": []}
    rc = run_matrix(
        specs, matrix_dir, config_snapshot={}, report_settings=report, out=out, **kwargs
    )
    return rc, out.getvalue()


@pytest.mark.parametrize(
    ("train", "gpus", "message"),
    [
        ({"sync_batchnorm": False}, ["0"], "2 GPUs per run but only 1 GPU(s) listed (0)"),
        ({"sync_batchnorm": True}, None, "SyncBatchNorm needs CUDA and this run trains on the CPU"),
        ({"sync_batchnorm": False, "batch_size": 7}, None, "batch size 7 is the global batch"),
    ],
)
def test_runner_refuses_bad_multi_gpu_settings_in_one_line(
    tiny_spec, tmp_path, train, gpus, message
):
    spec = tiny_spec(tmp_path, train={"gpus_per_run": 2, **train})
    rc, out = _run_matrix([spec], tmp_path / "m", gpus=gpus)
    assert rc == EXIT_REFUSED
    assert out.count("\n") == 1 and out.startswith("error: ") and message in out
    assert not (tmp_path / "m" / spec.run_id).exists()


def test_gpu_groups_become_the_runner_slots():
    assert _slots(1, ["0", "1", "2", "3", "4"], 2) == ["0,1", "2,3"]
    assert _slots(1, ["0", "1"], 1) == ["0", "1"]
    assert _slots(1, None, 2) == [None]


# ---------------------------------------------------------------------------------------------
# Two gloo ranks on the CPU against one process; kill -9 of the runner and resume
# ---------------------------------------------------------------------------------------------


def _two_rank_spec(tiny_spec, tmp_path, gpus_per_run: int) -> RunSpec:
    """SGD with magnitude pruning from step 1 (masks updated every step of epoch 1), 13 images
    per epoch in batches of 8 (the last one of 5 splits 3 + 2 across two ranks)."""
    return tiny_spec(
        tmp_path,
        data={"synthetic_train_size": 13, "synthetic_val_size": 13},
        train={"epochs": 2, "gpus_per_run": gpus_per_run, "sync_batchnorm": False},
        optimizer=OptimizerSpec(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4),
        pruning={"method": "magnitude", "sparsity": 0.5, "start_step": 1, "end_epoch": 1},
    )


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(proc.name))
    return pids


def test_two_ranks_killed_and_resumed_train_what_one_process_trains(
    tiny_spec, tmp_path, monkeypatch
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the same CPU kernels in every process
    reference = _two_rank_spec(tiny_spec, tmp_path / "one", 1)
    spec = _two_rank_spec(tiny_spec, tmp_path, 2)
    matrix_dir = tmp_path / "m"
    spec = RunSpec.from_dict({**spec.to_dict(), "out_dir": str(matrix_dir / spec.run_id)})
    specs_json = tmp_path / "specs.json"
    specs_json.write_text(json.dumps([spec.to_dict()]))
    with open(tmp_path / "runner.log", "w") as log:
        runner = subprocess.Popen(
            [sys.executable, ddp_worker.THIS_FILE, "--runner", str(matrix_dir), str(specs_json)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    metrics = Path(spec.out_dir) / "metrics.json"
    try:
        wait_for(
            lambda: metrics.exists() and len(read_metrics(metrics)["epochs"]) == 1,
            timeout=300,
            what="epoch 1 of the two-rank run",
        )
        ranks = _processes_mentioning(str(Path(spec.out_dir) / "run.json"))
    finally:
        runner.kill()
        runner.wait()
    # torchrun and both ranks (3 processes) go with the runner: no orphan keeps training.
    assert len(ranks) == 3
    wait_for(lambda: not _processes_mentioning(spec.out_dir), timeout=10, what="orphan ranks")
    assert read_metrics(metrics)["summary"]["status"] == "running"

    # Meanwhile, the same training in one process (same global batch), BatchNorm as in the ranks.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(
        lib.train, "build_model", lambda *a, **k: ddp_worker.groupnorm(build_model(*a, **k))
    )
    try:
        assert train(reference)["summary"]["status"] == "completed"
    finally:
        torch.set_num_threads(threads)
    one = torch.load(Path(reference.out_dir) / "checkpoint_last.pt", weights_only=True)["model"]

    rc, out = _run_matrix(
        [spec], matrix_dir, child_cmd=[sys.executable, ddp_worker.THIS_FILE, "groupnorm"]
    )
    assert rc == 0, out
    assert "resuming after epoch 1" in out
    doc = read_metrics(metrics)
    assert doc["summary"]["status"] == "completed" and len(doc["epochs"]) == 2
    log = (Path(spec.out_dir) / "train.log").read_text()
    assert "resumed from" in log and log.count("run resnet18") == 2  # rank 0's lines only
    for record in doc["epochs"]:
        assert record["train_images"] == 13
        assert [r["rank"] for r in record["ranks"]] == [0, 1]
        assert record["peak_memory_total_mb"] == pytest.approx(
            sum(r["peak_memory_mb"] for r in record["ranks"])
        )
        assert record["peak_memory_mb"] == max(r["peak_memory_mb"] for r in record["ranks"])

    rank0, rank1 = (torch.load(Path(spec.out_dir) / f"rank{r}.pt") for r in (0, 1))
    pruned = 0
    for name, weight in one.items():
        assert torch.equal(rank0[name], rank1[name]), name  # the ranks hold one model
        assert torch.equal(rank0[name] == 0, weight == 0), name  # the same masks
        pruned += int((weight == 0).sum())
        # Only the order of float additions differs (two half-batch gradient sums averaged by
        # the all-reduce vs one sum over the batch): a few float32 ulps after 4 SGD steps.
        assert torch.allclose(rank0[name], weight, rtol=0, atol=1e-6), name
    assert pruned > 5_000_000  # the 50% target of ResNet-18's prunable weights was reached
