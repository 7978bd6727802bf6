"""AdamWSPAM: Spike-Aware Adam with Momentum reset (Huang et al., ICLR 2025).

Follows the official implementation (TianjinYellow/SPAM-Optimizer, galore_torch/SPAM.py,
commit e8185fb) operation by operation, as specified in ../shared/ALGORITHMS.md section 5 and
docs/algorithms.md. The per-step work runs on the multi-tensor (`torch._foreach_*`) path with the
reference's own operations (mul + add, not lerp; divide then add, not addcdiv), so the result is
bit-identical to the reference's per-tensor loop on CPU. On CPU the spike clipping computes
the reference's predicate and replacement with cheaper operations (a screen, and integer
operations on the float bits in place of a bool comparison and `torch.where`: see
`_clip_bucket`), equal bit for bit, at every edge, to the reference's. Deliberate differences
from the reference code, none of which changes a single number:

- its global counters live in a separate `"spam"` entry of `state_dict()`; the reference keeps
  them as string keys (`"total_step"`, `"current_step"`) in `optimizer.state`, which torch's
  state_dict round-trips as well, so both resume warmup and reset phase where they stopped.
  Here `optimizer.state` holds per-parameter entries only, as torch's optimizers do;
- moments are zeroed in place at a reset instead of being reallocated;
- the whole step runs one bucket at a time (lib/buckets.py): a few MiB of temporaries per
  step instead of about 9 B/param, and each bucket's data stays in cache across the step's
  dozen passes (on CPU with one thread in buckets of `SPAM_CPU_BUCKET` elements, see there);
- on CPU in float32 the bucket's work runs on compiled C loops (optimizers/spam_kernel.py:
  three passes and torch.sqrt twice instead of about 13 torch passes), used only where a
  self-check finds them bit-identical to the torch operations here; elsewhere, or with
  `USE_KERNEL` off, the torch operations run.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from lib.buckets import bucket_elements, buckets
from optimizers import spam_kernel

# Elements per bucket of the SPAM step on CPU with one intra-op thread, and on the compiled
# kernels with any number of threads (their passes are single-threaded), at most
# (lib.buckets.CPU_BUCKET when smaller). The torch operations make about 17 elementwise passes
# over a bucket, the kernels five; with 2^16 elements (256 KiB per tensor) the bucket's
# weights, gradients, moments and temporaries fit a 2 MiB L2 cache, so only the first pass
# streams from memory. ResNet-18, one thread, side by side (docs/benchmarks.md, issue 24): on
# torch operations 4.6-4.9x fused AdamW's step instead of 6.1x with 2^20 elements,
# bit-identical, and 2^14 slower again (Python cost per bucket); on the kernels 2^16 was faster
# than 2^15 and 2^17. With several threads the torch operations keep lib.buckets' size: there
# each pass is split across the threads, and small buckets were not measured reliably on the
# shared 2-core machine.
SPAM_CPU_BUCKET = 1 << 16


def _bucket_size(device: torch.device) -> int:
    size = bucket_elements(device)
    if device.type != "cpu" or torch.get_num_threads() > 1:
        return size
    return min(size, SPAM_CPU_BUCKET)


def check_adam_arguments(lr: float, betas: tuple[float, float], eps: float, weight_decay: float):
    """ValueError naming the argument, torch.optim style, for the hyperparameters Adams share."""
    if not lr >= 0.0:
        raise ValueError(f"lr={lr!r}: must be >= 0")
    if not eps >= 0.0:
        raise ValueError(f"eps={eps!r}: must be >= 0")
    if len(betas) != 2:
        raise ValueError(f"betas={betas!r}: must be a pair (beta1, beta2)")
    for index, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"betas[{index}]={beta!r}: must be in [0, 1)")
    if not weight_decay >= 0.0:
        raise ValueError(f"weight_decay={weight_decay!r}: must be >= 0")


class SpamClock:
    """SPAM's global counters: step `T` (0-based) and warmup counter `c`, with their rules."""

    def __init__(self, theta: float, interval: int, warmup_steps: int, clip_delay: int) -> None:
        if not theta >= 0.0:
            raise ValueError(f"theta={theta!r}: must be >= 0 (0 disables spike clipping)")
        for name, value, low in (
            ("interval", interval, 1),
            ("warmup_steps", warmup_steps, 0),
            ("clip_delay", clip_delay, 0),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r}: must be an integer >= {low}")
        self.theta = float(theta)
        self.interval = interval
        self.warmup_steps = warmup_steps
        self.clip_delay = clip_delay
        self.total_step = 0
        self.warmup_counter = warmup_steps + 1  # training does not begin with a warmup

    def warmup_scale(self) -> float:
        """1 - the reference's CosineDecay(0.99, N) at c: 0.01 right after a reset, then 1."""
        c, n = self.warmup_counter, self.warmup_steps
        if c >= n:
            return 1.0
        # Same expression as CosineAnnealingLR's closed form in the reference (bit-identical).
        return 1 - 0.99 * (1 + math.cos(math.pi * c / (n + 1))) / 2

    def is_reset_step(self) -> bool:
        return (self.total_step + 1) % self.interval == 0

    def clipping_active(self) -> bool:
        step = self.total_step + 1
        return (
            self.theta != 0 and step >= self.clip_delay and step % self.interval >= self.clip_delay
        )

    def advance(self) -> None:
        self.total_step += 1
        self.warmup_counter += 1
        if (self.total_step + 1) % self.interval == 0:
            self.warmup_counter = 0

    def state_dict(self) -> dict[str, int]:
        return {"total_step": self.total_step, "warmup_counter": self.warmup_counter}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.total_step = int(state["total_step"])
        self.warmup_counter = int(state["warmup_counter"])


