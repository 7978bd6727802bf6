"""One run on several GPUs: torch.distributed and DistributedDataParallel inside `train(spec)`.

A run with `spec.train.gpus_per_run = N > 1` is N processes (ranks), started by torchrun
(`lib.runner.torchrun_command`, what the local runner does) or by any launcher that sets torchrun's
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; Slurm's `srun`). Each rank
runs the same training loop; this module is the little that differs (docs/distributed.md):

- `RunGroup.start` joins the process group (env:// init), picks the rank's GPU, and arms
  PR_SET_PDEATHSIG for torchrun's workers so no rank outlives its launcher;
- `RunGroup.wrap` converts BatchNorm to SyncBatchNorm (optional) and wraps the model in
  DistributedDataParallel, whose all-reduce averages the gradients before `optimizer.step()`:
  every rank then holds the same gradients, optimizer state, movement scores and masks, so
  pruning needs no communication of its own (AdamWPrune's per-step work does not grow with
  the rank count);
- each global batch of the single-process order is split across the ranks
  (`lib.data.rank_share`), and `rank_loss` weights a rank's loss so that the averaged gradient
  is the gradient of the global batch's mean loss even when a last batch splits unevenly;
- `sum` all-reduces the epoch's counts (training and sharded evaluation), `gather` collects
  per-rank throughput and memory, `check_masks` compares mask checksums after mask updates.

Only rank 0 writes files (metrics.json, checkpoints); every rank reads the checkpoint to resume.
With one process every method is a no-op and nothing here touches torch.distributed, except
under torchrun: a run torchrun starts with one process joins a process group of one (its
backend, DDP, SyncBatchNorm and the collectives all run, with nothing to exchange), which is how
`make gpu-check` exercises the nccl path on a one-GPU machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lib.errors import OneLineError
from lib.spec import DDP_BACKENDS, TrainSpec

PR_SET_PDEATHSIG = 1


class DistributedError(OneLineError, RuntimeError):
    """A run that cannot start on its ranks as configured (one-line message)."""


def _environment_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment {name}={raw!r} is not an integer") from None


def resolve_backend(train: TrainSpec, device: torch.device) -> str:
    """The process-group backend (`auto`: nccl on CUDA, gloo on CPU); DistributedError for a
    combination that cannot work."""
    if train.ddp_backend not in DDP_BACKENDS:
        raise DistributedError(
            f"train ddp_backend {train.ddp_backend!r} is not supported; accepted: "
            f"{', '.join(DDP_BACKENDS)}"
        )
    if train.ddp_backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if train.ddp_backend == "nccl" and device.type != "cuda":
        raise DistributedError("backend nccl needs CUDA and this run trains on the CPU; use gloo")
    return train.ddp_backend


def setting_problem(train: TrainSpec, device: torch.device, joined: bool = False) -> str | None:
    """Why a run with these settings cannot train on `device` with gpus_per_run ranks, or None.
    The runner asks before any run starts; every rank asks again before joining the group
    (`joined`: also a single process that torchrun started, which joins a group of one)."""
    n = train.gpus_per_run
    if n == 1 and not joined:
        return None
    if train.batch_rule == "global" and train.batch_size % n:
        return (
            f"batch size {train.batch_size} is the global batch and cannot be split evenly "
            f"across {n} GPUs per run; use a multiple of {n}"
        )
    try:
        resolve_backend(train, device)
    except DistributedError as e:
        return str(e)
    if train.sync_batchnorm and device.type != "cuda":
        return (
            "SyncBatchNorm needs CUDA and this run trains on the CPU; turn it off "
            "(CONFIG_DDP_SYNC_BATCHNORM=n) for CPU (gloo) runs"
        )
    return None


def _arm_parent_death_signal() -> None:
    """torchrun's workers do not die with torchrun: a runner killed with -9 takes torchrun with
    it (the runner armed PR_SET_PDEATHSIG for torchrun), so each rank arms the same for its own
    parent. A parent that is already gone (re-parented to init) means: exit now."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGKILL)


