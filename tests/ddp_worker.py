"""Test helper for tests/test_distributed.py (never used by the project).

    python tests/ddp_worker.py [groupnorm] RUN_JSON        one rank (under torchrun) or alone
    python tests/ddp_worker.py --runner MATRIX_DIR SPECS   a runner whose children are this file

A rank trains through `lib.train.main` and then saves its final model state to
`<run dir>/rank<RANK>.pt`, so a test can compare the ranks. `groupnorm` replaces every
BatchNorm with GroupNorm(1, C): normalisation then uses per-sample statistics, so a rank's share
of a batch is normalised exactly as in the whole batch and one process and two ranks compute
the same function (PyTorch's SyncBatchNorm, which gives BatchNorm that property, needs CUDA).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lib.train  # noqa: E402
from lib.runner import run_matrix  # noqa: E402
from lib.spec import RunSpec  # noqa: E402

THIS_FILE = str(Path(__file__).resolve())


def groupnorm(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(1, child.num_features))
        else:
            groupnorm(child)
    return module


def use_groupnorm() -> None:
    build = lib.train.build_model
    lib.train.build_model = lambda *a, **k: groupnorm(build(*a, **k))


def rank_main(run_json: str, *modes: str) -> int:
    if "groupnorm" in modes:
        use_groupnorm()
    loop = lib.train._Run.loop

    def loop_and_dump(self):
        loop(self)
        rank = os.environ.get("RANK", "0")
        torch.save(self.model.state_dict(), Path(run_json).parent / f"rank{rank}.pt")

    lib.train._Run.loop = loop_and_dump
    return lib.train.main([run_json])


def runner_main(matrix_dir: str, specs_json: str) -> int:
    specs = [RunSpec.from_dict(d) for d in json.loads(Path(specs_json).read_text())]
    return run_matrix(
        specs,
        Path(matrix_dir),
        config_snapshot={},
        report_settings={"baseline": "", "candidate": "", "plots": []},
        child_cmd=[sys.executable, THIS_FILE, "groupnorm"],
    )


if __name__ == "__main__":
    if sys.argv[1] == "--runner":
        sys.exit(runner_main(*sys.argv[2:4]))
    *modes, run_json = sys.argv[1:]
    sys.exit(rank_main(run_json, *modes))
