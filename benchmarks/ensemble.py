"""Cost and strength of the ensemble against the adaptive attack, on one trained run.

    OMP_NUM_THREADS=1 osad train --no-progress --out /tmp/osdn       # the default model
    OMP_NUM_THREADS=1 python benchmarks/ensemble.py /tmp/osdn adaptive fast standard

Evaluates the run with each named evaluation in turn, in this process: ``adaptive``
is the built-in adaptive attack alone (``osad test RUN --attacks adaptive --version
none``), a version name that ensemble alone (no other attack); each with every
score (or those of ``--scores``) and without figures.
Prints per evaluation the wall and CPU seconds (``time.process_time``: the
figure to trust on a shared machine, where the wall time depends on the other
processes), the ratio of each to the adaptive attack's when that ran first, the
closed-set accuracy
and the AUROC of every score (both sides attacked), and the ensemble's decisive
members; first the CPU, thread count and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from common import describe_machine

from osad.data import load_openset
from osad.eval import evaluate
from osad.eval.ensemble import VERSIONS
from osad.eval.options import select_evaluation
from osad.rundir import RunDir
from osad.tasks.openset import load_run_model
from osad.workflow import load_run_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a trained open-set run (osad train --out RUN_DIR)")
    parser.add_argument(
        "evaluations",
        nargs="*",
        choices=["adaptive", *VERSIONS],
        default=["adaptive", "fast", "standard"],
    )
    parser.add_argument("--scores", help="comma list of scores (default: the run's, all)")
    args = parser.parse_args()
    run = RunDir.open(args.run_dir)
    config = load_run_config(run)
    config.eval.figures = False
    data = load_openset(config.data)
    model = load_run_model(run, config, data, torch.device("cpu"))
    print(f"{describe_machine(torch.device('cpu'))}; load average {os.getloadavg()[0]:.1f}")
    scores = args.scores.split(",") if args.scores else None
    costs = {}
    for name in args.evaluations:
        if name == "adaptive":
            chosen = select_evaluation(config, ["adaptive"], scores, version="none")
        else:
            chosen = select_evaluation(config, [], scores, version=name)
        wall, cpu = time.perf_counter(), time.process_time()
        result = evaluate(model, data, chosen, progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        costs[name] = (wall, cpu)
        condition = result.conditions[-1]
        line = f"\n{name}: {wall:.0f} s wall, {cpu:.0f} s CPU"
        if "adaptive" in costs:
            base_wall, base_cpu = costs["adaptive"]
            line += f" ({wall / base_wall:.2f}x and {cpu / base_cpu:.2f}x adaptive)"
        print(line, flush=True)
        print(f"  closed-set accuracy {condition.closed_set_accuracy:.4f}")
        print("  AUROC " + ", ".join(f"{s} {a:.4f}" for s, a in condition.auroc.items()))
        if condition.ensemble is not None:
            print(f"  decisive {json.dumps(condition.ensemble['decisive'])}")
            print(f"  attacked {json.dumps(condition.ensemble['attacked'])}")
            print(f"  non-finite {json.dumps(condition.ensemble['non_finite'])}")


if __name__ == "__main__":
    main()