class RunGroup:
    """The ranks of one run; a group of one (every method a no-op) when not distributed."""

    def __init__(
        self, rank: int = 0, world: int = 1, local_rank: int = 0, joined: bool | None = None
    ) -> None:
        self.rank, self.world, self.local_rank = rank, world, local_rank
        # In a process group: always with several ranks, and with one under torchrun.
        self.joined = world > 1 if joined is None else joined
        self._checked_step = -1

    @property
    def distributed(self) -> bool:
        return self.joined

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- joining and leaving --------------------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def start(
        cls, train: TrainSpec, resolve_device: Callable[[str], torch.device]
    ) -> Iterator[RunGroup]:
        """Join the run's process group when the environment says WORLD_SIZE > 1 (torchrun,
        srun), or when torchrun started this one process (a group of one that really joins);
        otherwise a group of one that touches nothing. `resolve_device` turns `train.device`
        into a device."""
        world = _environment_int("WORLD_SIZE", 1)
        torchrun = "TORCHELASTIC_RUN_ID" in os.environ
        if world <= 1 and not torchrun:
            yield cls()
            return
        device = resolve_device(train.device)
        if torchrun:
            _arm_parent_death_signal()
        if world != train.gpus_per_run:
            raise DistributedError(
                f"this run is configured for {train.gpus_per_run} GPU(s) but was launched as "
                f"{world} processes (WORLD_SIZE={world})"
            )
        problem = setting_problem(train, device, joined=True)
        if problem is not None:
            raise DistributedError(problem)
        group = cls(
            _environment_int("RANK", 0), world, _environment_int("LOCAL_RANK", 0), joined=True
        )
        if device.type == "cuda":
            torch.cuda.set_device(group.local_rank)
        backend = resolve_backend(train, device)
        dist.init_process_group(backend=backend, init_method="env://")
        if not group.is_main:
            # One progress log per run: the other ranks keep only stderr (their errors).
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
        try:
            yield group
        finally:
            dist.destroy_process_group()

    def device(self, device: torch.device) -> torch.device:
        if self.distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    # -- the model ------------------------------------------------------------------------------

    def prepare(self, model: nn.Module, train: TrainSpec) -> nn.Module:
        """Before the optimizer is built: BatchNorm -> SyncBatchNorm when asked (same parameter
        objects and state_dict keys, so checkpoints move between GPU counts)."""
        if self.distributed and train.sync_batchnorm:
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module the training step calls: DistributedDataParallel around `model`, which
        averages gradients across the ranks during backward and keeps rank 0's BatchNorm
        buffers on every rank. Evaluation calls `model` itself (no collectives)."""
        if not self.distributed:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def rank_loss(self, loss: torch.Tensor, local: int, global_batch: int) -> torch.Tensor:
        """The loss this rank back-propagates. DDP averages gradients over the ranks; a rank's
        mean loss weighted by local * ranks / global makes that average the gradient of the
        global batch's mean loss, exactly what one process computes, also for a last batch
        that splits unevenly (every full batch has weight 1)."""
        if not self.distributed or local * self.world == global_batch:
            return loss
        return loss * (local * self.world / global_batch)

    # -- collectives ----------------------------------------------------------------------------

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) a small tensor of counts; the tensor itself with one process."""
        if self.distributed:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when `flag` is True on any rank (one all-reduce of one number
        with several GPUs), so that all ranks stop a training-time budget at the same step."""
        if not self.distributed:
            return flag
        value = torch.tensor([float(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (picklable), in rank order."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def epoch_resources(
        self, rank_images: int, train_seconds: float, memory: dict[str, Any]
    ) -> dict[str, Any]:
        """The epoch record's throughput and memory. Several ranks: `peak_memory_mb` (and the
        other memory fields) is the largest rank's, the figure comparable with a one-GPU run;
        `peak_memory_total_mb` sums the ranks; `ranks` lists each rank's own figures.
        `images_per_second` stays the whole run's (every rank's images over the wall time)."""
        if not self.distributed:
            return memory
        mine = {
            "rank": self.rank,
            "images_per_second": round(rank_images / train_seconds, 1),
            **memory,
        }
        ranks = self.gather(mine)

        def largest(key: str) -> float | None:
            values = [r[key] for r in ranks if r.get(key) is not None]
            return max(values) if values else None

        peaks = [r["peak_memory_mb"] for r in ranks if r.get("peak_memory_mb") is not None]
        return {
            **memory,
            "peak_memory_mb": largest("peak_memory_mb"),
            "peak_memory_reserved_mb": largest("peak_memory_reserved_mb"),
            "device_memory_used_mb": largest("device_memory_used_mb"),
            "peak_memory_total_mb": sum(peaks) if peaks else None,
            "ranks": ranks,
        }

    @torch.no_grad()
    def check_masks(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
        """After a mask update, fail with one line unless every rank holds the same masks.

        Each mask (pruned = weight 0) is summarised by its count, the sum and the sum of
        squares of its pruned positions (int64, wrapping alike on every rank); one all-reduce
        of [c, -c] with MAX gives every rank the largest and smallest checksum of each mask,
        so all ranks see a disagreement and fail together."""
        pruner = getattr(optimizer, "pruner", None)
        if not self.distributed or pruner is None or pruner.step == self._checked_step:
            return
        if not pruner.schedule.is_update_step(pruner.step):
            return
        self._checked_step = pruner.step
        sums = []
        for p in pruner.params:
            pruned = (p.detach() == 0).flatten()
            position = torch.arange(pruned.numel(), device=p.device).mul_(pruned)
            sums.append(torch.stack([pruned.sum(), position.sum(), position.mul_(position).sum()]))
        checksum = torch.stack(sums)
        extremes = torch.cat([checksum, -checksum])
        dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
        largest, smallest = extremes[: len(sums)], -extremes[len(sums) :]
        differs = (largest != smallest).any(dim=1)
        if bool(differs.any()):
            index = int(differs.nonzero()[0, 0])
            names = {id(p): name for name, p in model.named_parameters()}
            name = names.get(id(pruner.params[index]), f"prunable tensor {index}")
            raise DistributedError(
                f"pruning masks differ between the {self.world} GPUs of this run after the mask "
                f"update at step {pruner.step} (first in {name}); the ranks no longer train the "
                "same model: report this with the run's train.log (CONFIG_DDP_MASK_CHECK=n "
                "skips the check)"
            )