@torch.no_grad()
def clip_spikes_(grads: list[Tensor], exp_avg_sqs: list[Tensor], theta: float) -> None:
    """Where g^2 > theta * v (v before this step's update), g <- sign(g) sqrt(theta v), in place.

    The reference's predicate and replacement exactly (not a clamp: the two differ when g^2
    underflows). Temporaries are one bucket of lib/buckets.py each, not model-sized.
    """
    if not grads:
        return
    device = grads[0].device
    screen = _can_screen(device)
    for bucket_grads, bucket_sqs in buckets([grads, exp_avg_sqs], _bucket_size(device)):
        _clip_bucket(bucket_grads, bucket_sqs, theta, screen)


def _can_screen(device: torch.device) -> bool:
    """Whether _clip_bucket may take its screened CPU path on `device` (asked once a step)."""
    return device.type == "cpu" and not _denormals_flushed()


def _clip_bucket(
    grads: list[Tensor], exp_avg_sqs: list[Tensor], theta: float, screen: bool
) -> None:
    """clip_spikes_ on one bucket; `screen` is `_can_screen(device)`.

    On other devices than the CPU: `torch.gt` and `torch.where`, as the reference does.

    On CPU the same result is computed in fewer and cheaper passes, whatever the spike rate
    (in training a few in 10^5 elements; the tests also take a third):
    - a screen: one foreach pass gives each tensor's largest excess d = g^2 - theta v, and a
      tensor whose largest excess is <= 0 has no spike and costs nothing more. With gradual
      underflow (IEEE default), fl(a - b) > 0 exactly when a > b for finite a, b; an inf or NaN
      in g or v that makes an excess NaN sends its tensor to the reference's operations;
    - spikes are merged in by `_merge_spikes_` with integer operations on the float bits, not
      with `torch.gt` (the slowest pass of the step: its bool output is not vectorised) and
      `torch.where` (its CPU kernel branches per element: 5x slower when a third of the
      elements are spikes than when none are).
    Where denormals are flushed to zero (torch.set_flush_denormal), a positive difference could
    read as 0, so there every tensor takes the reference's operations.
    """
    squares = torch._foreach_mul(grads, grads)
    limits = torch._foreach_mul(exp_avg_sqs, theta)
    if not screen:
        for grad, square, limit in zip(grads, squares, limits, strict=True):
            _clip_like_the_reference_(grad, square, limit)
        return
    excesses = squares
    torch._foreach_sub_(excesses, limits)
    largest = torch.stack(_foreach_max(excesses)).tolist()
    for grad, excess, limit, top in zip(grads, excesses, limits, largest, strict=True):
        if top <= 0.0:
            continue  # no spike
        if top > 0.0:
            _merge_spikes_(grad, limit, excess)
        else:  # NaN: an inf or NaN in g or v
            _clip_like_the_reference_(grad, grad * grad, limit)


