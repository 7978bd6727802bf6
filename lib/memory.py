"""Peak memory per epoch, measured honestly.

CUDA: `torch.cuda.max_memory_allocated()` (the tensors the run held at its peak) and
`max_memory_reserved()` (what the caching allocator took from the driver), both after
`reset_peak_memory_stats()` at the start of the epoch. NVML's device-wide usage is an optional
extra (it includes the CUDA context and other processes), never the only number.

CPU: the peak resident set size of the process. On Linux the peak (VmHWM) is reset at the start
of each epoch by writing 5 to /proc/self/clear_refs, so each epoch reports its own peak; where
that is not possible the figure is the process's lifetime peak (`ru_maxrss`) and
`memory_kind` says so.

Exact optimizer and pruning state bytes come from the tensors themselves (`tensor_bytes`).
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

MIB = 2**20

KIND_CUDA = "cuda_allocated"
KIND_CPU_RSS = "cpu_rss"  # peak RSS since the start of the epoch
KIND_CPU_RSS_LIFETIME = "cpu_rss_lifetime"  # peak RSS since the process started

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def tensor_bytes(tensors: Iterable[Any]) -> int:
    """Bytes held by the tensors in `tensors` (nested dicts/lists/tuples are walked).

    Each storage is counted once, so views of one buffer are not double-counted.
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = list(tensors)
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


def _read_vm_hwm_kib() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class PeakMemoryMeter:
    """Reset at the start of an epoch with `reset()`, read at its end with `read()`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._epoch_rss_supported = sys.platform.startswith("linux") and _CLEAR_REFS.exists()

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self._epoch_rss_supported:
            try:
                _CLEAR_REFS.write_text("5")
            except OSError:
                self._epoch_rss_supported = False

    def read(self) -> dict[str, Any]:
        """`peak_memory_mb`, `peak_memory_reserved_mb` (CUDA only), `memory_kind`, and
        `device_memory_used_mb` (NVML, CUDA only, when available)."""
        if self.device.type == "cuda":
            # MiB to 1/100 (about 10 KiB), the precision a figure printed in MiB with one
            # decimal needs; the bytes' 16 digits would only make metrics.json longer.
            return {
                "peak_memory_mb": round(torch.cuda.max_memory_allocated(self.device) / MIB, 2),
                "peak_memory_reserved_mb": round(
                    torch.cuda.max_memory_reserved(self.device) / MIB, 2
                ),
                "device_memory_used_mb": _nvml_used_mb(self.device),
                "memory_kind": KIND_CUDA,
            }
        hwm_kib = _read_vm_hwm_kib() if self._epoch_rss_supported else None
        if hwm_kib is not None:
            peak_mb, kind = hwm_kib / 1024, KIND_CPU_RSS
        else:
            # ru_maxrss is KiB on Linux, bytes on macOS.
            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak_mb = maxrss / MIB if sys.platform == "darwin" else maxrss / 1024
            kind = KIND_CPU_RSS_LIFETIME
        return {
            "peak_memory_mb": peak_mb,
            "peak_memory_reserved_mb": None,
            "device_memory_used_mb": None,
            "memory_kind": kind,
        }


def _nvml_used_mb(device: torch.device) -> float | None:
    """Device-wide memory in use according to NVML (includes the context and other processes)."""
    try:
        return round(torch.cuda.device_memory_used(device) / MIB, 2)
    except Exception:  # noqa: BLE001 - NVML is optional (pynvml missing, no permission, ...)
        return None


def peak_transient_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes that `fn()` allocated beyond what existed when it started (CPU allocator).

    Read from the profiler's allocator events (`profile_memory=True`): the maximum of the
    running sum of allocations and frees, in the order they happened. Measures temporaries, e.g. what
    one optimizer step allocates and frees again (benchmarks/bench_optimizers.py).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # One record per allocation (+) and free (-), with its time.
    records = prof.profiler.kineto_results.events()
    events = sorted((e.start_ns(), e.nbytes()) for e in records if e.name() == "[memory]")
    current = peak = 0
    for _, change in events:
        current += change
        peak = max(peak, current)
    return peak
