"""Bounded temporaries for elementwise optimizer work: parallel tensor lists cut into buckets.

An elementwise step written with `torch._foreach_*` over whole parameter lists allocates every
temporary at full model size (about 100 MB per temporary for ResNet-50): on CPU each step then
maps fresh pages (tens of thousands of page faults), on a GPU the temporaries raise peak memory.
`buckets()` cuts parallel lists of tensors (a parameter, its gradient, its moments...) into
buckets of 1-D views holding at most `bucket_elements()` elements in all, so the same foreach
code runs with temporaries of one bucket's size, reused from the allocator's cache. The views
alias the original tensors: in-place work on them is in-place work on the tensors, element for
element the same arithmetic, so results are bit-identical to the unbucketed code.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

# Elements per bucket. CPU: 4 MiB temporaries, small enough to be recycled by malloc without
# new page faults and large enough that the per-op dispatch cost stays small. Other devices:
# fewer, larger buckets keep the kernel-launch count close to the unbucketed code's.
CPU_BUCKET = 1 << 20
DEVICE_BUCKET = 1 << 23


def bucket_elements(device: torch.device) -> int:
    return CPU_BUCKET if device.type == "cpu" else DEVICE_BUCKET


def _flat(t: Tensor) -> Tensor | None:
    """A 1-D view of `t` in memory order, or None when its layout has none."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).view(-1)
    return None


def buckets(lists: Sequence[Sequence[Tensor]], size: int) -> Iterator[list[list[Tensor]]]:
    """Yield `[views of lists[0], views of lists[1], ...]`, each bucket <= `size` elements.

    `lists[j][i]` is the j-th role (weight, gradient, moment...) of tensor i; all roles of one
    tensor must have its shape. A tensor that fits in the bucket being filled goes in whole (no
    view to make: the per-step Python cost stays that of the unbucketed code). A larger one is
    cut into 1-D pieces when its roles share a flat memory-order view; one whose roles differ in
    layout goes whole into a bucket of its own (correct, with a temporary of its size).
    """
    roles = len(lists)
    current: list[list[Tensor]] = [[] for _ in range(roles)]
    filled = 0
    for i in range(len(lists[0])):
        tensors = [lists[j][i] for j in range(roles)]
        n = tensors[0].numel()
        if n == 0:
            continue  # nothing to compute (and no element for a reduction to read)
        if filled + n <= size:
            for j in range(roles):
                current[j].append(tensors[j])
            filled += n
            if filled >= size:
                yield current
                current, filled = [[] for _ in range(roles)], 0
            continue
        flats = [_flat(t) for t in tensors]
        if any(f is None for f in flats) or len({t.stride() for t in tensors}) > 1:
            yield [[t] for t in tensors]
            continue
        start = 0
        while start < n:
            take = min(n - start, size - filled)
            for j in range(roles):
                current[j].append(flats[j][start : start + take])
            start += take
            filled += take
            if filled >= size:
                yield current
                current, filled = [[] for _ in range(roles)], 0
    if filled:
        yield current