def _foreach_max(tensors: list[Tensor]) -> list[Tensor]:
    """Each tensor's largest element, NaN where it holds one (torch.max's rule); one call where
    torch has the foreach op (it arrived around torch 2.4)."""
    if hasattr(torch, "_foreach_max"):
        return torch._foreach_max(tensors)
    return [t.max() for t in tensors]


def _clip_like_the_reference_(grad: Tensor, square: Tensor, limit: Tensor) -> None:
    """g <- where(g^2 > theta v, sign(g) sqrt(theta v), g); `limit` (theta v) is overwritten."""
    spike = torch.gt(square, limit)
    torch.where(spike, limit.sqrt_().copysign_(grad), grad, out=grad)


_SAME_SIZE_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _merge_spikes_(grad: Tensor, limit: Tensor, excess: Tensor) -> None:
    """g <- sign(g) sqrt(theta v) where excess = fl(g^2 - theta v) > 0, bit for bit, without
    a comparison or a branch per element; `limit` (theta v) and `excess` are overwritten.

    excess is never NaN here (screened) and never -0 (g^2 >= +0 and theta v >= +0, and x - x
    is +0), so, read as a signed integer of the same width, it is > 0 exactly where the float
    is > 0; negated and shifted right arithmetically by width - 1, that is an all-ones mask
    there and 0 elsewhere. Then g ^= (g ^ replacement) & mask.
    """
    as_int = _SAME_SIZE_INT[grad.element_size()]
    replacement = limit.sqrt_().copysign_(grad).view(as_int)
    grad_bits = grad.view(as_int)
    mask = excess.view(as_int)
    mask.neg_()
    mask.bitwise_right_shift_(8 * grad.element_size() - 1)
    replacement.bitwise_xor_(grad_bits)
    replacement.bitwise_and_(mask)
    grad_bits.bitwise_xor_(replacement)


def _denormals_flushed() -> bool:
    """Whether this thread's CPU flushes denormal results to zero (torch.set_flush_denormal)."""
    return bool(_SMALLEST_NORMAL.mul(0.5) == 0.0)


_SMALLEST_NORMAL = torch.tensor(torch.finfo(torch.float32).tiny)


def _torch_bucket(params, grads, exp_avgs, exp_avg_sqs, theta, screen, coefficients) -> None:
    """One bucket of the step with torch operations, the reference's own, in its order.

    `theta` is None where clipping is off; `coefficients` is (beta1, beta2, eps, alpha,
    decay, weight_decay), alpha = -step size * warmup scale, decay = -lr * weight_decay.
    """
    beta1, beta2, eps, alpha, decay, weight_decay = coefficients
    if theta is not None:
        _clip_bucket(grads, exp_avg_sqs, theta, screen)
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    # p <- p - step m / (sqrt(v) + eps)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denoms, eps)
    updates = torch._foreach_div(exp_avgs, denoms)
    del denoms
    torch._foreach_add_(params, updates, alpha=alpha)
    del updates
    if weight_decay > 0.0:
        # After the update and unscaled by the warmup, as p + (-lr wd) p like the reference.
        torch._foreach_add_(params, params, alpha=decay)


def _kernel_buckets(lists: list[list[Tensor]], size: int, root: Tensor):
    """lib.buckets.buckets' cut of `lists` (params, grads, exp_avgs, exp_avg_sqs) as raw
    pointers for the kernels, without making a view: buckets of pieces (n, p, g, m, v, at),
    `at` where the piece's square-root inputs go in `root`. Every tensor is float32 and dense
    (contiguous or channels-last, its four roles with one layout), so the elements of a piece
    are n consecutive floats in memory order from each pointer."""
    base = root.data_ptr()
    bucket, filled = [], 0
    for tensors in zip(*lists, strict=True):
        n = tensors[0].numel()
        pointers = [t.data_ptr() for t in tensors]
        start = 0
        while start < n:
            take = min(n - start, size - filled)
            bucket.append((take, *(x + 4 * start for x in pointers), base + 4 * filled))
            start += take
            filled += take
            if filled == size:
                yield bucket, filled
                bucket, filled = [], 0
    if filled:
        yield bucket, filled


