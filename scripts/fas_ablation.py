"""Compare anti-spoofing variants on held-out domains, over several seeds.

    python scripts/fas_ablation.py --methods rfmeta no-meta no-depth --seeds 0 1 2 \
        --targets cctv phone [--out ablation.json] [key=value ...]

For every target domain (the other domains of the collection are the sources),
method and seed: train on the sources, evaluate on the target, and print one
Markdown table of mean and standard deviation over the seeds: source-validation
AUC, target frame AUC, HTER at the source-validation threshold and target EER.
Extra ``key=value`` overrides apply to every run (default config:
``configs/fas-digits.yaml``). Per-run numbers go to ``--out`` as JSON;
``--load FILE ...`` prints the table of saved runs (filtered by ``--targets``,
``--methods`` and ``--seeds``) without training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from osad.fas.config import make_fas_config
from osad.fas.data import fas_collection, load_fas
from osad.fas.evaluate import evaluate_fas
from osad.fas.trainer import train_meta

COLUMNS = {
    "val_auc": "source-val AUC",
    "auc": "target AUC",
    "hter": "HTER @ source-val threshold",
    "eer": "target EER",
}


def run_one(config, data) -> dict[str, float]:
    start = time.perf_counter()
    model = train_meta(config, data, progress=False).model
    result = evaluate_fas(model, data, config)
    return {
        "val_auc": result.val_auc,
        "auc": result.frame.auc,
        "hter": result.frame.hter_at_val_threshold,
        "eer": result.frame.target_eer,
        "video_auc": result.video.auc,
        "seconds": time.perf_counter() - start,
    }


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["rfmeta", "no-meta", "no-depth"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--targets", nargs="+", default=["cctv"])
    parser.add_argument("--config", default="configs/fas-digits.yaml")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", help="write every run's numbers to this JSON file")
    parser.add_argument(
        "--load", nargs="+", help="print the table of runs saved with --out instead of training"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    runs = [r for path in args.load or [] for r in json.loads(Path(path).read_text())]
    for target in [] if args.load else args.targets:
        base = make_fas_config(args.config, args.overrides)
        sources = [d for d in fas_collection(base.data.name).domains if d != target]
        protocol = [f"data.target={target}", f"data.sources=[{', '.join(sources)}]"]
        data = None
        for method in args.methods:
            for seed in args.seeds:
                overrides = [*args.overrides, *protocol, f"method={method}", f"seed={seed}"]
                config = make_fas_config(args.config, overrides)
                data = data or load_fas(config.data, config.depth_size)
                numbers = run_one(config, data)
                runs.append({"target": target, "method": method, "seed": seed, **numbers})
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
                if args.out:
                    Path(args.out).write_text(json.dumps(runs, indent=1) + "\n")

    print("| target | method | " + " | ".join(COLUMNS.values()) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    groups = [([t], t) for t in args.targets]
    if len(args.targets) > 1:
        groups.append((args.targets, "all"))
    for targets, label in groups:
        for method in args.methods:
            chosen = [
                r
                for r in runs
                if r["target"] in targets and r["method"] == method and r["seed"] in args.seeds
            ]
            if not chosen:
                continue
            cells = [_mean_std([r[key] for r in chosen]) for key in COLUMNS]
            print(f"| {label} | {method} | " + " | ".join(cells) + " |")
    print(f"\nmean ± standard deviation over seeds {args.seeds} (all: over targets and seeds)")
    _print_paired(runs, args.methods, args.targets, args.seeds)
    return 0


def _print_paired(runs: list[dict], methods: list[str], targets: list[str], seeds: list[int]):
    """Each method against the first one on the same target and seed: the mean target-AUC
    and target-EER differences and how often the first method's AUC is higher."""
    keyed = {(r["target"], r["method"], r["seed"]): r for r in runs}
    pairs = [(t, s) for t in targets for s in seeds if (t, methods[0], s) in keyed]
    print(f"\n| {methods[0]} minus | target AUC | target EER | {methods[0]} AUC higher |")
    print("|---|---|---|---|")
    for method in methods[1:]:
        both = [
            (keyed[(t, methods[0], s)], keyed[(t, method, s)])
            for t, s in pairs
            if (t, method, s) in keyed
        ]
        if not both:
            continue
        auc = _mean_std([a["auc"] - b["auc"] for a, b in both])
        rate = _mean_std([a["eer"] - b["eer"] for a, b in both])
        wins = sum(a["auc"] > b["auc"] for a, b in both)
        print(f"| {method} | {auc} | {rate} | {wins} of {len(both)} |")


if __name__ == "__main__":
    sys.exit(main())
