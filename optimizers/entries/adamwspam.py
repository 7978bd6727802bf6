"""AdamWSPAM: spike-aware Adam with momentum reset (optimizers/spam.py)."""

from __future__ import annotations

from dataclasses import replace

from lib.catalogue import BuildContext, OptimizerEntry
from lib.spec import OptimizerSpec
from optimizers.entries.common import (
    SPAM_REPORT_FIELDS,
    SPAM_SEARCH_SPACE,
    adam_report_fields,
    fragment,
    read_adam,
    read_spam,
    spam_kwargs,
)


def read(r) -> OptimizerSpec:
    return replace(
        read_adam(r, "adamwspam", "ADAMWSPAM", amsgrad=False), **read_spam(r, "ADAMWSPAM")
    )


def build(ctx: BuildContext):
    from optimizers.masked import MaskedAdamWSPAM

    opt = ctx.spec
    return MaskedAdamWSPAM(
        ctx.groups(opt.weight_decay, opt.decay_all_parameters),
        lr=opt.lr,
        betas=(opt.beta1, opt.beta2),
        eps=opt.eps,
        pruner=ctx.pruner,
        **spam_kwargs(opt),
    )


ENTRY = OptimizerEntry(
    name="adamwspam",
    display="AdamWSPAM",
    kconfig=fragment("adamwspam"),
    read=read,
    build=build,
    report_fields=lambda opt: [*adam_report_fields(opt), *SPAM_REPORT_FIELDS],
    search_space=SPAM_SEARCH_SPACE,
)
