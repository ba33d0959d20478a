"""Command line: ``osad run``, ``osad train``, ``osad test``, ``osad check``,
``osad report``, ``osad sweep``.

Every user error prints one line ``osad: error: ...`` to stderr and exits
with status 2, without a traceback; so does a failed write (a full disk). A
training stopped by SIGINT or SIGTERM saves a checkpoint, prints one line
saying how to resume, and exits with 130 or 143.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from osad import __version__
from osad.errors import OsadError, TrainingInterrupted
from osad.rundir import RUN_MODELS, RunDir


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
    target = tr.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="run directory to create")
    target.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its latest checkpoint "
        "(or from RUN_DIR/checkpoints/step-N)",
    )
    _add_train_options(tr)

    te = sub.add_parser("test", help="evaluate a trained run (writes RUN_DIR/eval/)")
    te.add_argument("run_dir", help="run directory made by 'osad train'")
    te.add_argument("--data-root", help=_DATA_ROOT_HELP)
    te.add_argument("--force", action="store_true", help="overwrite existing results")
    te.add_argument("--no-progress", action="store_true", help="hide progress bars")
    te.add_argument(
        "--model",
        choices=RUN_MODELS,
        default="main",
        help="'peer': evaluate the peer network of an osdn-caml run (writes RUN_DIR/eval-peer/)",
    )
    te.add_argument(
        "--attacks",
        type=_names,
        help="comma list of eval.attacks entries and built-in adaptive attacks "
        "(adaptive, joint) to run, e.g. fgsm,pgd,adaptive (default: the run's eval.attacks)",
    )
    te.add_argument(
        "--scores",
        type=_names,
        help="comma list of open-set scores, or all (default: the run's eval.scores)",
    )
    te.add_argument(
        "--pairings",
        type=_names,
        help="extra pairings: known (known attacked, unknown clean), unknown "
        "(known clean, unknown attacked), or all; both attacked is always reported",
    )
    te.add_argument(
        "--version",
        help="the per-sample worst-case ensemble run as condition 'ensemble': fast, "
        "standard, plus, or none (default: the run's eval.version)",
    )
    rp = sub.add_parser("report", help="one table over runs: mean +- std per method/config")
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="evaluated run directories")
    rp.add_argument("--out", required=True, help="folder for report.md and report.csv")
    ch = sub.add_parser("check", help="sanity checks against gradient masking (exit 1 on a fail)")
    ch.add_argument("run_dir", help="run directory made by 'osad train'")
    ch.add_argument("--data-root", help=_DATA_ROOT_HELP)
    ch.add_argument(
        "--images", type=int, default=1000, help="test images to check on (default 1000)"
    )
    ch.add_argument("--score", default="msp", help="score whose AUROC is checked (default msp)")
    ch.add_argument(
        "--queries", type=int, default=1000, help="Square attack queries (default 1000)"
    )
    ch.add_argument(
        "--version",
        help="also check the attack against this ensemble version (fast, standard, plus)",
    )

    sw = sub.add_parser(
        "sweep",
        help="train and evaluate every method of a sweep preset on every split, "
        "resumably, and print mean +- std over splits",
    )
    sw.add_argument("sweep_file", help="sweep preset, e.g. configs/sweeps/digits.yaml")
    sw.add_argument("--out", required=True, help="sweep directory (one run per method and split)")
    sw.add_argument(
        "--methods", type=_names, help="comma list of the preset's methods to run (default: all)"
    )
    sw.add_argument(
        "--splits", type=_indices, help="comma list of the preset's splits to run (default: all)"
    )
    sw.add_argument(
        "--summary-only",
        action="store_true",
        help="train nothing: tabulate the runs already finished under --out",
    )
    sw.add_argument("--data-root", help=_DATA_ROOT_HELP)
    sw.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return names


def _indices(text: str) -> list[int]:
    try:
        return [int(name) for name in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a comma list of integers, e.g. 0,1,2; got {text!r}"
        ) from None


def _sweep(args: argparse.Namespace) -> int:
    from osad.sweep import load_sweep, run_sweep, write_figures, write_summary

    sweep = load_sweep(args.sweep_file).select(args.methods, args.splits)
    start = time.perf_counter()
    if not args.summary_only:
        run_sweep(sweep, args.out, progress=not args.no_progress, data_root=args.data_root)
    elif not Path(args.out).is_dir():
        raise _UsageError(f"--summary-only: sweep directory {args.out} does not exist")
    print(write_summary(sweep, args.out))
    for figure in write_figures(sweep, args.out):
        print(f"figure {figure}")
    print(f"tables in {Path(args.out) / 'results.md'} ({time.perf_counter() - start:.0f} s)")
    return 0


def _default_out(config) -> Path:
    """A new directory under runs/, claimed by creating it: two runs started at
    once never share one."""
    base = Path("runs") / config.run_name()
    n = 1
    while True:
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            n += 1


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
    from osad.workflow import resume_run, test_run, train_run

    say = print if is_main() else _quiet
    if args.command == "check":
        return _check(args, say)
    if args.command == "report":
        from osad.eval.aggregate import aggregate, markdown, write_report

        report = aggregate(args.run_dirs)
        paths = agree(lambda: write_report(report, args.out))
        say(markdown(report))
        say(f"\nwritten: {', '.join(str(p) for p in paths)}")
        return 0
    if args.command == "sweep":
        return _sweep(args)
    progress = not args.no_progress
    if args.command == "test":
        start = time.perf_counter()
        table = test_run(
            args.run_dir,
            force=args.force,
            progress=progress,
            data_root=args.data_root,
            model=args.model,
            attacks=args.attacks,
            scores=args.scores,
            pairings=args.pairings,
            version=args.version,
        )
        say(table)
        out = RunDir(Path(args.run_dir)).eval_dir_of(args.model)
        say(f"\nresults in {out} ({time.perf_counter() - start:.0f} s)")
        return 0
    if getattr(args, "resume", None):
        if args.config or args.overrides or args.force:
            raise _UsageError(
                "--resume continues a run with the configuration it was trained with; "
                "it takes no --config, key=value overrides or --force"
            )
        start = time.perf_counter()
        run, checkpoint = resume_run(args.resume, progress=progress, data_root=args.data_root)
        say(
            f"resumed from {checkpoint} and finished training {run.root} "
            f"({time.perf_counter() - start:.0f} s); evaluate it with: osad test {run.root}"
        )
        return 0
    config = make_task_config(args.config, args.overrides)
    if args.data_root:
        config.data.root = args.data_root
    # Every process must train into the same directory: rank 0 picks it.
    out = Path(args.out) if args.out else agree(lambda: _default_out(config))
    start = time.perf_counter()
    run = train_run(config, out, force=args.force, progress=progress)
    say(f"trained {config.method} into {run.root} ({time.perf_counter() - start:.0f} s)")
    if args.command == "run":
        table = test_run(run.root, progress=progress)
        say(table)
        say(f"\nresults in {run.eval_dir} (total {time.perf_counter() - start:.0f} s)")
    return 0


def _check(args: argparse.Namespace, say: Callable[..., None]) -> int:
    from osad.eval.sanity import CheckSettings
    from osad.workflow import check_run

    settings = CheckSettings(
        images=args.images, score=args.score, square_queries=args.queries, version=args.version
    )
    start = time.perf_counter()
    results = check_run(args.run_dir, settings, data_root=args.data_root)
    for result in results:
        say(f"{'PASS' if result.passed else 'FAIL'}  {result.name}: {result.summary}")
    failed = [r.name for r in results if not r.passed]
    verdict = f"{len(failed)} of {len(results)} checks failed" if failed else "all checks passed"
    say(
        f"\n{verdict}; saved to {Path(args.run_dir) / 'check.json'} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return 1 if failed else 0


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
    except OSError as exc:  # a file osad could not read or write outside its own checks
        where = f": {exc.filename}" if exc.filename else ""
        print(f"osad: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(f"osad: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("osad: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