def _kernel_bucket(kernel, root, pieces, filled, theta, coefficients) -> None:
    """One bucket of the step on the compiled kernels (optimizers/spam_kernel.py): `pieces`
    from `_kernel_buckets`, `filled` elements of `root` in use. Where clipping is on, the
    spikes' v*theta go into `root` and torch.sqrt runs over them (if there is a spike); then
    the moments write the new v there, torch.sqrt runs over them again, and the update reads
    them. Per element, the operations and their order are the reference's."""
    beta1, beta2, eps, alpha, decay, weight_decay = coefficients
    roots = root if filled == root.numel() else root[:filled]
    spiky = [False] * len(pieces)
    if theta is not None:
        spiky = [kernel.spam_limits(n, g, v, at, theta) > 0 for n, _, g, _, v, at in pieces]
        if any(spiky):
            torch.sqrt(roots, out=roots)
    args = (beta1, 1 - beta1, beta2, 1 - beta2)
    for (n, _, g, m, v, at), clip in zip(pieces, spiky, strict=True):
        kernel.spam_moments(n, g, m, v, at, theta if clip else 0.0, clip, *args)
    torch.sqrt(roots, out=roots)
    decayed = weight_decay > 0.0
    for n, p, _, m, v, at in pieces:
        kernel.spam_update(n, p, m, v, at, eps, alpha, decay, decayed)


# Whether SPAM may step on the compiled kernels where they are eligible (tests and the
# benchmark turn it off to compare with the torch operations side by side).
USE_KERNEL = True


def _kernel(params, grads, exp_avgs, exp_avg_sqs):
    """The compiled kernels if this group may use them: float32 on CPU, each tensor's four
    roles in one dense layout (contiguous or channels-last, the same strides), and the
    self-check passed (once per process)."""
    if not USE_KERNEL:
        return None
    cpu, float32, channels_last = torch.device("cpu"), torch.float32, torch.channels_last
    for roles in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
        first = roles[0]
        for t in roles:
            if t.device != cpu or t.dtype != float32 or t.stride() != first.stride():
                return None
        if not first.is_contiguous() and not (
            first.dim() == 4 and first.is_contiguous(memory_format=channels_last)
        ):
            return None
    return spam_kernel.library(_self_check)


