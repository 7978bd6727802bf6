"""The one pruning machinery every method shares: schedule, exact threshold, masking, accounting.

Magnitude, movement and state-based (AdamWPrune) pruning differ only in the importance score.
Everything else lives here, once (docs/algorithms.md, section "Shared machinery"):

- `PruningSchedule`: when masks are updated and to which sparsity (cubic Zhu-Gupta or linear).
- `select_pruned`: the exact selection of the `k` lowest scores (count exact, ties by index).
- `Pruner`: the per-optimizer state machine. The optimizer calls `before_step()` (movement
  accumulation, gradient masking) and `after_step(state)` (mask update on schedule, zeroing of
  weights and of every optimizer-state tensor at pruned coordinates).

The mask itself is not stored: a prunable coordinate is pruned exactly when its weight is 0.
Pruning zeroes the weight, its optimizer state and (every step) its gradient, so for SGD, Adam,
AdamW, AMSGrad and SPAM the update of that coordinate is exactly zero and the weight stays 0
(tests/test_pruning.py proves it per optimizer). That costs 0 bytes per parameter instead of a
bool mask's 1, and the weights alone (a model checkpoint) restore the masks exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

SCHEDULES = ("cubic", "linear")
SCOPES = ("global", "layerwise")
# Scores a Pruner can compute. `magnitude` and `movement` work with any optimizer; the state
# scores read Adam's first and second moments (AdamWPrune).
STATE_SCORES = ("hybrid", "variance", "momentum", "magnitude")
SCORES = ("magnitude", "movement", "hybrid", "variance", "momentum")


def _check_fraction(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ValueError(f"{name}={value!r}: must be a fraction in [0, 1)")
    return float(value)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name}={value!r}: must be one of {', '.join(choices)}")
    return value


# -- schedule ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruningSchedule:
    """Target sparsity `s_t` after optimizer step `t` (1-based) and the steps that update masks.

    Between `start_step` and `end_step`, with `p = (t - start) / (end - start)`:
    cubic `s_t = s_f * (1 - (1 - p)^3)` (Zhu & Gupta 2017), linear `s_t = s_f * p`; 0 before,
    `s_f` after. Masks are updated at `start + j * interval` up to `end`, and always at `end`
    itself so the final sparsity is reached exactly. If `start >= end` (a run too short for the
    configured schedule) there is a single update, at step `max(end, 1)`, straight to `s_f`.
    """

    final_sparsity: float
    start_step: int
    end_step: int
    interval: int = 50
    kind: str = "cubic"

    def __post_init__(self) -> None:
        _check_fraction("sparsity", self.final_sparsity)
        _check_choice("schedule", self.kind, SCHEDULES)
        if not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f"interval={self.interval!r}: must be a positive number of steps")
        for name in ("start_step", "end_step"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r}: must be a non-negative number of steps")

    @property
    def degenerate(self) -> bool:
        return self.start_step >= self.end_step

    def sparsity_at(self, step: int) -> float:
        """Closed-form `s_t` (for a degenerate schedule: 0 before its one update, then `s_f`)."""
        if self.degenerate:
            return self.final_sparsity if step >= max(self.end_step, 1) else 0.0
        if step <= self.start_step:
            return 0.0
        if step >= self.end_step:
            return self.final_sparsity
        progress = (step - self.start_step) / (self.end_step - self.start_step)
        if self.kind == "cubic":
            return self.final_sparsity * (1.0 - (1.0 - progress) ** 3)
        return self.final_sparsity * progress

    def is_update_step(self, step: int) -> bool:
        if self.degenerate:
            return step == max(self.end_step, 1)
        if step < self.start_step or step > self.end_step:
            return False
        return step == self.end_step or (step - self.start_step) % self.interval == 0


# -- prunable set and measurement ----------------------------------------------------------------


def prunable_parameters(
    model: nn.Module, keep_ends_dense: bool = False
) -> list[tuple[str, nn.Parameter]]:
    """Weights of every Conv2d and Linear, named as in `model.named_parameters()`.

    With `keep_ends_dense`, the first Conv2d (the stem) and the last Linear (the classifier) are
    left out. Biases and normalisation parameters are never prunable.
    """
    layers = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and isinstance(module.weight, nn.Parameter)
    ]
    if keep_ends_dense:
        convs = [module for _, module in layers if isinstance(module, nn.Conv2d)]
        linears = [module for _, module in layers if isinstance(module, nn.Linear)]
        excluded = {id(m) for m in (convs[:1] + linears[-1:])}
        layers = [(name, module) for name, module in layers if id(module) not in excluded]
    wanted = {id(module.weight) for _, module in layers}
    # named_parameters() gives the canonical (deduplicated) name of shared weights.
    return [(name, p) for name, p in model.named_parameters() if id(p) in wanted]


@torch.no_grad()
def measure_sparsity(
    model: nn.Module, keep_ends_dense: bool = False
) -> tuple[float, dict[str, float]]:
    """Fraction of prunable weights that are exactly 0: globally and per layer (by name)."""
    named = prunable_parameters(model, keep_ends_dense)
    if not named:
        return 0.0, {}
    zeros = torch.stack([p.numel() - torch.count_nonzero(p) for _, p in named]).tolist()
    sizes = [p.numel() for _, p in named]
    per_layer = {name: z / n for (name, _), z, n in zip(named, zeros, sizes, strict=True)}
    return sum(zeros) / sum(sizes), per_layer


# -- exact selection ------------------------------------------------------------------------------

# Sample size of the bracketing pass in `select_pruned`; the exact selection then runs on the
# few scores between the two bracket values instead of on all of them.
_SAMPLE_SIZE = 1 << 16
_BRACKET_SIGMAS = 6.0


def _kth_smallest(values: Tensor, k: int) -> Tensor:
    """The k-th smallest (1-based) value, with `topk` on the smaller side as ALGORITHMS.md asks."""
    n = values.numel()
    if k <= n - k + 1:
        return torch.topk(values, k, largest=False, sorted=False).values.max()
    return torch.topk(values, n - k + 1, largest=True, sorted=False).values.min()


def _select_bracketed(scores: Tensor, k: int) -> tuple[Tensor, int, Tensor] | None:
    """The k-th smallest value, how many scores are below it, and the positions of those equal.

    A strided sample estimates the rank-k value; two sample order statistics `lo <= hi`, a few
    binomial standard deviations either side, bracket it. The counts are exact (made on the
    full tensor), so if the bracket provably holds rank k the answer is exact; otherwise
    (structured or adversarial data) None, and the caller selects over everything.
    """
    n = scores.numel()
    stride = n // _SAMPLE_SIZE
    if stride < 8:
        return None
    sample = scores[::stride]
    m = sample.numel()
    quantile = k / n
    margin = _BRACKET_SIGMAS * math.sqrt(m * quantile * (1 - quantile)) + 8
    # Two order statistics of the sample (kthvalue: a full sort of it costs more than both).
    lo = torch.kthvalue(sample, max(1, int(quantile * m - margin) + 1)).values
    hi = torch.kthvalue(sample, min(m, int(quantile * m + margin) + 1)).values
    below = scores < lo
    count_below = int(torch.count_nonzero(below))
    inside = scores <= hi
    inside.logical_xor_(below)  # lo <= score <= hi (below is a subset)
    positions = torch.nonzero(inside).flatten()  # ascending
    values = scores[positions]
    if not count_below < k <= count_below + values.numel():
        return None
    threshold = _kth_smallest(values, k - count_below)
    count_below += int(torch.count_nonzero(values < threshold))
    return threshold, count_below, positions[values == threshold]


@torch.no_grad()
def select_pruned(scores: Tensor, prune_count: int) -> Tensor:
    """Bool mask of exactly `prune_count` entries of the 1-D `scores`: the lowest ones.

    Ties at the threshold are broken by position (lower index pruned first), so the count is
    exact whatever the data. Never `torch.quantile` (limited to 2^24 elements). About three
    elementwise passes over the scores plus a selection over the ~2% inside a sampled bracket.
    """
    n = scores.numel()
    if prune_count <= 0:
        return torch.zeros(n, dtype=torch.bool, device=scores.device)
    if prune_count >= n:
        return torch.ones(n, dtype=torch.bool, device=scores.device)
    bracketed = _select_bracketed(scores, prune_count)
    if bracketed is None:
        threshold = _kth_smallest(scores, prune_count)
        pruned = scores < threshold
        count_below, ties = int(torch.count_nonzero(pruned)), None
    else:
        threshold, count_below, ties = bracketed
        pruned = scores < threshold
    missing = prune_count - count_below
    if missing > 0:
        if ties is None:
            ties = torch.nonzero(scores == threshold).flatten()
        pruned[ties[:missing]] = True
    return pruned


# -- scores ---------------------------------------------------------------------------------------


@torch.no_grad()
def importance_score(
    score: str, weight: Tensor, state: dict[str, Any], movement: Tensor | None, eps: float
) -> Tensor:
    """A fresh fp32 tensor of scores for one parameter (higher = more important).

    State scores use Adam's raw (not bias-corrected) moments; before a parameter has optimizer
    state they fall back to |w|.
    """
    w = weight.detach()
    if score == "movement":
        if movement is None:
            raise ValueError("score='movement' needs its accumulated score buffer")
        return movement.detach().clone()
    if score == "magnitude" or "exp_avg" not in state:
        return w.abs()
    m, v = state["exp_avg"], state["exp_avg_sq"]
    if score == "hybrid":  # |w m| |w| / (sqrt(v) + eps)
        return m.abs().mul_(w).mul_(w).div_(v.sqrt().add_(eps))
    if score == "variance":  # |w| (v + eps)^(1/4)
        return v.add(eps).pow_(0.25).mul_(w.abs())
    if score == "momentum":  # |w| sqrt(|m| + eps)
        return m.abs().add_(eps).sqrt_().mul_(w.abs())
    raise ValueError(f"score={score!r}: must be one of {', '.join(SCORES)}")


# -- the per-optimizer machinery ------------------------------------------------------------------


class Pruner:
    """Schedule, scores, masks and state zeroing for the prunable parameters of one optimizer.

    It owns no mask: a prunable coordinate is pruned iff its weight is 0 (see module docstring).
    Its own state (step counter, sparsity in force, movement scores) goes into the optimizer's
    `state_dict()` under `"pruning"`.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        schedule: PruningSchedule,
        score: str = "magnitude",
        scope: str = "global",
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("prunable: no parameters to prune")
        self.schedule = schedule
        self.score = _check_choice("score", score, SCORES)
        self.scope = _check_choice("scope", scope, SCOPES)
        self.eps = eps
        self.step = 0  # optimizer steps taken (the schedule's t)
        self.sparsity = 0.0  # target of the last mask update: what the masks implement now
        # Sanh et al.'s S, accumulated as S <- S - g * w from the first step: +4 B per weight.
        self.movement_scores = (
            [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
            if score == "movement"
            else None
        )

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    def state_bytes(self) -> int:
        if self.movement_scores is None:
            return 0
        return sum(s.numel() * s.element_size() for s in self.movement_scores)

    @torch.no_grad()
    def before_step(self) -> None:
        """Accumulate movement scores, then zero the gradients of pruned weights."""
        with_grad = [i for i, p in enumerate(self.params) if p.grad is not None]
        if self.movement_scores is not None and with_grad:
            torch._foreach_addcmul_(
                [self.movement_scores[i] for i in with_grad],
                [self.params[i].grad for i in with_grad],
                [self.params[i] for i in with_grad],
                value=-1.0,
            )
        if self.sparsity > 0.0 and with_grad:
            # g <- g * |sign(w)|: exact (a product with 1 or 0), and float-only, so it stays on
            # vectorised kernels (about twice as fast as g.mul_(w != 0) with its bool operand).
            # With the weight, its moments and its gradient all 0, no optimizer here can move a
            # pruned weight, so weights are never re-masked (tests/test_pruning.py).
            keep = torch._foreach_sign([self.params[i].detach() for i in with_grad])
            torch._foreach_abs_(keep)
            torch._foreach_mul_([self.params[i].grad for i in with_grad], keep)

    @torch.no_grad()
    def after_step(self, optimizer_state: dict[Tensor, dict[str, Any]]) -> None:
        self.step += 1
        if self.schedule.is_update_step(self.step):
            self.update_masks(optimizer_state, self.schedule.sparsity_at(self.step))

    @torch.no_grad()
    def update_masks(self, optimizer_state: dict[Tensor, dict[str, Any]], sparsity: float) -> None:
        """Prune to `sparsity` (monotone: already-pruned weights rank below every kept one)."""
        scores = []
        for i, p in enumerate(self.params):
            movement = None if self.movement_scores is None else self.movement_scores[i]
            s = importance_score(self.score, p, optimizer_state.get(p, {}), movement, self.eps)
            scores.append(s.masked_fill_(p == 0, -math.inf).flatten())
        if self.scope == "global":
            total = sum(s.numel() for s in scores)
            flat = torch.cat(scores)
            del scores
            pruned = select_pruned(flat, total - round((1.0 - sparsity) * total))
            del flat
            masks = pruned.split([p.numel() for p in self.params])
        else:
            masks = [
                select_pruned(s, s.numel() - round((1.0 - sparsity) * s.numel())) for s in scores
            ]
        for i, (p, mask) in enumerate(zip(self.params, masks, strict=True)):
            mask = mask.view(p.shape)
            p.detach().masked_fill_(mask, 0.0)
            for value in optimizer_state.get(p, {}).values():
                # Every per-coordinate buffer: exp_avg, exp_avg_sq, max_exp_avg_sq, momentum...
                if isinstance(value, Tensor) and value.shape == p.shape:
                    value.masked_fill_(mask, 0.0)
            if self.movement_scores is not None:
                self.movement_scores[i].masked_fill_(mask, 0.0)
        self.sparsity = sparsity

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "sparsity": self.sparsity,
            "movement_scores": None if self.movement_scores is None else list(self.movement_scores),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["movement_scores"]
        if (saved is None) != (self.movement_scores is None):
            raise ValueError(
                "pruning state: movement scores present in only one of the checkpoint and the "
                "optimizer; it was saved with a different pruning method"
            )
        if self.movement_scores is not None:
            if len(saved) != len(self.movement_scores):
                raise ValueError(
                    f"pruning state: {len(saved)} movement score tensors, expected "
                    f"{len(self.movement_scores)}"
                )
            for buffer, value in zip(self.movement_scores, saved, strict=True):
                buffer.copy_(value)
        self.step = int(state["step"])
        self.sparsity = float(state["sparsity"])


# -- what the training loop and the report read ---------------------------------------------------


def scheduled_sparsity(optimizer: torch.optim.Optimizer) -> float:
    """The target the masks currently implement (s_t of the last mask update); 0.0 if dense."""
    pruner = getattr(optimizer, "pruner", None)
    return 0.0 if pruner is None else pruner.sparsity


def _tensor_bytes(tensors: Iterable[Any]) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        # 0-d tensors (step counters) are bookkeeping, not per-coordinate state.
        if isinstance(t, Tensor) and t.dim() > 0 and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def state_memory(
    optimizer: torch.optim.Optimizer, model: nn.Module, keep_ends_dense: bool = False
) -> dict[str, Any]:
    """Bytes of optimizer and pruning state, measured from the tensors the optimizer holds.

    Only per-coordinate buffers count (0-d step counters are left out). The
    `extra_bytes_per_prunable_param` is (optimizer + pruning state bytes - what
    torch.optim.AdamW holds for the same parameters, m and v) divided by the number of prunable
    weights: 0 for AdamW, AdamWSPAM and AdamWPrune, 4 for movement on AdamW, about 4 for
    adamwadv (AMSGrad's max buffer), negative for SGD, which holds less than AdamW.
    """
    held = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer_bytes = 0
    adamw_bytes = 0
    for p in held:
        state = optimizer.state.get(p)
        if not state:
            continue
        optimizer_bytes += _tensor_bytes(state.values())
        adamw_bytes += 2 * p.numel() * p.element_size()
    pruner = getattr(optimizer, "pruner", None)
    pruning_bytes = 0 if pruner is None else pruner.state_bytes()
    if pruner is not None:
        prunable = pruner.numel
    else:
        prunable = sum(p.numel() for _, p in prunable_parameters(model, keep_ends_dense))
    extra = (optimizer_bytes + pruning_bytes - adamw_bytes) / prunable if prunable else 0.0
    return {
        "optimizer_state_bytes": optimizer_bytes,
        "pruning_state_bytes": pruning_bytes,
        "extra_bytes_per_prunable_param": extra,
    }
