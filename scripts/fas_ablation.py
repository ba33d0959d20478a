"""Compare anti-spoofing variants on held-out domains, over seeds and inner-step settings.

    python scripts/fas_ablation.py --out study.json [--markdown study.md] \
        --methods rfmeta no-meta --inner-lrs 0.001 0.01 0.1 0.5 \
        --inner-reductions mean sum --seeds 0 1 2 3 4 5 [--targets studio phone ...] \
        [--jobs 2 --threads 1] [--config configs/fas-faces.yaml] [key=value ...]

For every target domain (the other domains of the collection are the sources),
seed, method and inner-step setting (``train.inner_lr`` x ``train.inner_reduction``,
each defaulting to the configuration's value): train on the sources and evaluate
the final model on the target. A method without meta-learning (``no-meta``,
``baseline``) has no inner step, so it is trained once per target, seed and
reduction and paired with every ``inner_lr``. Extra ``key=value`` overrides apply
to every run (default config: ``configs/fas-faces.yaml``, default targets: all
domains of its collection).

Printed (and written to ``--markdown``): a table of mean ± standard deviation over
the seeds per target, method and setting, and per setting the paired
differences of the first method minus each other one on the same target and seed
(mean ± standard deviation over the pairs, and in how many pairs the first
method's target AUC is higher). Metrics (``osad.fas.evaluate``): frame-level target
AUC and target EER (at the target's own, oracle, threshold), video-level target
AUC and EER (scores averaged per video), and HTER at the source-validation EER
threshold (frames).

Every finished run is added to ``--out`` (JSON, a list of runs, rewritten
atomically): a second call with the same file skips the runs already in it, so a
long study can be split over sessions and an interrupted one loses at most the
runs in progress; a run whose loss became non-finite is saved as diverged (not
retried) and listed under the tables. ``--jobs N`` trains N runs at once in
separate processes of ``--threads`` torch threads each. ``--load FILE ...`` prints
the tables of saved runs (those matching the other options) without training.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import statistics
import sys
import time
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch

from osad.errors import ConfigError, OsadError
from osad.fas.config import make_fas_config
from osad.fas.data import fas_collection, load_fas
from osad.fas.evaluate import evaluate_fas
from osad.fas.methods import META_METHODS
from osad.fas.trainer import train_meta
from osad.storage import write_atomic
from osad.train.step import NonFiniteLossError

# Per-run metrics: JSON key -> column label.
COLUMNS = {
    "val_auc": "source-val AUC",
    "auc": "target AUC",
    "eer": "target EER",
    "video_auc": "video AUC",
    "video_eer": "video EER",
    "hter": "HTER @ source-val threshold",
}
PAIRED = ["auc", "eer", "video_auc", "video_eer", "hter"]
# What identifies a run in the JSON (the rest are its numbers).
KEY = ("config", "overrides", "target", "method", "seed", "inner_lr", "inner_reduction")


# keys run_overrides sets per run: an override of one would be silently replaced
SET_BY_THE_SCRIPT = (
    "data.target",
    "data.sources",
    "method",
    "seed",
    "train.inner_lr",
    "train.inner_reduction",
)


def run_overrides(spec: dict[str, Any]) -> list[str]:
    """The ``key=value`` overrides that make ``spec``'s configuration from its file."""
    collection = fas_collection(make_fas_config(spec["config"], spec["overrides"]).data.name)
    sources = [d for d in collection.domains if d != spec["target"]]
    overrides = [
        *spec["overrides"],
        f"data.target={spec['target']}",
        f"data.sources=[{', '.join(sources)}]",
        f"method={spec['method']}",
        f"seed={spec['seed']}",
        f"train.inner_reduction={spec['inner_reduction']}",
    ]
    if spec["inner_lr"] is not None:
        overrides.append(f"train.inner_lr={spec['inner_lr']!r}")
    return overrides


