"""Build any optimizer x pruning combination from the typed config: one `torch.optim.Optimizer`.

Each optimizer is built by its catalogue entry (lib/catalogue.py, optimizers/entries/); this
module checks the combination, prepares the schedule and the generic pruning method's
`Pruner`, and holds the helpers entries share: `parameter_groups` and `fast_path` (torch's
fused Adam kernels where available).

The training loop calls `build_optimizer` and then only `step()` / `zero_grad()` (directly or
through GradScaler) and an LR scheduler: everything pruning needs happens inside `step()`.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from lib import catalogue
from lib.pruning import Pruner, PruningSchedule, prunable_parameters
from lib.spec import OptimizerSpec, PruningSpec

# Normalisation layers: none of their parameters is decayed, whatever its shape
# (a LayerNorm over (H, W) has a 2-D weight).
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def parameter_groups(
    model: nn.Module, weight_decay: float, decay_all: bool = False
) -> list[dict[str, Any]]:
    """Weight decay on weights (ndim > 1); none on biases and normalisation parameters, unless
    `decay_all` (the same decay on every parameter, as the seed's AdamWPrune runs had it)."""
    if decay_all:
        trainable = [p for p in model.parameters() if p.requires_grad]
        return [{"params": trainable, "weight_decay": weight_decay}]
    no_decay = {
        id(p)
        for module in model.modules()
        for name, p in module.named_parameters(recurse=False)
        if name == "bias" or isinstance(module, NORM_LAYERS)
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    decayed = [p for p in trainable if p.ndim > 1 and id(p) not in no_decay]
    chosen = {id(p) for p in decayed}
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": [p for p in trainable if id(p) not in chosen], "weight_decay": 0.0},
    ]


def fast_path(model: nn.Module, compiled: bool = False) -> dict[str, bool]:
    """torch's fused Adam/AdamW kernel where it exists (CPU and CUDA floating point), else foreach.

    Fused is one pass per tensor: on CPU about 4x faster than foreach, and unlike foreach's
    `sqrt` it does not slow down on the zeros that pruning leaves in `exp_avg_sq`.
    With `compiled` (a torch.compile'd model) foreach: inductor may hand back gradients with
    other strides than their parameters (conv weights), and the fused kernel then stops with
    "params, grads, exp_avgs, and exp_avg_sqs must have same dtype, device, and layout";
    foreach accepts any strides.
    """
    params = list(model.parameters())
    if compiled:
        return {"foreach": True}
    if params and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params):
        return {"fused": True}
    return {"foreach": True}


def check_combination(opt: OptimizerSpec, pruning: PruningSpec) -> None:
    """ValueError naming the invalid optimizer x pruning combination (the catalogue's rule,
    lib.matrix.combines)."""
    from lib.matrix import combines

    cat = catalogue.catalogue()
    if opt.name not in cat.optimizers:
        known = ", ".join(cat.optimizers)
        raise ValueError(
            cat.broken.get(opt.name) or f"optimizer={opt.name!r}: must be one of {known}"
        )
    if pruning.method != "none" and pruning.method not in cat.pruning:
        known = ", ".join(("none", *cat.pruning))
        raise ValueError(
            cat.broken.get(pruning.method)
            or f"pruning method={pruning.method!r}: must be one of {known}"
        )
    if pruning.method == "none":
        return
    entry, method = cat.optimizers[opt.name], cat.pruning[pruning.method]
    if combines(entry, method):
        return
    if method.owner is not None:
        raise ValueError(
            f"optimizer={opt.name!r} with pruning {method.name!r}: {method.name} pruning needs "
            f"{method.owner}"
        )
    owned = [m.name for m in cat.pruning.values() if m.owner == opt.name]
    own = f"its own {owned[0]} (pruning {owned[0]!r})" if owned else "no pruning method"
    raise ValueError(
        f"optimizer {opt.name!r} with pruning {method.name!r}: {opt.name} prunes by {own} or "
        "runs dense (pruning 'none')"
    )


def build_optimizer(
    model: nn.Module,
    opt: OptimizerSpec,
    pruning: PruningSpec,
    *,
    steps_per_epoch: int,
    keep_ends_dense: bool = False,
    compiled: bool = False,
) -> torch.optim.Optimizer:
    """The optimizer for one run, pruning included (see docs/algorithms.md): the catalogue
    entry's `build`. `compiled`: the model runs under torch.compile (see `fast_path`)."""
    check_combination(opt, pruning)
    entry = catalogue.optimizer(opt.name)
    schedule = PruningSchedule(
        final_sparsity=pruning.sparsity,
        start_step=pruning.start_step,
        end_step=pruning.end_step(steps_per_epoch),
        interval=pruning.interval,
        kind=pruning.schedule,
    )
    prunable = [p for _, p in prunable_parameters(model, keep_ends_dense)]
    pruner = None
    if pruning.enabled and entry.takes_pruning:
        method = catalogue.pruning_method(pruning.method)
        score = method.score
        if pruning.upstream_score and method.upstream_score:
            score = method.upstream_score
        if method.settings is not None:  # a plug-in's score sees its typed settings
            settings = catalogue.settings_from_pairs(method.settings, pruning.settings)
            score = functools.partial(method.score, settings=settings)
        scope = method.scope or pruning.scope  # a method with its own scope keeps it
        pruner = Pruner(
            prunable,
            schedule,
            score=score,
            scope=scope,
            eps=opt.eps,
            rebuild=pruning.rebuild_masks,
            weights_only=pruning.mask_weights_only,
            pattern=pruning.pattern,
        )
    ctx = catalogue.BuildContext(
        model=model,
        spec=opt,
        pruning=pruning,
        schedule=schedule,
        prunable=prunable,
        pruner=pruner,
        settings=(
            catalogue.settings_from_pairs(entry.settings, opt.settings) if entry.settings else None
        ),
        compiled=compiled,
    )
    if entry.origin is None:
        return entry.build(ctx)
    try:
        optimizer = entry.build(ctx)
    except Exception as e:  # noqa: BLE001 - third-party code: say whose it is, in one line
        raise catalogue.PluginError(
            f"plug-in optimizer {opt.name!r} ({entry.origin.describe()}) failed to build: "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        ) from e
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise catalogue.PluginError(
            f"plug-in optimizer {opt.name!r} ({entry.origin.describe()}) built a "
            f"{type(optimizer).__name__}, not a torch.optim.Optimizer"
        )
    if pruner is not None and getattr(optimizer, "pruner", None) is not pruner:
        raise catalogue.PluginError(
            f"plug-in optimizer {opt.name!r} ({entry.origin.describe()}) dropped the run's "
            "pruning: build it with ctx.make(...) (docs/plugins.md)"
        )
    return optimizer
