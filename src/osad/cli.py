"""Command line: ``osad run``, ``osad train``, ``osad test``, ``osad evaluate``,
``osad check``, ``osad report``, ``osad sweep``.

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
from osad.rundir import MAIN, RUN_MODELS, RunDir


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


# A run's config.yaml does not choose its data root or turn checksums off: the commands
# that read an existing run take both from the command line (see docs/datasets.md).
_NO_VERIFY_HELP = (
    "read the datasets without checking their official checksums "
    "(needed for a run recorded with data.verify=false)"
)


def _add_run_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help=_DATA_ROOT_HELP)
    p.add_argument("--no-verify", action="store_true", help=_NO_VERIFY_HELP)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        help="YAML config file (default: the embedded digits OSDN setting; "
        "'task: fas' selects face anti-spoofing)",
    )
    p.add_argument("--data-root", help=_DATA_ROOT_HELP)
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    _add_progress_option(p)
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. train.epochs=3 method=pgd-at (task=fas: anti-spoofing)",
    )


def _add_progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars (stderr)")


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
    tr.add_argument("--no-verify", action="store_true", help=f"with --resume: {_NO_VERIFY_HELP}")

    te = sub.add_parser("test", help="evaluate a trained run (writes RUN_DIR/eval/)")
    te.add_argument("run_dir", help="run directory made by 'osad train'")
    _add_run_data_options(te)
    te.add_argument(
        "--force",
        action="store_true",
        help="recompute every condition and replace the earlier results (default: reuse "
        "the conditions computed under identical settings, add the new ones)",
    )
    te.add_argument(
        "--out", help="folder for the results (default: RUN_DIR/eval, or RUN_DIR/eval-NAME/)"
    )
    _add_progress_option(te)
    te.add_argument(
        "--model",
        choices=RUN_MODELS,
        default=MAIN,
        metavar="NAME",
        help="the network of the run to evaluate: main (its model, default) or another the "
        "method trains, e.g. peer of an osdn-caml run (writes RUN_DIR/eval-NAME/)",
    )
    te.add_argument(
        "--attacks",
        type=_names,
        help="comma list of eval.attacks entries, built-in adaptive attacks (adaptive, "
        "joint) and attack names (fgsm, fgsm-rs, pgd, apgd, square, patch; defaults at the "
        "run's pgd budget) to run, e.g. fgsm,pgd,adaptive (default: the run's eval.attacks)",
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
    te.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="evaluation overrides (eval.* keys only), e.g. eval.attacks.pgd.steps=50",
    )
    _add_evaluate_parser(sub)
    rp = sub.add_parser("report", help="one table over runs: mean +- std per method/config")
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="evaluated run directories")
    rp.add_argument("--out", required=True, help="folder for report.md and report.csv")
    rp.add_argument("--force", action="store_true", help="replace an existing report")
    _add_progress_option(rp)  # accepted by every command; reading metrics shows no bar
    ch = sub.add_parser("check", help="sanity checks against gradient masking (exit 1 on a fail)")
    ch.add_argument("run_dir", help="run directory made by 'osad train'")
    _add_run_data_options(ch)
    ch.add_argument(
        "--images", type=int, default=1000, help="test images to check on (default 1000)"
    )
    ch.add_argument("--score", default="msp", help="score whose AUROC is checked (default msp)")
    ch.add_argument(
        "--queries", type=int, default=1000, help="Square attack queries (default 1000)"
    )
    ch.add_argument("--force", action="store_true", help="replace an existing check.json")
    ch.add_argument(
        "--version",
        help="also check the attack against this ensemble version (fast, standard, plus)",
    )
    _add_progress_option(ch)

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
    sw.add_argument(
        "--jobs",
        type=_jobs,
        default=1,
        help="runs at once, each in its own process on OMP_NUM_THREADS threads (default: "
        "the CPUs divided by the jobs); default 1: one after the other in this process",
    )
    sw.add_argument("--data-root", help=_DATA_ROOT_HELP)
    _add_progress_option(sw)
    return parser


def _add_evaluate_parser(sub) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="evaluate any model (a Python factory and a safetensors weights file) on an "
        "open-set split, as osad test does",
    )
    ev.add_argument(
        "--model",
        required=True,
        metavar="SPEC",
        help="factory returning the nn.Module (images in [0, 1] -> logits of the known "
        "classes, or (logits, features)): module:function or path/to/file.py:function",
    )
    ev.add_argument(
        "--weights",
        required=True,
        help="safetensors file of the model's state_dict (pickle files are refused)",
    )
    ev.add_argument("--data", required=True, help="dataset osad reads, e.g. digits, cifar10")
    ev.add_argument("--split", type=int, default=0, help="the dataset's open-set split (default 0)")
    ev.add_argument(
        "--known",
        type=_indices,
        help="comma list of known class ids instead of a split (the rest are unknown)",
    )
    ev.add_argument(
        "--unknown",
        help="unknown test images from another dataset or an image folder (path with '/')",
    )
    ev.add_argument("--data-root", help=_DATA_ROOT_HELP)
    ev.add_argument(
        "--eps",
        type=float,
        required=True,
        help="attack budget in 1/255 units for both norms (8 = 8/255 in linf)",
    )
    ev.add_argument("--norm", default="linf", help="linf (default) or l2")
    ev.add_argument(
        "--attacks",
        type=_names,
        help="comma list of fgsm, pgd, adaptive, joint (default: pgd,adaptive)",
    )
    ev.add_argument(
        "--version",
        help="the per-sample worst-case ensemble: fast, standard or plus (default: standard "
        "when --attacks is not given)",
    )
    ev.add_argument(
        "--scores",
        type=_names,
        help="comma list of open-set scores, or all (default: every score the model supports)",
    )
    ev.add_argument("--pairings", type=_names, help="extra pairings: known, unknown, or all")
    ev.add_argument(
        "--out", required=True, help="folder for metrics.json, scores.h5, results.md, figures/"
    )
    ev.add_argument(
        "--force",
        action="store_true",
        help="replace a non-empty --out folder (only once the new results are written)",
    )
    ev.add_argument("--seed", type=int, default=0, help="seed of the attacks (default 0)")
    ev.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    ev.add_argument("--no-figures", action="store_true", help="write no figures")
    _add_progress_option(ev)


def _evaluate(args: argparse.Namespace, say: Callable[..., None]) -> int:
    from osad.config import make_config
    from osad.distributed import world
    from osad.errors import ConfigError
    from osad.eval.any_model import evaluate_factory

    if world().distributed:
        raise ConfigError("osad evaluate runs in one process; run it without torchrun")
    overrides = [f"data.name={args.data}", f"data.split={args.split}"]
    if args.known:
        overrides.append(f"data.known=[{','.join(map(str, args.known))}]")
    if args.unknown:
        overrides.append(f"data.unknown={args.unknown}")
    data = make_config(overrides=overrides).data
    if args.data_root:
        data.root = args.data_root
    start = time.perf_counter()
    evaluation = evaluate_factory(
        args.model,
        args.weights,
        data,
        device=args.device,
        eps=args.eps,
        norm=args.norm,
        attacks=args.attacks,
        version=args.version,
        scores=args.scores,
        pairings=args.pairings,
        seed=args.seed,
        figures=not args.no_figures,
        out=args.out,
        force=args.force,
        progress=not args.no_progress,
    )
    say(evaluation.table)
    say(f"\nresults in {evaluation.out} ({time.perf_counter() - start:.0f} s)")
    return 0


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


def _jobs(text: str) -> int:
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of runs at once, 1 or more; got {text!r}"
        )
    return jobs


def _sweep(args: argparse.Namespace) -> int:
    from osad.sweep import RunsFailed, load_sweep, run_sweep, write_figures, write_summary

    sweep = load_sweep(args.sweep_file).select(args.methods, args.splits)
    start = time.perf_counter()
    failed = None
    if not args.summary_only:
        try:
            run_sweep(
                sweep,
                args.out,
                progress=not args.no_progress,
                data_root=args.data_root,
                jobs=args.jobs,
            )
        except RunsFailed as exc:  # --jobs > 1: the other runs are done, tabulate them
            failed = exc
    elif not Path(args.out).is_dir():
        raise _UsageError(f"--summary-only: sweep directory {args.out} does not exist")
    print(write_summary(sweep, args.out))
    for figure in write_figures(sweep, args.out):
        print(f"figure {figure}")
    print(f"tables in {Path(args.out) / 'results.md'} ({time.perf_counter() - start:.0f} s)")
    if failed is not None:
        raise failed
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
    from osad.distributed import agree, is_main
    from osad.tasks import make_task_config, task_of
    from osad.workflow import resume_run, test_run, train_run

    say = print if is_main() else _quiet
    if args.command == "check":
        return _check(args, say)
    if args.command == "report":
        from osad.eval.aggregate import aggregate, markdown, write_report

        report = aggregate(args.run_dirs)
        paths = agree(lambda: write_report(report, args.out, force=args.force))
        say(markdown(report))
        say(f"\nwritten: {', '.join(str(p) for p in paths)}")
        return 0
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "evaluate":
        return _evaluate(args, say)
    progress = not args.no_progress
    if args.command == "test":
        start = time.perf_counter()
        table = test_run(
            args.run_dir,
            force=args.force,
            progress=progress,
            data_root=args.data_root,
            verify=not args.no_verify,
            model=args.model,
            attacks=args.attacks,
            scores=args.scores,
            pairings=args.pairings,
            overrides=args.overrides,
            out=args.out,
            version=args.version,
        )
        say(table)
        out = args.out or RunDir(Path(args.run_dir)).eval_dir_of(args.model)
        say(f"\nresults in {out} ({time.perf_counter() - start:.0f} s)")
        return 0
    if getattr(args, "resume", None):
        if args.config or args.overrides or args.force:
            raise _UsageError(
                "--resume continues a run with the configuration it was trained with; "
                "it takes no --config, key=value overrides or --force"
            )
        start = time.perf_counter()
        run, checkpoint = resume_run(
            args.resume, progress=progress, data_root=args.data_root, verify=not args.no_verify
        )
        say(
            f"resumed from {checkpoint} and finished training {run.root} "
            f"({time.perf_counter() - start:.0f} s); evaluate it with: osad test {run.root}"
        )
        return 0
    if getattr(args, "no_verify", False):
        raise _UsageError("--no-verify goes with --resume; a new run takes data.verify=false")
    config = make_task_config(args.config, args.overrides)
    if args.data_root:
        config.data.root = args.data_root
    # Every process must train into the same directory: rank 0 picks it.
    out = Path(args.out) if args.out else agree(lambda: _default_out(config))
    start = time.perf_counter()
    run = train_run(config, out, force=args.force, progress=progress)
    say(f"trained {config.method} into {run.root} ({time.perf_counter() - start:.0f} s)")
    if args.command == "run":
        # The configuration is this command's own: its data settings are confirmed.
        verify = config.data.verify if task_of(config).verifies_data else True
        table = test_run(
            run.root, progress=progress, data_root=config.data.root or None, verify=verify
        )
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
    results = check_run(
        args.run_dir,
        settings,
        data_root=args.data_root,
        verify=not args.no_verify,
        force=args.force,
        progress=not args.no_progress,
    )
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


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, except that ``key=value`` overrides may also follow options
    (``osad test RUN --attacks pgd eval.attacks.pgd.steps=50``), which argparse alone
    refuses after a positional argument was read."""
    args, extra = parser.parse_known_args(argv)
    late = [a for a in extra if "=" in a and not a.startswith("-")]
    if extra != late or (late and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if late:
        args.overrides = [*args.overrides, *late]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = _parse(parser, argv)
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
