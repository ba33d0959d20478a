"""Command line: ``osad run``, ``osad train``, ``osad test``.

Every user error prints one line ``osad: error: ...`` to stderr and exits
with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from osad import __version__
from osad.errors import OsadError


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) that the caller turns into exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(
            f"{message} (see 'osad {self.prog.split()[-1]} --help')"
            if " " in self.prog
            else message
        )


_DATA_ROOT_HELP = (
    "folder holding the datasets (overrides data.root, which overrides $OSAD_DATA_ROOT; "
    "default ~/.cache/osad/data)"
)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        help="YAML config file (default: the embedded digits OSDN setting; "
        "'task: fas' selects face anti-spoofing)",
    )
    p.add_argument("--data-root", help=_DATA_ROOT_HELP)
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. train.epochs=3 method=pgd-at (task=fas: anti-spoofing)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="osad", description="Open-set adversarial defense (OSDN) toolkit.")
    parser.add_argument("--version", action="version", version=f"osad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="train and evaluate in one go (default: OSDN on digits)")
    run.add_argument("--out", help="run directory (default: a new folder under runs/)")
    _add_train_options(run)

    tr = sub.add_parser("train", help="train a model into a run directory")
    tr.add_argument("--out", required=True, help="run directory to create")
    _add_train_options(tr)

    te = sub.add_parser("test", help="evaluate a trained run (writes RUN_DIR/eval/)")
    te.add_argument("run_dir", help="run directory made by 'osad train'")
    te.add_argument("--data-root", help=_DATA_ROOT_HELP)
    te.add_argument("--force", action="store_true", help="overwrite existing results")
    te.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def _default_out(config) -> Path:
    base = Path("runs") / config.run_name()
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _run(args: argparse.Namespace) -> int:
    from osad.distributed import init_from_env, shutdown

    init_from_env()  # a process group only under torchrun with several processes
    try:
        return _command(args)
    finally:
        shutdown()


def _command(args: argparse.Namespace) -> int:
    from osad.config import make_task_config
    from osad.distributed import agree, is_main
    from osad.workflow import test_run, train_run

    report = print if is_main() else _quiet
    progress = not args.no_progress
    if args.command == "test":
        start = time.perf_counter()
        table = test_run(
            args.run_dir, force=args.force, progress=progress, data_root=args.data_root
        )
        report(table)
        report(f"\nresults in {Path(args.run_dir) / 'eval'} ({time.perf_counter() - start:.0f} s)")
        return 0
    config = make_task_config(args.config, args.overrides)
    if args.data_root:
        config.data.root = args.data_root
    # Every process must train into the same directory: rank 0 picks it.
    out = Path(args.out) if args.out else agree(lambda: _default_out(config))
    start = time.perf_counter()
    run = train_run(config, out, force=args.force, progress=progress)
    report(f"trained {config.method} into {run.root} ({time.perf_counter() - start:.0f} s)")
    if args.command == "run":
        table = test_run(run.root, progress=progress)
        report(table)
        report(f"\nresults in {run.eval_dir} (total {time.perf_counter() - start:.0f} s)")
    return 0


def _quiet(*args, **kwargs) -> None:
    """Ranks other than 0 print nothing but errors."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return _run(args)
    except (_UsageError, OsadError) as exc:
        print(f"osad: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("osad: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
