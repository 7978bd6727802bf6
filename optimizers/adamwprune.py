"""AdamWPrune: state-based pruning on top of an Adam-family optimizer.

Adam already keeps per-weight statistics (m, v); AdamWPrune ranks weights by them at mask-update
steps only and keeps no importance buffer and no mask of its own (the zeros of the weights are
the mask, see lib/pruning.py). Its per-step overhead is one compare and one multiply per
prunable weight once pruning has begun, and nothing before.

The dense step is the base optimizer's own: torch's functional `adam()` for adam / adamw /
adamwadv (so with pruning off it is bit-identical to torch.optim.Adam / AdamW, with or without
AMSGrad), and `spam_step` for adamwspam.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim.adam import adam

from lib.pruning import STATE_SCORES, Pruner, PruningSchedule
from optimizers.masked import PruningMixin
from optimizers.spam import SpamClock, check_adam_arguments, spam_step

BASES = ("adam", "adamw", "adamwadv", "adamwspam")
# (eps, weight_decay) when the caller gives none: the base optimizer's own defaults, so that
# AdamWPrune(params, base=b) is torch.optim.Adam(params), torch.optim.AdamW(params),
# torch.optim.AdamW(params, amsgrad=True) or AdamWSPAM(params) exactly while dense.
BASE_DEFAULTS = {
    "adam": (1e-8, 0.0),
    "adamw": (1e-8, 1e-2),
    "adamwadv": (1e-8, 1e-2),
    "adamwspam": (1e-6, 0.0),
}


def _scalar_dtype() -> torch.dtype:
    # torch.optim.Adam keeps `step` in this dtype; matching it keeps the steps bit-identical.
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class AdamWPrune(PruningMixin, torch.optim.Optimizer):
    """Adam-family optimizer that prunes by its own state.

    Args:
        params: parameters or parameter groups.
        lr, betas, eps, weight_decay, amsgrad: as torch.optim.AdamW (Adam for base="adam";
            amsgrad is forced on for base="adamwadv"). eps and weight_decay default to the
            base's own defaults (BASE_DEFAULTS: Adam and AdamWSPAM decay 0, AdamW 1e-2;
            AdamWSPAM's eps is 1e-6). AdamWAdv's gradient clipping is a training-loop setting,
            applied to AdamWPrune(base="adamwadv") runs as to AdamWAdv runs
            (lib.config.Config.train_for).
        base: "adam", "adamw", "adamwadv" or "adamwspam".
        score: importance score, "hybrid" (w^2 |m| / (sqrt(v) + eps)), "variance"
            (|w| (v + eps)^(1/4)), "momentum" (|w| sqrt(|m| + eps)) or "magnitude" (|w|).
        sparsity: final fraction of prunable weights pruned, in [0, 1); 0 = dense base.
        schedule, start_step, end_step, interval: the pruning schedule (lib.pruning).
        scope: "global" (one threshold) or "layerwise".
        pattern: (N, M) for N:M semi-structured sparsity (lib.pruning), None: unstructured.
        prunable: the weights to prune (default: every parameter with ndim > 1).
        spam_theta, spam_interval, spam_warmup_steps, spam_clip_delay: base="adamwspam" only.
        foreach, fused: passed to torch's adam() (adam / adamw / adamwadv bases).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float | None = None,
        weight_decay: float | None = None,
        amsgrad: bool = False,
        *,
        base: str = "adamw",
        score: str = "hybrid",
        sparsity: float = 0.0,
        schedule: str = "cubic",
        start_step: int = 100,
        end_step: int = 1000,
        interval: int = 50,
        scope: str = "global",
        pattern: tuple[int, int] | None = None,
        prunable: Sequence[Tensor] | None = None,
        spam_theta: float = 5000.0,
        spam_interval: int = 500,
        spam_warmup_steps: int = 150,
        spam_clip_delay: int = 20,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        if base not in BASES:
            raise ValueError(f"base={base!r}: must be one of {', '.join(BASES)}")
        default_eps, default_decay = BASE_DEFAULTS[base]
        eps = default_eps if eps is None else eps
        weight_decay = default_decay if weight_decay is None else weight_decay
        if score not in STATE_SCORES:
            raise ValueError(f"score={score!r}: must be one of {', '.join(STATE_SCORES)}")
        check_adam_arguments(lr, betas, eps, weight_decay)
        schedule_spec = PruningSchedule(sparsity, start_step, end_step, interval, schedule)
        self.base = base
        self.clock = (
            SpamClock(spam_theta, spam_interval, spam_warmup_steps, spam_clip_delay)
            if base == "adamwspam"
            else None
        )
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad or base == "adamwadv",
            "decoupled_weight_decay": base != "adam",
            "foreach": foreach,
            "fused": fused,
        }
        # PruningMixin.__init__ is bypassed: the default prunable set needs the param groups.
        torch.optim.Optimizer.__init__(self, params, defaults)
        pruner = None
        if sparsity > 0.0:
            if prunable is None:
                prunable = [p for g in self.param_groups for p in g["params"] if p.ndim > 1]
            pruner = Pruner(
                prunable, schedule_spec, score=score, scope=scope, eps=eps, pattern=pattern
            )
        self._attach_pruner(pruner)

    def _dense_step(self) -> None:
        if self.clock is not None:
            spam_step(self.param_groups, self.state, self.clock)
            return
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamWPrune does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    # The same lazily created state as torch.optim.Adam (step on the CPU).
                    state["step"] = (
                        torch.zeros((), dtype=torch.float32, device=p.device)
                        if group["fused"]
                        else torch.tensor(0.0, dtype=_scalar_dtype())
                    )
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(
                            p, memory_format=torch.preserve_format
                        )
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                if group["amsgrad"]:
                    max_exp_avg_sqs.append(state["max_exp_avg_sq"])
                steps.append(state["step"])
            if not params:
                continue
            beta1, beta2 = group["betas"]
            adam(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                max_exp_avg_sqs,
                steps,
                foreach=group["foreach"],
                fused=group["fused"],
                decoupled_weight_decay=group["decoupled_weight_decay"],
                amsgrad=group["amsgrad"],
                beta1=beta1,
                beta2=beta2,
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=False,
            )

    def state_dict(self) -> dict[str, Any]:
        state_dict = super().state_dict()
        if self.clock is not None:
            state_dict["spam"] = self.clock.state_dict()
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        clock = state_dict.pop("spam", None)
        if (clock is None) != (self.clock is None):
            raise ValueError(
                f"AdamWPrune(base={self.base!r}).load_state_dict: the checkpoint was saved with "
                "a different base optimizer (SPAM counters present in only one of them)"
            )
        super().load_state_dict(state_dict)
        if self.clock is not None:
            self.clock.load_state_dict(clock)
