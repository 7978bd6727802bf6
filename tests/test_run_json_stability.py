"""Every defconfig plans the same run.json files, byte for byte, as when these digests were
taken: refactors of the config loader, the planner or the method catalogue must not change what
a finished run's directory says it is (a changed run.json marks finished runs CHANGED).

Regenerate only when a defconfig itself changes on purpose:
    .venv/bin/python tests/test_run_json_stability.py > tests/data/run_json_digests.json
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lib import config as cfg  # noqa: E402
from lib.matrix import plan  # noqa: E402

DIGESTS = Path(__file__).parent / "data" / "run_json_digests.json"


def planned_digests(name: str) -> dict[str, str]:
    """run id -> sha256 of the run.json the runner would write for each planned run."""
    kconf = cfg.load_kconfig_with(cfg.DEFCONFIG_DIR / name)
    config = cfg.config_from_kconfig(kconf, f"defconfigs/{name}")
    return {
        spec.run_id: hashlib.sha256((spec.to_json() + "\n").encode()).hexdigest()
        for spec in plan(config)
    }


def all_digests() -> dict[str, dict[str, str]]:
    names = sorted(p.name for p in cfg.DEFCONFIG_DIR.iterdir() if p.is_file())
    return {name: planned_digests(name) for name in names}


RECORDED = json.loads(DIGESTS.read_text()) if DIGESTS.exists() else {}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_defconfig_plans_the_recorded_run_json(name: str) -> None:
    assert planned_digests(name) == RECORDED[name]


def test_every_defconfig_has_recorded_digests() -> None:
    names = {p.name for p in cfg.DEFCONFIG_DIR.iterdir() if p.is_file()}
    assert names <= set(RECORDED), f"no recorded digests for {sorted(names - set(RECORDED))}"


def test_an_added_field_at_its_default_stays_out_of_run_json(tmp_path, tiny_spec) -> None:
    """The mechanism new options use (lib.spec.added_field): absent at the default, present and
    round-tripping when set."""
    import dataclasses

    from lib.spec import RunSpec, added_field

    @dataclasses.dataclass(frozen=True)
    class Extended:
        old: int = 1
        new: str = added_field("")

    assert dataclasses.asdict(Extended()) == {"old": 1, "new": ""}
    from lib.spec import _drop_added_defaults

    assert _drop_added_defaults(Extended(), dataclasses.asdict(Extended())) == {"old": 1}
    assert _drop_added_defaults(Extended(new="x"), dataclasses.asdict(Extended(new="x"))) == {
        "old": 1,
        "new": "x",
    }
    spec = tiny_spec(tmp_path)
    assert RunSpec.from_json(spec.to_json()) == spec


if __name__ == "__main__":
    print(json.dumps(all_digests(), indent=1, sort_keys=True))
