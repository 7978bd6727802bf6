"""Adam: torch.optim.Adam on its fused kernel where available."""

from __future__ import annotations

from lib.catalogue import BuildContext, OptimizerEntry
from lib.spec import OptimizerSpec
from optimizers.entries.common import adam_report_fields, amsgrad_label, fragment, read_adam


def read(r) -> OptimizerSpec:
    return read_adam(r, "adam", "ADAM", amsgrad=r.bool("ADAM_AMSGRAD"))


def build(ctx: BuildContext):
    from optimizers.masked import MaskedAdam

    opt = ctx.spec
    return MaskedAdam(
        ctx.groups(opt.weight_decay, opt.decay_all_parameters),
        lr=opt.lr,
        betas=(opt.beta1, opt.beta2),
        eps=opt.eps,
        amsgrad=opt.amsgrad,
        pruner=ctx.pruner,
        **ctx.fast_path(),
    )


ENTRY = OptimizerEntry(
    name="adam",
    display="Adam",
    kconfig=fragment("adam"),
    read=read,
    build=build,
    label=lambda opt: amsgrad_label(opt, opt.name),
    report_fields=adam_report_fields,
)
