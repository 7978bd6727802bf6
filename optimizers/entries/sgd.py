"""SGD with momentum: torch.optim.SGD on its multi-tensor path."""

from __future__ import annotations

from lib.catalogue import BuildContext, OptimizerEntry, SearchDimension
from lib.spec import OptimizerSpec
from optimizers.entries.common import COMMON_REPORT_FIELDS, COMMON_SEARCH_SPACE, fragment

SEARCH_SPACE = (*COMMON_SEARCH_SPACE, SearchDimension("momentum", "linear"))


def read(r) -> OptimizerSpec:
    return OptimizerSpec(
        name="sgd",
        lr=r.float("SGD_LR", low=0, low_open=True),
        momentum=r.float("SGD_MOMENTUM", low=0, high=1, high_open=True),
        weight_decay=r.float("SGD_WEIGHT_DECAY", low=0),
        nesterov=r.bool("SGD_NESTEROV"),
    )


def build(ctx: BuildContext):
    from optimizers.masked import MaskedSGD

    opt = ctx.spec
    return MaskedSGD(
        ctx.groups(opt.weight_decay, opt.decay_all_parameters),
        lr=opt.lr,
        momentum=opt.momentum,
        nesterov=opt.nesterov,
        foreach=True,
        pruner=ctx.pruner,
    )


ENTRY = OptimizerEntry(
    name="sgd",
    display="SGD",
    kconfig=fragment("sgd"),
    read=read,
    build=build,
    report_fields=lambda _opt: ["name", *COMMON_REPORT_FIELDS, "momentum", "nesterov"],
    search_space=SEARCH_SPACE,
)
