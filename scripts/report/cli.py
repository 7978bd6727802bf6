"""`make report`: render results/<matrix>/report.md, plots and metrics.csv from result files.

    python -m scripts.report [--results-dir results] [--matrix NAME]
                             [--baseline METHOD_KEY] [--candidate METHOD_KEY]
    python -m scripts.report --compare MATRIX_A MATRIX_B

Errors the user can fix (a missing matrix, an unknown method, an unwritable directory) end
with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lib.spec import NAME_ACCEPTED, is_plain_name
from scripts.report.data import ReportError, newest_matrix
from scripts.report.output import write_report


def _matrix_dir(results_dir: Path, name: str, option: str) -> Path:
    if not is_plain_name(name):  # the report is written there: never outside results_dir
        raise ReportError(f"{option} {name!r} is not a matrix name; accepted: {NAME_ACCEPTED}")
    path = results_dir / name
    if not (path / "matrix.json").is_file():
        available = sorted(p.parent.name for p in results_dir.glob("*/matrix.json"))
        accepted = ", ".join(available) if available else f"none under {results_dir}"
        raise ReportError(f"{option} {name!r}: no such matrix; accepted: {accepted}")
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.report",
        description="Render report.md, plots and metrics.csv of a results matrix.",
    )
    parser.add_argument(
        "--results-dir", type=Path, default=None, help="default: CONFIG_RESULTS_DIR of .config"
    )
    parser.add_argument("--matrix", help="matrix name (default: the newest under results-dir)")
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="compare two matrices side by side (writes results-dir/compare-A-vs-B/report.md)",
    )
    parser.add_argument(
        "--baseline", metavar="METHOD_KEY", help="method the Improvement is against"
    )
    parser.add_argument(
        "--candidate", metavar="METHOD_KEY", help="method whose Improvement is shown"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.results_dir is None:  # where make test-matrix writes: CONFIG_RESULTS_DIR
        from lib.config import ConfigError, results_dir_setting

        try:
            args.results_dir = results_dir_setting()
        except ConfigError as e:  # a .config that is binary or a directory
            print(f"report: error: {e}", file=sys.stderr)
            return 2
    try:
        if args.compare:
            from scripts.report.compare import write_comparison

            for option in ("baseline", "candidate"):
                if getattr(args, option) is not None:
                    raise ReportError(
                        f"--{option} {getattr(args, option)!r}: not accepted with --compare "
                        "(a comparison shows every method of both matrices)"
                    )
            if args.compare[0] == args.compare[1]:
                raise ReportError(
                    f"--compare {args.compare[0]!r} {args.compare[1]!r}: the same matrix twice; "
                    "name two different ones"
                )
            a, b = (_matrix_dir(args.results_dir, name, "--compare") for name in args.compare)
            path = write_comparison(a, b, args.results_dir)
        else:
            if args.matrix:
                matrix_dir = _matrix_dir(args.results_dir, args.matrix, "--matrix")
            else:
                matrix_dir = newest_matrix(args.results_dir)
            path = write_report(matrix_dir, args.baseline, args.candidate)
    except ReportError as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only results directory, a full disk
        print(
            f"report: error: {e.filename or args.results_dir}: {e.strerror or e}; the report, "
            "metrics.csv and plots are written into the matrix directory, which must be "
            "writable (or copy the matrix to a writable CONFIG_RESULTS_DIR)",
            file=sys.stderr,
        )
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