_DATA: dict[str, Any] = {}  # this process's loaded domains, by data configuration


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate the run ``spec`` describes (the :data:`KEY` fields); the spec
    with its numbers added."""
    config = make_fas_config(spec["config"], run_overrides(spec))
    cached = repr((config.data, config.depth_size))
    if cached not in _DATA:
        _DATA[cached] = load_fas(config.data, config.depth_size)
    data = _DATA[cached]
    start, cpu = time.perf_counter(), time.process_time()
    try:
        model = train_meta(config, data, progress=False).model
    except NonFiniteLossError as exc:  # a result of the setting: kept, not retried
        return {**spec, "diverged": str(exc), "seconds": time.perf_counter() - start}
    result = evaluate_fas(model, data, config)
    return {
        **spec,
        "val_auc": result.val_auc,
        "auc": result.frame.auc,
        "eer": result.frame.target_eer,
        "hter": result.frame.hter_at_val_threshold,
        "video_auc": result.video.auc,
        "video_eer": result.video.target_eer,
        "video_hter": result.video.hter_at_val_threshold,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
    }


def key(run: dict[str, Any]) -> tuple:
    return tuple(json.dumps(run.get(k)) for k in KEY)


def planned_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run the options ask for, seeds outermost (so a partial study holds whole
    seeds), without repeats; checks every configuration first (ConfigError)."""
    base = make_fas_config(args.config, args.overrides)
    lrs = args.inner_lrs or [base.train.inner_lr]
    reductions = args.inner_reductions or [base.train.inner_reduction]
    targets = args.targets or list(fas_collection(base.data.name).domains)
    runs: dict[tuple, dict[str, Any]] = {}
    for seed, target, reduction, lr, method in itertools.product(
        args.seeds, targets, reductions, lrs, args.methods
    ):
        spec = {
            "config": args.config,
            "overrides": list(args.overrides),
            "target": target,
            "method": method,
            "seed": seed,
            "inner_lr": lr if method in META_METHODS and META_METHODS[method].meta else None,
            "inner_reduction": reduction,
        }
        make_fas_config(spec["config"], run_overrides(spec))  # refuses bad ones before any run
        runs.setdefault(key(spec), spec)
    return list(runs.values())


def read_runs(path: Path) -> list[dict[str, Any]]:
    """The runs saved in ``path``; OsadError naming the file if it is not such a list."""
    try:
        runs = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OsadError(f"{path}: cannot read the saved runs ({exc})") from None
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise OsadError(f"{path}: not a list of runs written by fas_ablation.py --out")
    return runs


