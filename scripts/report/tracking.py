"""The report's links from each run to its live tracker (docs/tracking.md), read from the
run's tracking.json: a result file, like metrics.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scripts.report.data import MatrixResults, RunResult
from scripts.report.markdown import md_escape, md_table

TRACKER_TITLES = {"tensorboard": "TensorBoard", "wandb": "W&B", "trackio": "trackio"}


def _local(path: str, matrix_dir: Path) -> str:
    """A link relative to report.md (in the matrix directory) where the path lies inside it,
    else the path as code."""
    try:
        relative = Path(path).resolve().relative_to(matrix_dir.resolve())
    except (OSError, ValueError):
        return f"`{md_escape(path)}`"
    return f"[{md_escape(relative.as_posix())}]({relative.as_posix()})"


def _cell(name: str, entry: dict[str, Any], matrix_dir: Path) -> str:
    try:
        if name == "wandb":
            if entry.get("url"):
                return f"[run {md_escape(entry['id'])}]({entry['url']})"
            return f"offline run `{md_escape(entry['id'])}` in {_local(entry['dir'], matrix_dir)}"
        if name == "trackio":
            return f"project `{md_escape(entry['project'])}`, run `{md_escape(entry['run'])}`"
        return _local(entry["dir"], matrix_dir)
    except (KeyError, TypeError):
        return "—"  # a hand-edited or older tracking.json: no link rather than a wrong one


def _commands(runs: list[RunResult], names: list[str], matrix_dir: Path) -> list[str]:
    lines = []
    if "tensorboard" in names:
        # Runs write inside their own directories unless a TensorBoard directory is set.
        custom = {((r.spec or {}).get("tracking") or {}).get("tensorboard_dir", "") for r in runs}
        logdirs = sorted(str(Path(d) / matrix_dir.name) if d else str(matrix_dir) for d in custom)
        lines += [f"- TensorBoard: `tensorboard --logdir {d}`" for d in logdirs]
    if "wandb" in names:
        lines.append(f"- W&B (offline runs): `wandb sync {matrix_dir}/*/wandb`")
    if "trackio" in names:
        stores = sorted(
            (
                r.tracking["sinks"]["trackio"].get("project", ""),
                ((r.spec or {}).get("tracking") or {}).get("trackio_dir", ""),
            )
            for r in runs
            if "trackio" in r.tracking["sinks"]
        )
        lines += [
            f"- trackio: `{f'TRACKIO_DIR={store} ' if store else ''}trackio show --project {p}`"
            for p, store in dict.fromkeys(stores)
            if p
        ]
    return lines


def section_tracking(results: MatrixResults) -> str:
    """`## Live Tracking`: one row per run that logged to a tracker; "" when none did."""
    runs = [
        r for r in results.runs if isinstance(r.tracking.get("sinks"), dict) and r.tracking["sinks"]
    ]
    if not runs:
        return ""
    names = [n for n in TRACKER_TITLES if any(n in r.tracking["sinks"] for r in runs)]
    rows = [
        [f"`{r.run_id}`"]
        + [
            _cell(n, r.tracking["sinks"][n], results.path) if n in r.tracking["sinks"] else "—"
            for n in names
        ]
        for r in runs
    ]
    lines = [
        "## Live Tracking",
        "",
        "Where each run logged while it trained (metrics.json stays the source of these "
        "numbers). To watch or upload the matrix:",
        "",
        *_commands(runs, names, results.path),
        "",
        md_table(["Run", *(TRACKER_TITLES[n] for n in names)], rows),
    ]
    return "\n".join(lines)
