"""Command-line entry points behind the Makefile: `python -m lib.cli COMMAND`.

Each make target calls exactly one command here. Errors a user can cause (a missing .config,
a bad value, an unknown defconfig) end with one line on stderr and a non-zero exit, never a
stack trace.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lib import config as cfg
from lib.catalogue import PluginError
from lib.config import ConfigError
from lib.text import count

EXIT_USAGE = 2


def _config_path() -> str:
    return os.environ.get("KCONFIG_CONFIG", ".config")


def _need_config() -> str:
    path = _config_path()
    if not os.path.exists(path):
        raise ConfigError(
            f"{path} is missing: run make defconfig-NAME (make list-defconfigs shows the names) "
            "or make menuconfig first"
        )
    return path


def defconfig_names() -> list[str]:
    return sorted(p.name for p in cfg.DEFCONFIG_DIR.iterdir() if p.is_file())


# --------------------------------------------------------------------------------------------
# Kconfig commands


def cmd_list_defconfigs(args: argparse.Namespace) -> int:
    for name in defconfig_names():
        print(name)
    return 0


def cmd_defconfig(args: argparse.Namespace) -> int:
    name = args.name
    if name not in defconfig_names():
        raise ConfigError(f"unknown defconfig {name!r}; available: {', '.join(defconfig_names())}")
    kconf = cfg.load_kconfig_with(cfg.DEFCONFIG_DIR / name)
    # Validate before writing, so a defconfig that does not make a valid Config never
    # replaces a working .config.
    cfg.config_from_kconfig(kconf, f"defconfigs/{name}")
    out = _config_path()
    cfg.check_writable_file(out)
    kconf.write_config(out, header=f"# Generated from defconfigs/{name}\n")
    print(f"{out}: written from defconfigs/{name}")
    return 0


def cmd_olddefconfig(args: argparse.Namespace) -> int:
    path = _need_config()
    kconf = cfg.load_kconfig_with(path, strict=False)
    kconf.write_config(path)
    print(f"{path}: expanded with the defaults of new options")
    return 0


def cmd_savedefconfig(args: argparse.Namespace) -> int:
    path = _need_config()
    kconf = cfg.load_kconfig_with(path, strict=False)
    cfg.check_writable_file(args.output)
    kconf.write_min_config(args.output, header="")
    print(f"{args.output}: minimal configuration written (copy it to defconfigs/NAME to keep it)")
    return 0


def _editable_config() -> str:
    """The configuration file a menu edits: refused in one line before the menu starts if it
    could never be saved there (a directory, a missing directory) or is no configuration."""
    path = _config_path()
    cfg.check_writable_file(path)
    if os.path.exists(path):
        cfg.read_config_file(cfg.load_kconfig(), path)
    return path


def _interactive_terminal(what: str) -> None:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise ConfigError(
            f"{what} needs an interactive terminal (stdin and stdout must not be pipes); "
            "use make defconfig-NAME or edit .config and run make olddefconfig instead"
        )


def _check_data(config: cfg.Config, *, own_folders_only: bool) -> None:
    """ConfigError (one line) when the dataset's directories are missing or unusable.
    `own_folders_only`: check only your own ImageFolder (check-config, the dry run: a
    configuration is made for those folders, while an ImageNet matrix may be planned on a
    machine without ImageNet); test-matrix checks every dataset."""
    from lib.data import DataError, check_dataset_present

    if own_folders_only and config.data.name != "imagefolder":
        return
    try:
        check_dataset_present(config.data)
    except DataError as e:
        if config.data.name == "imagefolder":  # the message names the option already
            raise ConfigError(str(e)) from None
        raise ConfigError(f"{e} (CONFIG_DATA_DIR={config.data.data_dir!r})") from None


def _validate_after_edit(path: str) -> int:
    _note_broken_plugins()
    try:
        config = cfg.load(path)
        _check_data(config, own_folders_only=True)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"{path}: valid ({count(len(_plan(config)), 'run')} planned for matrix {config.matrix.name!r})"
    )
    return 0


def cmd_menuconfig(args: argparse.Namespace) -> int:
    _editable_config()
    _interactive_terminal("menuconfig")
    import menuconfig  # kconfiglib's curses front end

    os.environ.setdefault("KCONFIG_CONFIG", _config_path())
    menuconfig.menuconfig(cfg.load_kconfig())
    path = _config_path()
    return _validate_after_edit(path) if os.path.exists(path) else 0


def cmd_oldconfig(args: argparse.Namespace) -> int:
    _editable_config()
    _interactive_terminal("oldconfig")
    import oldconfig  # kconfiglib's line-oriented front end

    os.environ.update(cfg.kconfig_environment())  # srctree and the plug-ins' fragments
    sys.argv = ["oldconfig", str(cfg.KCONFIG)]
    oldconfig._main()
    return _validate_after_edit(_config_path())


def cmd_check_config(args: argparse.Namespace) -> int:
    return _validate_after_edit(_need_config())


# --------------------------------------------------------------------------------------------
# matrix commands


def _plan(config: cfg.Config):
    from lib.matrix import plan

    return plan(config)


def _matrix_dir(config: cfg.Config) -> Path:
    return Path(config.matrix.results_dir) / config.matrix.name


def _note_broken_plugins() -> None:
    """One line per installed plug-in that was left out (it does not import, its name clashes,
    its fragment does not parse): the built-ins and the other plug-ins work without it."""
    from lib.catalogue import catalogue

    for reason in catalogue().broken.values():
        print(f"note: {reason}; left out", file=sys.stderr)


def cmd_dry_run(args: argparse.Namespace) -> int:
    _note_broken_plugins()
    config = cfg.load(_need_config())
    _check_data(config, own_folders_only=True)
    specs = _with_reruns(config, _plan(config), _matrix_dir(config))
    from lib.runner import format_plan

    print(f"matrix {config.matrix.name!r} -> {_matrix_dir(config)}")
    print(format_plan(specs, Path(config.matrix.results_dir)))
    if config.tuning is not None:
        from lib.tuning import describe

        print(describe(config))
    if config.matrix.executor == "slurm":
        from lib.slurm import SlurmError, format_submission

        try:
            print(
                format_submission(
                    specs, Path(config.matrix.results_dir), config.matrix.slurm, config.matrix.name
                )
            )
        except SlurmError as e:
            raise ConfigError(str(e)) from None
    return 0


def _check_trackers(specs) -> None:
    """A tracker that is on but not installed, or W&B online without a login, stops the matrix
    before any run starts."""
    from lib.tracking import missing_libraries_message, wandb_login_message

    message = missing_libraries_message(specs) or wandb_login_message(specs)
    if message:
        raise ConfigError(message)


def _run(config: cfg.Config, specs, *, rerun_failed: bool) -> int:
    _check_data(config, own_folders_only=False)
    _check_trackers(specs)

    return _execute(
        config,
        specs,
        _matrix_dir(config),
        config_snapshot=config.symbol_dict(),
        report_settings=config.report.to_dict(),
        rerun_failed=rerun_failed,
    )


def _execute(
    config: cfg.Config,
    specs,
    matrix_dir: Path,
    *,
    config_snapshot: dict[str, str],
    report_settings: dict,
    rerun_failed: bool,
) -> int:
    """Hand the matrix to its executor: the local runner, or one Slurm job array. With
    tuning reruns (lib/tuning.py), the reruns whose trials have all finished join the plan,
    before it starts and, on the local runner, once it has finished."""
    from lib import slurm
    from lib.runner import run_matrix

    specs = _with_reruns(config, specs, matrix_dir)
    if config.matrix.executor == "slurm":
        return slurm.submit_matrix(
            specs,
            matrix_dir,
            settings=config.matrix.slurm,
            config_snapshot=config_snapshot,
            report_settings=report_settings,
            rerun_failed=rerun_failed,
        )
    try:
        slurm.refuse_local_if_active(matrix_dir)
    except slurm.SlurmError as e:
        print(f"error: {e}", flush=True)
        return EXIT_USAGE
    from lib.runner import EXIT_FAILED, EXIT_OK

    while True:  # the last pass covers every planned run: its exit code is the matrix's
        code = run_matrix(
            specs,
            matrix_dir,
            config_snapshot=config_snapshot,
            report_settings=report_settings,
            jobs=config.matrix.jobs,
            gpus=list(config.matrix.gpus) or None,
            rerun_failed=rerun_failed,
            fail_fast=not config.matrix.continue_on_failure,
        )
        finished = code == EXIT_OK or (code == EXIT_FAILED and config.matrix.continue_on_failure)
        grown = _with_reruns(config, specs, matrix_dir) if finished else specs
        if len(grown) == len(specs):
            return code
        print(f"tuning: {count(len(grown) - len(specs), 'rerun')} of the chosen settings")
        specs = grown


def _with_reruns(config: cfg.Config, specs: list, matrix_dir: Path) -> list:
    """`specs` and the tuning reruns that are ready and not planned yet (lib.tuning.reruns)."""
    from lib.tuning import reruns

    planned = {s.run_id for s in specs}
    return [*specs, *(s for s in reruns(config, specs, matrix_dir) if s.run_id not in planned)]


def cmd_test_matrix(args: argparse.Namespace) -> int:
    config = cfg.load(_need_config())
    return _run(config, _plan(config), rerun_failed=args.rerun_failed)


def newest_matrix(results_dir: Path) -> Path:
    from lib.metrics import MatrixWithoutPlan
    from lib.metrics import newest_matrix as find_newest

    try:
        newest = find_newest(results_dir)
    except MatrixWithoutPlan as e:
        raise ConfigError(str(e)) from None
    if newest is None:
        raise ConfigError(f"no matrix under {results_dir}/; run make test-matrix first")
    return newest


def _chosen_matrix_dir(args: argparse.Namespace) -> Path:
    """--matrix NAME under --results-dir (default: CONFIG_RESULTS_DIR), or the newest matrix."""
    from lib.spec import NAME_ACCEPTED, is_plain_name

    results_dir = Path(args.results_dir) if args.results_dir else cfg.results_dir_setting()
    if args.matrix and not is_plain_name(args.matrix):
        raise ConfigError(
            f"--matrix {args.matrix!r} is not a matrix name; accepted: {NAME_ACCEPTED}"
        )
    return results_dir / args.matrix if args.matrix else newest_matrix(results_dir)


def cmd_continue(args: argparse.Namespace) -> int:
    """Resume the newest matrix exactly as it was planned (from its matrix.json, not from the
    current .config, which may have changed since)."""
    from lib.spec import RunSpec
    from lib.store import MatrixStore, StoreError, seal_problem

    matrix_dir = _chosen_matrix_dir(args)
    manifest_path = matrix_dir / "matrix.json"
    try:
        with MatrixStore(matrix_dir) as store:  # never through a link (lib/store.py)
            manifest = store.read_plan(verify=False)
        specs = [RunSpec.from_dict(run["spec"]) for run in manifest["runs"]]
        settings = manifest["config"], manifest["report"]
    except FileNotFoundError:
        raise ConfigError(f"{manifest_path}: no such matrix; run make test-matrix") from None
    except StoreError as e:
        raise ConfigError(str(e)) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{manifest_path}: unreadable matrix manifest ({e})") from None
    # What decides what runs and where (the run list, data and tracker directories, the
    # executor and its options) is trusted only as this user's runner sealed it.
    problem = seal_problem(manifest, manifest_path)
    if problem:
        raise ConfigError(problem)
    _check_plugins(manifest, manifest_path)
    # The matrix's own settings (jobs, GPUs, fail-fast) come from its snapshot, read by the
    # same loader as any .config, so they are validated the same way.
    config = cfg.load_snapshot(settings[0], f"{manifest_path} (config snapshot)")
    _check_trackers(specs)
    print(f"continuing matrix {matrix_dir.name!r} ({count(len(specs), 'run')})")
    return _execute(
        config,
        specs,
        matrix_dir,
        config_snapshot=settings[0],
        report_settings=settings[1],
        rerun_failed=args.rerun_failed,
    )


def _check_plugins(manifest: dict, manifest_path: Path) -> None:
    """Refuse, in one line, a matrix whose planned runs need a plug-in that is gone or has
    another version now: nothing is started, nothing finished is touched."""
    from lib.catalogue import plugin_problem

    problems = [
        (run["run_id"], problem)
        for run in manifest["runs"]
        if (problem := plugin_problem(run["spec"]))
    ]
    if problems:
        run_id, problem = problems[0]
        more = f" (and {len(problems) - 1} more runs)" if len(problems) > 1 else ""
        raise ConfigError(f"{manifest_path}: run {run_id} was {problem}{more}")


def cmd_status(args: argparse.Namespace) -> int:
    from lib.status import StatusError, status_lines

    matrix_dir = _chosen_matrix_dir(args)
    try:
        lines = status_lines(matrix_dir)
    except StatusError as e:
        raise ConfigError(str(e)) from None
    print("\n".join(lines), flush=True)
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    from lib.kconfig_docs import render

    Path(args.output).write_text(render(cfg.load_kconfig()))
    print(f"{args.output}: written")
    return 0


# --------------------------------------------------------------------------------------------


YES = ("1", "y", "yes", "true", "on")
NO = ("", "0", "n", "no", "false", "off")


def yes_no(name: str, value: str) -> bool:
    """A make variable's yes or no (`RERUN_FAILED=0` is no, as is an empty value)."""
    text = value.strip().lower()
    if text in YES or text in NO:
        return text in YES
    raise ConfigError(
        f"{name}={value!r} is neither yes nor no; accepted: {'/'.join(YES)} or "
        f"{'/'.join(n for n in NO if n)}/empty"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lib.cli", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list-defconfigs", help="list the named configurations").set_defaults(
        func=cmd_list_defconfigs
    )
    p = sub.add_parser("defconfig", help="write .config from defconfigs/NAME")
    p.add_argument("name", nargs="?", default="demo")
    p.set_defaults(func=cmd_defconfig)
    sub.add_parser("olddefconfig", help="expand .config with defaults").set_defaults(
        func=cmd_olddefconfig
    )
    p = sub.add_parser("savedefconfig", help="write the minimal form of .config")
    p.add_argument("--output", default="defconfig")
    p.set_defaults(func=cmd_savedefconfig)
    sub.add_parser("menuconfig", help="curses menu").set_defaults(func=cmd_menuconfig)
    sub.add_parser("oldconfig", help="ask for new options").set_defaults(func=cmd_oldconfig)
    sub.add_parser("check-config", help="validate .config").set_defaults(func=cmd_check_config)
    sub.add_parser("dry-run", help="print the planned runs").set_defaults(func=cmd_dry_run)
    p = sub.add_parser("test-matrix", help="run the matrix of .config")
    p.add_argument("--rerun-failed", nargs="?", const="yes", default="no", metavar="YES_NO")
    p.set_defaults(func=cmd_test_matrix)
    p = sub.add_parser("continue", help="resume the newest matrix")
    p.add_argument("--results-dir", default="", help="default: CONFIG_RESULTS_DIR of .config")
    p.add_argument("--matrix", default="")
    p.add_argument("--rerun-failed", nargs="?", const="yes", default="no", metavar="YES_NO")
    p.set_defaults(func=cmd_continue)
    p = sub.add_parser("status", help="one line per run of the newest matrix")
    p.add_argument("--results-dir", default="", help="default: CONFIG_RESULTS_DIR of .config")
    p.add_argument("--matrix", default="")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("docs", help="generate the Kconfig reference")
    p.add_argument("--output", default="docs/kconfig.md")
    p.set_defaults(func=cmd_docs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "rerun_failed"):
            args.rerun_failed = yes_no("RERUN_FAILED", args.rerun_failed)
        return args.func(args)
    except (ConfigError, PluginError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