def train_missing(todo: list[dict], runs: list[dict], args: argparse.Namespace) -> None:
    """Train ``todo``, adding each finished run to ``runs`` and to ``--out`` at once."""

    def finished(run: dict[str, Any]) -> None:
        runs.append(run)
        print(json.dumps(run), file=sys.stderr, flush=True)
        if args.out:
            write_atomic(args.out, json.dumps(runs, indent=1) + "\n")

    if args.jobs == 1:
        for spec in todo:
            finished(run_one(spec))
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        args.jobs, mp_context=context, initializer=torch.set_num_threads, initargs=(args.threads,)
    ) as pool:
        pending = {pool.submit(run_one, spec) for spec in todo}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    finished(future.result())
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def _mean_std(values: list[float]) -> str:
    """Mean ± sample standard deviation; the value alone for one run (no spread known)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _lr(value: float | None) -> str:
    return "—" if value is None else f"{value:g}"


def tables(runs: list[dict], plan: list[dict], methods: list[str]) -> str:
    """The Markdown tables of the planned runs found in ``runs`` (module docstring)."""
    saved = {key(r): r for r in runs}
    found = [saved[key(spec)] for spec in plan if key(spec) in saved]
    chosen = [r for r in found if "diverged" not in r]
    targets = list(dict.fromkeys(r["target"] for r in plan))
    seeds = sorted({r["seed"] for r in plan})
    lines = [
        "| target | method | inner_lr | reduction | " + " | ".join(COLUMNS.values()) + " |",
        "|---|---|---|---|" + "---|" * len(COLUMNS),
    ]
    groups = [([t], t) for t in targets] + ([(targets, "all")] if len(targets) > 1 else [])
    cells_of = sorted(
        {(r["method"], r["inner_lr"], r["inner_reduction"]) for r in plan},
        key=lambda c: (methods.index(c[0]), c[2], -1.0 if c[1] is None else c[1]),
    )
    for group, label in groups:
        for method, lr, reduction in cells_of:
            rows = [
                r
                for r in chosen
                if r["target"] in group
                and (r["method"], r["inner_lr"], r["inner_reduction"]) == (method, lr, reduction)
            ]
            if rows:
                cells = " | ".join(_mean_std([r[k] for r in rows]) for k in COLUMNS)
                lines.append(f"| {label} | {method} | {_lr(lr)} | {reduction} | {cells} |")
    lines.append(
        f"\nmean ± standard deviation over seeds {seeds} (all: over targets and seeds); "
        "target EER: at the target's own threshold (oracle); video: scores averaged per video"
    )
    lines += ["", *paired_table(chosen, methods)]
    for r in found:
        if "diverged" in r:
            setting = f"inner_lr {_lr(r['inner_lr'])}, {r['inner_reduction']}"
            lines.append(
                f"\ndiverged, left out of both tables: {r['method']} ({setting}), target "
                f"{r['target']}, seed {r['seed']}: {r['diverged']}"
            )
    return "\n".join(lines) + "\n"


def paired_table(runs: list[dict], methods: list[str]) -> list[str]:
    """Per inner-step setting, the first method minus each other on the same target and
    seed: mean ± standard deviation of the differences, and how often the first
    method's target AUC is higher."""
    first = methods[0]
    header = " | ".join(COLUMNS[k] for k in PAIRED)
    lines = [
        f"| inner_lr | reduction | {first} minus | {header} | pairs | {first} AUC higher |",
        "|---|---|---|" + "---|" * (len(PAIRED) + 2),
    ]
    by_cell = defaultdict(list)
    for r in runs:
        by_cell[(r["target"], r["seed"], r["method"], r["inner_reduction"])].append(r)
    ahead_runs = [r for r in runs if r["method"] == first]
    settings = sorted(
        {(r["inner_lr"], r["inner_reduction"]) for r in ahead_runs}, key=lambda c: c[::-1]
    )
    for (lr, reduction), other in itertools.product(settings, methods[1:]):
        pairs = []
        for a in ahead_runs:
            if (a["inner_lr"], a["inner_reduction"]) != (lr, reduction):
                continue
            for b in by_cell.get((a["target"], a["seed"], other, reduction), []):
                if b["inner_lr"] in (None, lr):
                    pairs.append((a, b))
        if not pairs:
            continue
        cells = " | ".join(_mean_std([a[k] - b[k] for a, b in pairs]) for k in PAIRED)
        ahead = sum(a["auc"] > b["auc"] for a, b in pairs)
        lines.append(
            f"| {_lr(lr)} | {reduction} | {other} | {cells} | {len(pairs)} "
            f"| {ahead} of {len(pairs)} |"
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["rfmeta", "no-meta", "no-depth"],
        help="anti-spoofing methods (osad.fas.methods); the first is compared with each "
        "other one (default: rfmeta no-meta no-depth)",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (default: 0 1 2)"
    )
    parser.add_argument(
        "--targets", nargs="+", help="held-out domains (default: every domain of the collection)"
    )
    parser.add_argument(
        "--inner-lrs",
        nargs="+",
        type=float,
        help="train.inner_lr values (default: the configuration's)",
    )
    parser.add_argument(
        "--inner-reductions",
        nargs="+",
        help="train.inner_reduction values, mean or sum (default: the configuration's)",
    )
    parser.add_argument(
        "--config",
        default="configs/fas-faces.yaml",
        help="anti-spoofing preset (default: configs/fas-faces.yaml)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (processes)")
    parser.add_argument(
        "--out", type=Path, help="JSON of every run: read, runs in it skipped, new runs added"
    )
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument(
        "--load",
        nargs="+",
        type=Path,
        help="print the tables of these saved JSON files (the runs matching the other "
        "options), train nothing",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides for every run"
    )
    args = parser.parse_args(argv)
    for name in ("methods", "targets", "inner_reductions"):  # nargs="+" takes key=value too
        for value in getattr(args, name) or ():
            if "=" in value:
                parser.error(
                    f"'{value}' was read as one of --{name.replace('_', '-')}: put key=value "
                    "overrides before the list options"
                )
    for override in args.overrides:
        if override.split("=", 1)[0].strip() in SET_BY_THE_SCRIPT:
            parser.error(
                f"'{override}': the script sets {', '.join(SET_BY_THE_SCRIPT)} per run; "
                "use --methods, --seeds, --targets, --inner-lrs, --inner-reductions"
            )
    if args.jobs < 1 or args.threads < 0:
        parser.error("--jobs must be >= 1 and --threads >= 0")
    if args.jobs > 1 and args.threads == 0:
        args.threads = 1  # N processes of the default thread count would oversubscribe
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        plan = planned_runs(args)
        if args.load:
            runs = [r for path in args.load for r in read_runs(path)]
            planned = {key(spec) for spec in plan}
            if runs and not any(key(r) in planned for r in runs):
                raise ConfigError(
                    f"none of the {len(runs)} saved runs matches the options (methods, "
                    "seeds, targets, inner steps, config, overrides); give the options "
                    "the runs were made with"
                )
        else:
            runs = read_runs(args.out) if args.out and args.out.exists() else []
            done = {key(r) for r in runs}
            todo = [spec for spec in plan if key(spec) not in done]
            print(
                f"{len(plan)} runs planned, {len(plan) - len(todo)} already in {args.out}, "
                f"{len(todo)} to train",
                file=sys.stderr,
                flush=True,
            )
            try:
                train_missing(todo, runs, args)
            except KeyboardInterrupt:
                saved = f"saved in {args.out}" if args.out else "not saved (no --out)"
                print(
                    f"fas_ablation: interrupted; {len(runs)} runs {saved}; the same command "
                    "continues",
                    file=sys.stderr,
                )
                return 130
        text = tables(runs, plan, args.methods)
        if args.markdown:
            write_atomic(args.markdown, text)
    except OsadError as exc:
        print(f"fas_ablation: error: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
