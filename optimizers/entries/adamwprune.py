"""AdamWPrune: an Adam-family base optimizer that prunes from its own moments
(optimizers/adamwprune.py). It implements the `state` pruning method itself
(lib/pruning_entries/state.py) and takes no other pruning method."""

from __future__ import annotations

from dataclasses import replace

from lib import catalogue
from lib.catalogue import BuildContext, OptimizerEntry
from lib.spec import OptimizerSpec, TrainSpec
from optimizers.entries.common import (
    SPAM_REPORT_FIELDS,
    SPAM_SEARCH_SPACE,
    adam_report_fields,
    amsgrad_label,
    fragment,
    read_adam,
    read_spam,
    spam_kwargs,
)

BASES = ("adam", "adamw", "adamwadv", "adamwspam")
SCORES = ("hybrid", "variance", "momentum", "magnitude")
# Bases that are AMSGrad (or not) by definition; on the others AMSGrad is an option.
AMSGRAD_BY_DEFINITION = {"adamwadv": True, "adamwspam": False}


def read(r) -> OptimizerSpec:
    base = r.str("ADAMWPRUNE_BASE_OPTIMIZER_NAME")
    amsgrad = AMSGRAD_BY_DEFINITION.get(base)
    if amsgrad is None:
        amsgrad = r.bool("ADAMWPRUNE_AMSGRAD")
    spec = read_adam(r, "adamwprune", "ADAMWPRUNE", amsgrad=amsgrad)
    if base == "adamwspam":
        spec = replace(spec, **read_spam(r, "ADAMWPRUNE"))
    return replace(
        spec,
        decay_all_parameters=r.bool("ADAMWPRUNE_DECAY_ALL_PARAMETERS"),
        prune_base=base,
        prune_score=r.choice("ADAMWPRUNE_SCORE", SCORES),
    )


def label(opt: OptimizerSpec) -> str:
    name = f"adamwprune-{opt.prune_base}"
    return name if opt.prune_base in AMSGRAD_BY_DEFINITION else amsgrad_label(opt, name)


def train_for(r, opt: OptimizerSpec, train: TrainSpec) -> TrainSpec:
    """What the base brings by definition (AdamWAdv's clipping and cosine schedule), so that
    AdamWPrune steps exactly like its base while dense."""
    base = catalogue.optimizer(opt.prune_base)
    return base.train_for(r, opt, train) if base.train_for else train


def report_fields(opt: dict) -> list[str]:
    fields = ["name", "prune_base", "prune_score", *adam_report_fields(opt)[1:]]
    if opt.get("prune_base") == "adamwspam":
        fields += SPAM_REPORT_FIELDS
    return fields


def build(ctx: BuildContext):
    from optimizers.adamwprune import AdamWPrune

    opt, pruning, schedule = ctx.spec, ctx.pruning, ctx.schedule
    return AdamWPrune(
        ctx.groups(opt.weight_decay, opt.decay_all_parameters),
        lr=opt.lr,
        betas=(opt.beta1, opt.beta2),
        eps=opt.eps,
        weight_decay=opt.weight_decay,
        amsgrad=opt.amsgrad,
        base=opt.prune_base,
        score=opt.prune_score,
        sparsity=pruning.sparsity if pruning.method == "state" else 0.0,
        schedule=pruning.schedule,
        start_step=schedule.start_step,
        end_step=schedule.end_step,
        interval=schedule.interval,
        scope=pruning.scope,
        pattern=pruning.pattern,
        prunable=ctx.prunable,
        **ctx.fast_path(),
        **{f"spam_{key}": value for key, value in spam_kwargs(opt).items()},
    )


ENTRY = OptimizerEntry(
    name="adamwprune",
    display="AdamWPrune",
    kconfig=fragment("adamwprune"),
    read=read,
    build=build,
    takes_pruning=False,
    label=label,
    base=lambda opt: opt.prune_base,
    train_for=train_for,
    report_fields=report_fields,
    default_candidate=True,
    search_space=SPAM_SEARCH_SPACE,
)