def _self_check(kernel) -> str:
    """Empty when the kernels give the torch path's bits on probe tensors, else what differed.

    Lengths 1 to 67 and 4,099 (vectorised bodies and scalar tails), values at the edges
    (signed zeros, denormals, inf, NaN), a few spikes, clipping on and off, decay on and off.
    """
    generator = torch.Generator().manual_seed(0)
    lengths = [*range(1, 68), 4099]
    specials = torch.tensor([0.0, -0.0, 1e-40, -1e-42, 1e-20, 3.0, -7.5, math.inf, math.nan])

    def probe(scale):
        tensors = []
        for n in lengths:
            t = torch.randn(n, generator=generator) * scale
            t[torch.randint(0, n, (max(1, n // 10),), generator=generator)] = specials[
                torch.randint(0, len(specials), (max(1, n // 10),), generator=generator)
            ]
            tensors.append(t)
        return tensors

    for clipped, weight_decay in ((True, 0.1), (False, 0.0)):
        params, grads, avgs = probe(1.0), probe(0.01), probe(1e-3)
        sqs = [(t * 1e-2).square_() for t in probe(1.0)]
        for sq in sqs:
            sq[:: max(1, len(sq) // 5)] = 0.0
        twins = [[t.clone() for t in role] for role in (params, grads, avgs, sqs)]
        coefficients = (0.9, 0.999, 1e-6, -1.3e-3, -1e-3 * weight_decay, weight_decay)
        theta = 50.0 if clipped else None
        root = torch.empty(sum(lengths))
        for pieces, filled in _kernel_buckets([params, grads, avgs, sqs], root.numel(), root):
            _kernel_bucket(kernel, root, pieces, filled, theta, coefficients)
        _torch_bucket(*twins, theta, False, coefficients)
        for name, ours, theirs in zip("pgmv", (params, grads, avgs, sqs), twins, strict=True):
            for a, b in zip(ours, theirs, strict=True):
                if not torch.equal(a.view(torch.int32), b.view(torch.int32)):
                    return f"{name} differs (length {a.numel()}, clipping {clipped})"
    return ""


@torch.no_grad()
def spam_step(
    param_groups: list[dict[str, Any]], state: dict[Tensor, dict[str, Any]], clock: SpamClock
) -> None:
    """One SPAM step over `param_groups` (lr, betas, eps, weight_decay per group).

    Every operation is elementwise, so the whole step (clipping, moments, update, weight decay)
    runs one bucket (lib/buckets.py) at a time: a bucket's gradients, moments and weights are
    read from memory once and stay in cache for the dozen passes over them, instead of a dozen
    passes over the whole model. Per element, the operations and their order are the reference's.
    """
    scale = clock.warmup_scale()
    reset = clock.is_reset_step()
    clip = clock.clipping_active()
    for group in param_groups:
        params, grads, exp_avgs, exp_avg_sqs = [], [], [], []
        by_step: dict[int, list[int]] = defaultdict(list)
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("AdamWSPAM does not support sparse gradients")
            param_state = state[p]
            if len(param_state) == 0:
                param_state["step"] = 0  # k: never reset, so bias correction never restarts
                param_state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                param_state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            param_state["step"] += 1
            by_step[param_state["step"]].append(len(params))
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(param_state["exp_avg"])
            exp_avg_sqs.append(param_state["exp_avg_sq"])
        if not params:
            continue
        if reset:
            torch._foreach_zero_(exp_avgs)
            torch._foreach_zero_(exp_avg_sqs)
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        decay = -lr * group["weight_decay"]
        device = params[0].device
        kernel = _kernel(params, grads, exp_avgs, exp_avg_sqs)
        # The kernels' passes are single-threaded: buckets that fit L2 whatever the threads.
        size = _bucket_size(device)
        if kernel is not None:
            size = min(bucket_elements(device), SPAM_CPU_BUCKET)
        screen = clip and _can_screen(device)
        root = None
        if kernel is not None:  # the square-root inputs of one bucket
            root = torch.empty(min(size, sum(p.numel() for p in params)))
        for k, indices in by_step.items():
            step_size = lr * math.sqrt(1 - beta2**k) / (1 - beta1**k)
            coefficients = (beta1, beta2, eps, -step_size * scale, decay, group["weight_decay"])
            lists = [[role[i] for i in indices] for role in (params, grads, exp_avgs, exp_avg_sqs)]
            theta = clock.theta if clip else None
            if kernel is not None:
                for pieces, filled in _kernel_buckets(lists, size, root):
                    _kernel_bucket(kernel, root, pieces, filled, theta, coefficients)
                # Written through pointers: tell autograd, as an in-place torch op would, so
                # that a graph which saved one of them refuses to backward through it.
                torch.autograd.graph.increment_version([t for role in lists for t in role])
                continue
            for bucket in buckets(lists, size):
                _torch_bucket(*bucket, theta, screen, coefficients)
    clock.advance()


class AdamWSPAM(torch.optim.Optimizer):
    """SPAM with the reference defaults.

    Args:
        params: parameters or parameter groups.
        lr, betas, eps, weight_decay: as AdamW (weight decay decoupled, applied after the update).
        theta: spike threshold; clip g where g^2 > theta * v. 0 disables clipping.
        interval: momentum reset period (steps).
        warmup_steps: cosine warmup of the update's scale after each reset.
        clip_delay: steps without clipping at the start and after each reset.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        theta: float = 5000.0,
        interval: int = 500,
        warmup_steps: int = 150,
        clip_delay: int = 20,
    ) -> None:
        check_adam_arguments(lr, betas, eps, weight_decay)
        self.clock = SpamClock(theta, interval, warmup_steps, clip_delay)
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        spam_step(self.param_groups, self.state, self.clock)
        return loss

    def state_dict(self) -> dict[str, Any]:
        state_dict = super().state_dict()
        state_dict["spam"] = self.clock.state_dict()
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        clock = state_dict.pop("spam", None)
        if clock is None:
            raise ValueError("AdamWSPAM.load_state_dict: no 'spam' entry (global step counters)")
        super().load_state_dict(state_dict)
        self.clock.load_state_dict(clock)
