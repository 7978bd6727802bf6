"""The one pruning machinery every method shares: schedule, exact threshold, masking, accounting.

Magnitude, movement and state-based (AdamWPrune) pruning differ only in the importance score.
Everything else lives here, once (docs/algorithms.md, section "Shared machinery"):

- `PruningSchedule`: when masks are updated and to which sparsity (cubic Zhu-Gupta or linear).
- `select_lowest` / `select_pruned`: the exact selection of the `k` lowest scores (count exact,
  ties by index), ranking only the kept weights.
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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lib.buckets import bucket_elements, buckets

SCHEDULES = ("cubic", "linear")
SCOPES = ("global", "layerwise")
# Scores a Pruner can compute. `magnitude` and `movement` work with any optimizer; the state
# scores read Adam's first and second moments (AdamWPrune).
STATE_SCORES = ("hybrid", "variance", "momentum", "magnitude")
SCORES = ("magnitude", "movement", "hybrid", "variance", "momentum", "displacement")
# The upstream reference project's "movement" score, `w * (w - w0)` against the weights when the
# pruner was made (the start of training): what the seed's baseline ran, not Sanh et al.'s
# method (docs/reproducing.md). Only for reproducing the seed (an entry's `upstream_score`).
DISPLACEMENT = "displacement"


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


def _layer_weights(module: nn.Module) -> list[nn.Parameter]:
    """The prunable weight matrices a module owns itself (not its children's).

    nn.MultiheadAttention (a ViT's attention) keeps its query/key/value projection as bare
    parameters, `in_proj_weight` (or `q/k/v_proj_weight` when the dimensions differ), not as
    Linear modules; they are Linear weights all the same. Its output projection is a Linear.
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        weights = [module.weight]
    elif isinstance(module, nn.MultiheadAttention):
        weights = [module.in_proj_weight, module.q_proj_weight, module.k_proj_weight]
        weights.append(module.v_proj_weight)
    else:
        return []
    return [w for w in weights if isinstance(w, nn.Parameter)]


def prunable_parameters(
    model: nn.Module, keep_ends_dense: bool = False
) -> list[tuple[str, nn.Parameter]]:
    """Weights of every Conv2d and Linear, the input projections of every MultiheadAttention
    included, named as in `model.named_parameters()`.

    With `keep_ends_dense`, the first Conv2d (the stem) and the last Linear (the classifier) are
    left out. Biases and normalisation parameters are never prunable, nor embeddings that are
    no layer's weight (a ViT's class token and position embedding).
    """
    layers = [(name, module) for name, module in model.named_modules() if _layer_weights(module)]
    if keep_ends_dense:
        convs = [module for _, module in layers if isinstance(module, nn.Conv2d)]
        linears = [module for _, module in layers if isinstance(module, nn.Linear)]
        excluded = {id(m) for m in (convs[:1] + linears[-1:])}
        layers = [(name, module) for name, module in layers if id(module) not in excluded]
    wanted = {id(weight) for _, module in layers for weight in _layer_weights(module)}
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

# Sample size of the bracketing pass; the exact selection then runs on the few scores between
# the two bracket values instead of on all of them.
_SAMPLE_SIZE = 1 << 16
_BRACKET_SIGMAS = 6.0


def _kth_smallest(values: Tensor, k: int) -> Tensor:
    """The k-th smallest (1-based) value, with `topk` on the smaller side as ALGORITHMS.md asks."""
    n = values.numel()
    if k <= n - k + 1:
        return torch.topk(values, k, largest=False, sorted=False).values.max()
    return torch.topk(values, n - k + 1, largest=True, sorted=False).values.min()


def _bracket(scores: Tensor, count: int, floor_count: int) -> tuple[Tensor, float, int] | None:
    """Positions that may hold rank `count` among the scores above -inf, and what lies below.

    A strided sample of the scores above -inf estimates the rank-`count` value among the
    `n - floor_count` candidates; two sample order statistics `lo < hi` a few binomial standard
    deviations either side bracket it. Returns the ascending positions with lo < score <= hi,
    lo, and the exact number of candidates <= lo. When the rank is near the bottom (a small
    sparsity increment) lo is -inf: only the few lowest kept scores are gathered. None when the
    sample is too small; the caller checks the bracket against the exact counts.
    """
    n = scores.numel()
    stride = n // _SAMPLE_SIZE
    if stride < 8:
        return None
    sample = scores[::stride]
    sample = sample[sample > -math.inf]
    m = sample.numel()
    candidates = n - floor_count
    if m < 64 or candidates <= 0:
        return None
    quantile = count / candidates
    margin = _BRACKET_SIGMAS * math.sqrt(m * quantile * (1 - quantile)) + 8
    low_rank = int(quantile * m - margin)  # sample ranks certainly below rank `count`
    high_rank = min(m, int(quantile * m + margin) + 1)
    # Two order statistics of the sample (kthvalue: a full sort of it costs more than both).
    lo = torch.kthvalue(sample, low_rank).values.item() if low_rank >= 1 else -math.inf
    hi = torch.kthvalue(sample, high_rank).values.item()
    inside = scores > lo
    below = 0 if lo == -math.inf else candidates - int(torch.count_nonzero(inside))
    inside.logical_and_(scores <= hi)
    return torch.nonzero(inside).flatten(), lo, below


@torch.no_grad()
def select_lowest(scores: Tensor, count: int, floor_count: int | None = None) -> Tensor:
    """Ascending positions of the `count` lowest scores above -inf; ties by position (lower first).

    -inf marks entries that are not candidates (weights pruned earlier); `floor_count` is how
    many there are (counted here when not given; a wrong count only costs time, never
    exactness). The count is exact whatever the data: a sampled bracket holds the rank with
    exact counts made on the full tensor, and if it does not (structured or adversarial data)
    the selection runs over every candidate. With a small `count` (a small sparsity increment)
    only the scores just above the lowest kept ones are gathered: two elementwise passes and a
    selection over a few thousand values.
    """
    n = scores.numel()
    if floor_count is None:
        floor_count = int(torch.count_nonzero(scores == -math.inf))
    empty = torch.empty(0, dtype=torch.long, device=scores.device)
    if count <= 0:
        return empty
    if count >= n - floor_count:
        return torch.nonzero(scores > -math.inf).flatten()
    bracket = _bracket(scores, count, floor_count)
    if bracket is not None:
        positions, lo, below = bracket
        if not below < count <= below + positions.numel():
            bracket = None
    if bracket is None:  # every candidate
        positions, lo, below = torch.nonzero(scores > -math.inf).flatten(), -math.inf, 0
    values = scores[positions]
    threshold = _kth_smallest(values, count - below)
    chosen = [positions[values < threshold]]
    missing = count - below - chosen[0].numel()
    if missing > 0:
        chosen.append(positions[values == threshold][:missing])
    if below > 0:
        chosen.append(torch.nonzero((scores <= lo).logical_and_(scores > -math.inf)).flatten())
    return chosen[0] if len(chosen) == 1 else torch.cat(chosen).sort().values


@torch.no_grad()
def select_pruned(scores: Tensor, prune_count: int) -> Tensor:
    """Bool mask of exactly `prune_count` entries of the 1-D `scores`: the lowest ones.

    Ties (also among -inf) are broken by position, lower index pruned first, so the count is
    exact whatever the data. Never `torch.quantile` (limited to 2^24 elements).
    """
    n = scores.numel()
    if prune_count >= n:
        return torch.ones(n, dtype=torch.bool, device=scores.device)
    floor = scores == -math.inf
    floor_count = int(torch.count_nonzero(floor))
    if prune_count <= floor_count:
        pruned = torch.zeros(n, dtype=torch.bool, device=scores.device)
        pruned[torch.nonzero(floor).flatten()[: max(prune_count, 0)]] = True
        return pruned
    floor[select_lowest(scores, prune_count - floor_count, floor_count)] = True
    return floor


# -- scores ---------------------------------------------------------------------------------------


@torch.no_grad()
def importance_score(
    score: str,
    weight: Tensor,
    state: dict[str, Any],
    movement: Tensor | None,
    eps: float,
    initial: Tensor | None = None,
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
    if score == DISPLACEMENT:  # upstream's w * (w - w0)
        if initial is None:
            raise ValueError("score='displacement' needs the initial weights")
        return (w - initial).mul_(w).float()
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


def check_pattern(pattern: tuple[int, int] | None, sparsity: float) -> tuple[int, int] | None:
    """An N:M pattern `(n, m)` keeps N of every M weights: it fixes the sparsity at (M-N)/M."""
    if pattern is None:
        return None
    n, m = pattern
    if not (isinstance(n, int) and isinstance(m, int) and 1 <= n < m):
        raise ValueError(f"pattern={n}:{m}: N:M needs whole numbers 1 <= N < M")
    if abs(sparsity - (m - n) / m) > 1e-9:
        raise ValueError(
            f"pattern={n}:{m} with sparsity={sparsity!r}: an N:M pattern's sparsity is "
            f"(M-N)/M = {(m - n) / m:g}"
        )
    return n, m


def nm_eligible(weight: Tensor, m: int) -> bool:
    """Whether a weight's input dimension (a Linear's in_features, a Conv2d's in_channels)
    splits into groups of M; a layer that does not (an RGB stem: 3 channels) stays dense."""
    return weight.dim() >= 2 and weight.shape[1] % m == 0


def _nm_groups(t: Tensor, m: int) -> Tensor:
    """`t` as rows of M consecutive elements along the input dimension (dim 1): a Conv2d
    weight (out, in, kh, kw) is viewed as (out, kh, kw, in) first, as sparse kernels want."""
    if t.dim() > 2:
        t = t.movedim(1, -1)
    return t.reshape(-1, m)


def _nm_positions(scores: Tensor, sparsity: float, n: int, m: int) -> Tensor:
    """Ascending positions (logical order) to prune now under an N:M pattern: in every group
    of M the round(sparsity * M) lowest scores (at most M - N; ties by position), less those
    pruned already (score -inf). At the target exactly N of every M stay."""
    empty = torch.empty(0, dtype=torch.long, device=scores.device)
    count = min(round(sparsity * m), m - n)
    if count <= 0 or not nm_eligible(scores, m):
        return empty
    groups = _nm_groups(scores, m)
    lowest = torch.argsort(groups, dim=1, stable=True)[:, :count]
    pruned = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, lowest, True)
    pruned.logical_and_(groups > -math.inf)
    if scores.dim() > 2:  # back to the weight's own (out, in, kh, kw) order
        shape = scores.movedim(1, -1).shape
        pruned = pruned.reshape(shape).movedim(-1, 1)
    return torch.nonzero(pruned.reshape(-1)).flatten()


def _zero_at(t: Tensor, positions: Tensor) -> None:
    """t[positions] = 0 for ascending positions in `t`'s logical (row-major) order."""
    if t.is_contiguous():
        t.view(-1).index_fill_(0, positions, 0.0)
    else:
        t.index_put_(torch.unravel_index(positions, t.shape), t.new_zeros(()))


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
        score: str | Callable[[Tensor, dict[str, Any]], Tensor] = "magnitude",
        scope: str = "global",
        eps: float = 1e-8,
        rebuild: bool = False,
        weights_only: bool = False,
        pattern: tuple[int, int] | None = None,
    ) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("prunable: no parameters to prune")
        self.schedule = schedule
        # A plug-in pruning method brings its own score: (weight, its optimizer state) ->
        # importance, lowest pruned first (lib/catalogue.py PruningEntry.score).
        self.score = score if callable(score) else _check_choice("score", score, SCORES)
        self.scope = _check_choice("scope", scope, SCOPES)
        self.eps = eps
        # N:M semi-structured sparsity: (N, M) or None for unstructured (see _nm_positions).
        self.pattern = check_pattern(pattern, schedule.final_sparsity)
        self.step = 0  # optimizer steps taken (the schedule's t)
        self.sparsity = 0.0  # target of the last mask update: what the masks implement now
        # Zero weights right after the last mask update (None: no update in this process yet).
        self._zeros_after_update: int | None = None
        # Sanh et al.'s S, accumulated as S <- S - g * w from the first step: +4 B per weight.
        self.movement_scores = (
            [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
            if score == "movement"
            else None
        )
        # Upstream's semantics, for reproducing the seed only (docs/reproducing.md):
        # `rebuild`: masks rebuilt from scratch at every `interval`-th step (step % interval,
        # counted from step 0) while the target is above 0, until the end of training, so a
        # pruned weight may come back; the count pruned is upstream's floor(s_t * N).
        # `weights_only`: the mask multiplies the weights after every step and nothing else;
        # gradients and optimizer state of pruned weights are left as they are.
        # Either needs the mask itself (1 B per weight): the zeros no longer are the mask.
        self.rebuild = bool(rebuild)
        self.weights_only = bool(weights_only)
        if self.pattern is not None and (self.rebuild or self.weights_only):
            raise ValueError("pattern: N:M sparsity with upstream's rebuilt or weight-only masks")
        self.masks = (
            [torch.ones_like(p, dtype=torch.bool) for p in self.params]
            if self.rebuild or self.weights_only
            else None
        )
        # The displacement score's w0: +4 B per weight, as upstream's copy of the weights.
        self.initial_weights = (
            [p.detach().clone() for p in self.params] if score == DISPLACEMENT else None
        )

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    def state_bytes(self) -> int:
        """Bytes the pruning holds beyond the optimizer: movement scores, w0, masks."""
        held = [*(self.movement_scores or ()), *(self.initial_weights or ()), *(self.masks or ())]
        return sum(s.numel() * s.element_size() for s in held)

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
        if self.sparsity > 0.0 and with_grad and self.weights_only:
            return  # upstream: the gradients of pruned weights reach the optimizer
        if self.sparsity > 0.0 and with_grad and self.masks is not None:
            for i in with_grad:
                self.params[i].grad.mul_(self.masks[i])
            return
        if self.sparsity > 0.0 and with_grad:
            # g <- g * |sign(w)|: exact (a product with 1 or 0), and float-only, so it stays on
            # vectorised kernels (about twice as fast as g.mul_(w != 0) with its bool operand).
            # In buckets (lib/buckets.py): the temporary |sign(w)| is one bucket, not the model.
            # With the weight, its moments and its gradient all 0, no optimizer here can move a
            # pruned weight, so weights are never re-masked (tests/test_pruning.py).
            weights = [self.params[i].detach() for i in with_grad]
            grads = [self.params[i].grad for i in with_grad]
            size = bucket_elements(weights[0].device)
            for bucket_weights, bucket_grads in buckets([weights, grads], size):
                keep = torch._foreach_sign(bucket_weights)
                torch._foreach_abs_(keep)
                torch._foreach_mul_(bucket_grads, keep)

    @torch.no_grad()
    def after_step(self, optimizer_state: dict[Tensor, dict[str, Any]]) -> None:
        self.step += 1
        if self.rebuild:
            if self.step % self.schedule.interval == 0:
                target = self.schedule.sparsity_at(self.step)
                if target > 0.0:
                    self.rebuild_masks(optimizer_state, target)
        elif self.schedule.is_update_step(self.step):
            self.update_masks(optimizer_state, self.schedule.sparsity_at(self.step))
        if self.masks is not None and self.sparsity > 0.0:
            # Upstream applied its masks to the weights after every step.
            weights = [p.detach() for p in self.params]
            torch._foreach_mul_(weights, self.masks)

    def _state_tensors(self, index: int, optimizer_state: dict[Tensor, dict[str, Any]]):
        p = self.params[index]
        return [
            value
            for value in optimizer_state.get(p, {}).values()
            if isinstance(value, Tensor) and value.shape == p.shape
        ]

    def _scores(self, optimizer_state: dict[Tensor, dict[str, Any]]) -> list[Tensor]:
        scores = []
        for i, p in enumerate(self.params):
            if callable(self.score):
                s = self.score(p.detach(), optimizer_state.get(p, {})).detach().float().clone()
            else:
                movement = None if self.movement_scores is None else self.movement_scores[i]
                initial = None if self.initial_weights is None else self.initial_weights[i]
                s = importance_score(
                    self.score, p, optimizer_state.get(p, {}), movement, self.eps, initial
                )
            scores.append(s)
        return scores

    @torch.no_grad()
    def rebuild_masks(self, optimizer_state: dict[Tensor, dict[str, Any]], sparsity: float) -> None:
        """Upstream's mask update: every weight ranked afresh (pruned ones too, so they may
        regrow), the lowest `floor(sparsity * N)` pruned (globally, or per layer), ties by
        position. Without `weights_only`, the state of every pruned coordinate is zeroed."""
        assert self.masks is not None
        scores = [s.reshape(-1) for s in self._scores(optimizer_state)]
        if self.scope == "global":
            flat = torch.cat(scores)
            chosen = select_lowest(flat, int(sparsity * flat.numel()), 0)
            del flat
            cuts = torch.tensor([s.numel() for s in scores]).cumsum(0)
            starts = [0] + cuts[:-1].tolist()
            split = torch.searchsorted(chosen, cuts[:-1].to(chosen.device)).tolist()
            positions = [
                part - start for part, start in zip(chosen.tensor_split(split), starts, strict=True)
            ]
        else:
            positions = [select_lowest(s, int(sparsity * s.numel()), 0) for s in scores]
        del scores
        for i, local in enumerate(positions):
            mask = self.masks[i]
            mask.fill_(True)
            _zero_at(mask, local)
            if not self.weights_only:
                for t in self._state_tensors(i, optimizer_state):
                    t.mul_(mask)
        self.sparsity = sparsity

    @torch.no_grad()
    def update_masks(self, optimizer_state: dict[Tensor, dict[str, Any]], sparsity: float) -> None:
        """Prune to `sparsity`, monotone: already-pruned weights (the zeros) stay pruned.

        Equal, bit for bit, to ranking every weight with the pruned ones lowest (score -inf),
        taking the exact count with ties by position, and zeroing every selected coordinate
        in the weight and each state tensor (tests/test_pruning.py compares the two). What
        makes it cheap: only kept weights are ranked (`select_lowest`), and only the newly
        pruned coordinates are written (a small sparsity increment touches a few thousand).
        """
        scores, zero_counts = self._scores(optimizer_state), []
        for i, p in enumerate(self.params):
            zero = p == 0 if self.masks is None else ~self.masks[i]
            zero_counts.append(torch.count_nonzero(zero))
            scores[i].masked_fill_(zero, -math.inf)
            del zero
        zeros = torch.stack(zero_counts).tolist()
        sizes = [p.numel() for p in self.params]
        if self.pattern is not None:
            positions = []
            for index, s in enumerate(scores):
                positions.append(_nm_positions(s, sparsity, *self.pattern))
                scores[index] = None  # type: ignore[call-overload]
        elif self.scope == "global":
            total = sum(sizes)
            flat = torch.empty(total, dtype=scores[0].dtype, device=scores[0].device)
            offset = 0
            for index, s in enumerate(scores):
                flat[offset : offset + sizes[index]].view(s.shape).copy_(s)
                scores[index] = None  # type: ignore[call-overload]
                offset += sizes[index]
            del scores
            pruned_count = total - round((1.0 - sparsity) * total)
            chosen = select_lowest(flat, pruned_count - sum(zeros), sum(zeros))
            del flat
            offsets = torch.tensor(sizes, device=chosen.device).cumsum(0)
            cuts = torch.searchsorted(chosen, offsets[:-1]).tolist()
            starts = [0] + offsets[:-1].tolist()
            positions = [
                part - start for part, start in zip(chosen.tensor_split(cuts), starts, strict=True)
            ]
        else:
            positions = []
            for index, s in enumerate(scores):
                pruned_count = sizes[index] - round((1.0 - sparsity) * sizes[index])
                flat_s = s.reshape(-1)  # logical order, as the global scope's positions
                positions.append(select_lowest(flat_s, pruned_count - zeros[index], zeros[index]))
                scores[index] = None  # type: ignore[call-overload]
        # Coordinates pruned earlier already hold 0 in the weight and every state tensor; a
        # zero that appeared since the last update (a kept weight reaching exactly 0, a
        # checkpoint just loaded) may not: then every zero is cleared, as a full mask would.
        clear_all_zeros = self._zeros_after_update != sum(zeros) and self.masks is None
        for i, (p, local) in enumerate(zip(self.params, positions, strict=True)):
            if self.masks is not None:
                _zero_at(self.masks[i], local)
                if self.weights_only:  # upstream: the weights only (after_step applies it)
                    continue
            targets = [p.detach()] + [
                value
                for value in optimizer_state.get(p, {}).values()
                # Every per-coordinate buffer: exp_avg, exp_avg_sq, max_exp_avg_sq, momentum...
                if isinstance(value, Tensor) and value.shape == p.shape
            ]
            if self.movement_scores is not None:
                targets.append(self.movement_scores[i])
            if clear_all_zeros:
                zero = p == 0
                for t in targets:
                    t.masked_fill_(zero, 0.0)
                del zero
            if local.numel():
                for t in targets:
                    _zero_at(t, local)
        self._zeros_after_update = sum(zeros) + sum(int(local.numel()) for local in positions)
        self.sparsity = sparsity

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "sparsity": self.sparsity,
            "movement_scores": None if self.movement_scores is None else list(self.movement_scores),
            **({} if self.masks is None else {"masks": list(self.masks)}),
            **({} if self.initial_weights is None else {"initial_weights": self.initial_weights}),
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
        for name in ("masks", "initial_weights"):
            mine, theirs = getattr(self, name), state.get(name)
            if (mine is None) != (theirs is None) or (mine and len(mine) != len(theirs)):
                raise ValueError(
                    f"pruning state: {name} present in only one of the checkpoint and the "
                    "optimizer, or of another length; it was saved with other pruning options"
                )
            for buffer, value in zip(mine or (), theirs or (), strict=True):
                buffer.copy_(value)
        self.step = int(state["step"])
        self.sparsity = float(state["sparsity"])
        self._zeros_after_update = None


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


# -- what pruning buys: parameters and multiply-accumulates --------------------------------------


@torch.no_grad()
def layer_macs(model: nn.Module, image_size: int, channels: int = 3) -> dict[str, int]:
    """Multiply-accumulates of one forward pass of one `channels` x `image_size`^2 image, per
    weight (named as in `model.named_parameters()`): every Conv2d and Linear, and the
    projections of every MultiheadAttention.

    A weight's MACs are its number of elements times the positions it is applied at (a
    convolution's output pixels, a Linear's tokens), measured with forward hooks on one
    image in eval mode (the model's mode and its batch-norm statistics are left as they were).
    Attention's own products (Q K^T, A V) have no weight, cannot be pruned and are not counted.
    """
    names = {id(p): name for name, p in model.named_parameters()}
    macs: dict[str, int] = {}

    def positions_of(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
        if isinstance(module, nn.Conv2d):
            return output.numel() // output.shape[1]  # batch 1: output pixels
        if isinstance(module, nn.Linear):
            return output.numel() // module.out_features  # tokens
        return inputs[0].numel() // module.embed_dim  # MultiheadAttention: query tokens

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if isinstance(module, nn.MultiheadAttention):
            output = output[0]
            weights = [w for w in _layer_weights(module)] + [module.out_proj.weight]
        else:
            weights = _layer_weights(module)
        count = positions_of(module, inputs, output)
        for w in weights:
            name = names.get(id(w))
            if name is not None:
                macs[name] = macs.get(name, 0) + w.numel() * count

    handles = [
        module.register_forward_hook(hook)
        for module in model.modules()
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.MultiheadAttention))
    ]
    training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        model(torch.zeros(1, channels, image_size, image_size, device=device))
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return macs


@torch.no_grad()
def nonzero_cost(model: nn.Module, macs: dict[str, int]) -> dict[str, int]:
    """`parameters_nonzero` (every parameter, not only the prunable ones) and `macs_nonzero`
    (each weight's MACs from `layer_macs`, scaled by its measured density, rounded)."""
    named = list(model.named_parameters())
    counts = torch.stack([torch.count_nonzero(p) for _, p in named]).tolist() if named else []
    nonzero = dict(zip((name for name, _ in named), counts, strict=True))
    sizes = {name: p.numel() for name, p in named}
    macs_nonzero = sum(m * nonzero[name] / sizes[name] for name, m in macs.items())
    return {"parameters_nonzero": sum(counts), "macs_nonzero": round(macs_nonzero)}
