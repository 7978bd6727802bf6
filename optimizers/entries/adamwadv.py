"""AdamWAdv: AdamW with AMSGrad, and by definition gradient-norm clipping and a cosine
schedule (ALGORITHMS.md section 6): its per-method override of the training settings."""

from __future__ import annotations

from dataclasses import replace

from lib.catalogue import BuildContext, OptimizerEntry
from lib.spec import OptimizerSpec, TrainSpec
from optimizers.entries.common import (
    COMMON_SEARCH_SPACE,
    adam_report_fields,
    build_adam_family,
    fragment,
    read_adam,
)


def read(r) -> OptimizerSpec:
    return read_adam(r, "adamwadv", "ADAMWADV", amsgrad=True)


def train_for(r, _opt: OptimizerSpec, train: TrainSpec) -> TrainSpec:
    """AdamWAdv's clipping and cosine schedule. Also what AdamWPrune on the AdamWAdv base
    brings (optimizers/entries/adamwprune.py delegates here)."""
    clip = r.float("ADAMWADV_GRAD_CLIP", low=0, low_open=True)
    return replace(train, grad_clip=clip, lr_schedule="cosine")


def build(ctx: BuildContext):
    from optimizers.masked import MaskedAdamW

    return build_adam_family(ctx, MaskedAdamW, amsgrad=True)


ENTRY = OptimizerEntry(
    name="adamwadv",
    display="AdamWAdv",
    kconfig=fragment("adamwadv"),
    read=read,
    build=build,
    train_for=train_for,
    report_fields=adam_report_fields,
    search_space=COMMON_SEARCH_SPACE,
)
