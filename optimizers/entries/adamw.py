"""AdamW: torch.optim.AdamW on its fused kernel where available."""

from __future__ import annotations

from lib.catalogue import BuildContext, OptimizerEntry
from lib.spec import OptimizerSpec
from optimizers.entries.common import (
    COMMON_SEARCH_SPACE,
    adam_report_fields,
    amsgrad_label,
    build_adam_family,
    fragment,
    read_adam,
)


def read(r) -> OptimizerSpec:
    return read_adam(r, "adamw", "ADAMW", amsgrad=r.bool("ADAMW_AMSGRAD"))


def build(ctx: BuildContext):
    from optimizers.masked import MaskedAdamW

    return build_adam_family(ctx, MaskedAdamW, amsgrad=ctx.spec.amsgrad)


ENTRY = OptimizerEntry(
    name="adamw",
    display="AdamW",
    kconfig=fragment("adamw"),
    read=read,
    build=build,
    label=lambda opt: amsgrad_label(opt, opt.name),
    report_fields=adam_report_fields,
    search_space=COMMON_SEARCH_SPACE,
)
