"""AdamW: torch.optim.AdamW on its fused kernel where available."""

from __future__ import annotations

from lib.catalogue import BuildContext, OptimizerEntry
from lib.spec import OptimizerSpec
from optimizers.entries.common import adam_report_fields, amsgrad_label, fragment, read_adam


def read(r) -> OptimizerSpec:
    return read_adam(r, "adamw", "ADAMW", amsgrad=r.bool("ADAMW_AMSGRAD"))


def build(ctx: BuildContext):
    from optimizers.masked import MaskedAdamW

    opt = ctx.spec
    return MaskedAdamW(
        ctx.groups(opt.weight_decay, opt.decay_all_parameters),
        lr=opt.lr,
        betas=(opt.beta1, opt.beta2),
        eps=opt.eps,
        amsgrad=opt.amsgrad,
        pruner=ctx.pruner,
        **ctx.fast_path(),
    )


ENTRY = OptimizerEntry(
    name="adamw",
    display="AdamW",
    kconfig=fragment("adamw"),
    read=read,
    build=build,
    label=lambda opt: amsgrad_label(opt, opt.name),
    report_fields=adam_report_fields,
)
