"""What the built-in Adam-family entries share: reading their common options, and the
hyperparameters the report shows for them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lib.catalogue import SearchDimension
from lib.spec import OptimizerSpec

HERE = Path(__file__).resolve().parent

COMMON_REPORT_FIELDS = ["lr", "weight_decay"]
ADAM_REPORT_FIELDS = ["beta1", "beta2", "eps", "amsgrad"]
# What the tuning axis searches for every built-in optimizer (ranges: <NAME>_TUNE_* in Kconfig).
COMMON_SEARCH_SPACE = (SearchDimension("lr", "log"), SearchDimension("weight_decay", "log"))
SPAM_SEARCH_SPACE = (*COMMON_SEARCH_SPACE, SearchDimension("spam_theta", "log"))
SPAM_REPORT_FIELDS = ["spam_theta", "spam_interval", "spam_warmup_steps", "spam_clip_delay"]


def fragment(name: str) -> Path:
    return HERE / f"Kconfig.{name}"


def read_adam(r: Any, name: str, prefix: str, *, amsgrad: bool) -> OptimizerSpec:
    """lr, betas, eps and weight decay from <prefix>_*, each range-checked by the reader."""
    return OptimizerSpec(
        name=name,
        lr=r.float(f"{prefix}_LR", low=0, low_open=True),
        beta1=r.float(f"{prefix}_BETA1", low=0, high=1, high_open=True),
        beta2=r.float(f"{prefix}_BETA2", low=0, high=1, high_open=True),
        eps=r.float(f"{prefix}_EPS", low=0, low_open=True),
        weight_decay=r.float(f"{prefix}_WEIGHT_DECAY", low=0),
        amsgrad=amsgrad,
    )


def read_spam(r: Any, prefix: str) -> dict[str, Any]:
    """SPAM's four settings from <prefix>_SPAM_*."""
    return {
        "spam_theta": r.float(f"{prefix}_SPAM_THETA", low=0),
        "spam_interval": r.int(f"{prefix}_SPAM_INTERVAL"),
        "spam_warmup_steps": r.int(f"{prefix}_SPAM_WARMUP_STEPS"),
        "spam_clip_delay": r.int(f"{prefix}_SPAM_CLIP_DELAY"),
    }


def spam_kwargs(opt: OptimizerSpec) -> dict[str, Any]:
    return {
        "theta": opt.spam_theta,
        "interval": opt.spam_interval,
        "warmup_steps": opt.spam_warmup_steps,
        "clip_delay": opt.spam_clip_delay,
    }


def amsgrad_label(opt: OptimizerSpec, label: str) -> str:
    """`adamw-amsgrad`: AMSGrad chosen on an optimizer that is not AMSGrad by definition."""
    return f"{label}-amsgrad" if opt.amsgrad else label


def adam_report_fields(_opt: dict[str, Any]) -> list[str]:
    return ["name", *COMMON_REPORT_FIELDS, *ADAM_REPORT_FIELDS]


def build_adam_family(ctx: Any, masked_class: type, *, amsgrad: bool) -> Any:
    """A torch Adam / AdamW (with the run's pruning in `masked_class`) on its fast path, from
    the run's OptimizerSpec: what the adam, adamw and adamwadv entries build."""
    opt = ctx.spec
    return masked_class(
        ctx.groups(opt.weight_decay, opt.decay_all_parameters),
        lr=opt.lr,
        betas=(opt.beta1, opt.beta2),
        eps=opt.eps,
        amsgrad=amsgrad,
        pruner=ctx.pruner,
        **ctx.fast_path(),
    )
