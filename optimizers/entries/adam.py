"""Adam: torch.optim.Adam on its fused kernel where available."""

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
    return read_adam(r, "adam", "ADAM", amsgrad=r.bool("ADAM_AMSGRAD"))


def build(ctx: BuildContext):
    from optimizers.masked import MaskedAdam

    return build_adam_family(ctx, MaskedAdam, amsgrad=ctx.spec.amsgrad)


ENTRY = OptimizerEntry(
    name="adam",
    display="Adam",
    kconfig=fragment("adam"),
    read=read,
    build=build,
    label=lambda opt: amsgrad_label(opt, opt.name),
    report_fields=adam_report_fields,
    search_space=COMMON_SEARCH_SPACE,
)
