"""AdamWSPAM: Spike-Aware Adam with Momentum reset (Huang et al., ICLR 2025).

Follows the official implementation (TianjinYellow/SPAM-Optimizer, galore_torch/SPAM.py,
commit e8185fb) operation by operation, as specified in ../shared/ALGORITHMS.md section 5 and
docs/algorithms.md. The per-step work runs on the multi-tensor (`torch._foreach_*`) path with the
reference's own operations (mul + add, not lerp; divide then add, not addcdiv), so the result is
bit-identical to the reference's per-tensor loop on CPU. Two deliberate differences from the
reference code, neither of which changes a single number:

- its global counters live in a separate `"spam"` entry of `state_dict()`; the reference keeps
  them as string keys (`"total_step"`, `"current_step"`) in `optimizer.state`, which torch's
  state_dict round-trips as well, so both resume warmup and reset phase where they stopped.
  Here `optimizer.state` holds per-parameter entries only, as torch's optimizers do;
- moments are zeroed in place at a reset instead of being reallocated;
- its temporaries are made one bucket at a time (lib/buckets.py): a few MiB per step instead
  of about 9 B/param.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from lib.buckets import bucket_elements, buckets


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
    for bucket_grads, bucket_sqs in buckets([grads, exp_avg_sqs], bucket_elements(grads[0].device)):
        squares = torch._foreach_mul(bucket_grads, bucket_grads)
        limits = torch._foreach_mul(bucket_sqs, theta)
        spikes = [torch.gt(square, limit) for square, limit in zip(squares, limits, strict=True)]
        del squares
        torch._foreach_sqrt_(limits)
        for grad, limit, spike in zip(bucket_grads, limits, spikes, strict=True):
            torch.where(spike, limit.copysign_(grad), grad, out=grad)


@torch.no_grad()
def spam_step(
    param_groups: list[dict[str, Any]], state: dict[Tensor, dict[str, Any]], clock: SpamClock
) -> None:
    """One SPAM step over `param_groups` (lr, betas, eps, weight_decay per group)."""
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
        if clip:
            clip_spikes_(grads, exp_avg_sqs, clock.theta)
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        size = bucket_elements(params[0].device)
        for k, indices in by_step.items():
            step_size = lr * math.sqrt(1 - beta2**k) / (1 - beta1**k)
            # p <- p - step m / (sqrt(v) + eps), one bucket at a time: temporaries of a
            # bucket's size instead of the model's (lib/buckets.py), the same arithmetic.
            lists = [[params[i] for i in indices], [exp_avgs[i] for i in indices]]
            lists.append([exp_avg_sqs[i] for i in indices])
            for bucket_params, bucket_avgs, bucket_sqs in buckets(lists, size):
                denoms = torch._foreach_sqrt(bucket_sqs)
                torch._foreach_add_(denoms, eps)
                updates = torch._foreach_div(bucket_avgs, denoms)
                del denoms
                torch._foreach_add_(bucket_params, updates, alpha=-step_size * scale)
        if group["weight_decay"] > 0.0:
            # After the update and unscaled by the warmup, as p + (-lr wd) p like the reference.
            torch._foreach_add_(params, params, alpha=-lr * group["weight_decay"])
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
