"""Cost and strength of the ensemble against the adaptive attack, on one trained run.

    OMP_NUM_THREADS=1 osad train --no-progress --out /tmp/osdn       # the default model
    OMP_NUM_THREADS=1 python benchmarks/ensemble.py /tmp/osdn adaptive fast standard

Evaluates the run with each named evaluation in turn, in this process: ``adaptive``
is the built-in adaptive attack alone (``osad test RUN --attacks adaptive --version
none``), ``default`` the run's own evaluation (``osad test RUN``: clean, the paper's
attacks, the ensemble of ``eval.version``), a version name that ensemble alone (no
other attack); each with every score (or those of ``--scores``) and without figures
(``default`` with ``--out`` also writes its figures, and times them).
Prints per evaluation the wall and CPU seconds (``time.process_time``: the
figure to trust on a shared machine, where the wall time depends on the other
processes), the ratio of each to the adaptive attack's measured in the same run
(the first evaluation named), the closed-set accuracy, AUROC and FPR at 95% TPR
(unknown positive) of every score (both sides attacked), and the ensemble's
decisive members; first the CPU, thread count and load average.

The profile below each evaluation splits its CPU seconds by attack pass (for the
ensemble: per member, and per score for the members that run once per score), with
the images sent through the model: ``grad`` forward passes that also ran a backward
pass (APGD's steps), ``no-grad`` forward passes (Square's queries, the final
outputs). ``scoring`` is the scores of the attacked outputs; ``rest`` what is left
(clean outputs, fits, metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections import defaultdict
from pathlib import Path

import torch
from common import describe_machine

import osad.eval.figures as figures
import osad.eval.protocol as protocol
from osad.data import load_openset
from osad.eval import evaluate, write_results
from osad.eval.ensemble import VERSIONS
from osad.eval.figures import write_figures
from osad.eval.options import select_evaluation
from osad.rundir import RunDir
from osad.tasks.openset import load_run_model
from osad.workflow import load_run_config


class Profile:
    """CPU seconds and images forwarded per attack pass, by wrapping the protocol's
    ``outputs_under_attack`` and ``score_outputs`` and the model's forward."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.forwards: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.current = "rest"
        forward_name = "forward_features" if hasattr(model, "forward_features") else "forward"
        forward = getattr(model, forward_name)

        def counted(x, *args, **kwargs):
            self.forwards[self.current][0 if torch.is_grad_enabled() else 1] += len(x)
            return forward(x, *args, **kwargs)

        setattr(model, forward_name, counted)
        self.timed(protocol, "outputs_under_attack", lambda kw: self.pass_name(kw["desc"]))
        self.timed(protocol, "score_outputs", lambda kw: "scoring")
        self.timed(figures, "outputs_under_attack", lambda kw: kw.get("desc", "figures"))
        self.timed(figures, "score_outputs", lambda kw: "scoring")

    @staticmethod
    def pass_name(desc: str) -> str:
        # "ensemble apgd-t target 3" -> "apgd-t"; "ensemble square-score on msp" kept
        return re.sub(r"^ensemble | target \d+$", "", desc)

    def timed(self, module, name: str, label) -> None:
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            outer, self.current = self.current, label(kwargs)
            start = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[self.current] += time.process_time() - start
                if outer != "rest":  # nested: not counted twice
                    self.seconds[outer] -= time.process_time() - start
                self.current = outer

        setattr(module, name, wrapper)

    def reset(self) -> None:
        self.seconds.clear()
        self.forwards.clear()

    def report(self, total: float) -> None:
        self.seconds["rest"] = total - sum(v for k, v in self.seconds.items() if k != "rest")
        print(f"  {'pass':<28} {'CPU s':>7} {'share':>6} {'grad imgs':>10} {'no-grad imgs':>13}")
        for name, seconds in sorted(self.seconds.items(), key=lambda kv: -kv[1]):
            grad, plain = self.forwards.get(name, (0, 0))
            print(f"  {name:<28} {seconds:7.1f} {seconds / total:6.1%} {grad:10d} {plain:13d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a trained open-set run (osad train --out RUN_DIR)")
    parser.add_argument(
        "evaluations",
        nargs="*",
        choices=["adaptive", "default", *VERSIONS],
        default=["adaptive", "fast", "standard"],
    )
    parser.add_argument("--scores", help="comma list of scores (default: the run's, all)")
    parser.add_argument(
        "--out", help="write each evaluation's metrics.json and results.md into OUT/NAME"
    )
    args = parser.parse_args()
    run = RunDir.open(args.run_dir)
    config = load_run_config(run)
    config.eval.figures = args.out is not None  # figures only for ``default`` with --out
    data = load_openset(config.data)
    model = load_run_model(run, config, data, torch.device("cpu"))
    profile = Profile(model)
    print(f"{describe_machine(torch.device('cpu'))}; load average {os.getloadavg()[0]:.1f}")
    scores = args.scores.split(",") if args.scores else None
    costs = {}
    for name in args.evaluations:
        if name == "adaptive":
            chosen = select_evaluation(config, ["adaptive"], scores, version="none")
        elif name == "default":
            chosen = select_evaluation(config, None, scores)
        else:
            chosen = select_evaluation(config, [], scores, version=name)
        profile.reset()
        wall, cpu = time.perf_counter(), time.process_time()
        result = evaluate(model, data, chosen, progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        costs[name] = (wall, cpu)
        condition = result.conditions[-1]
        line = f"\n{name}: {wall:.0f} s wall, {cpu:.0f} s CPU"
        first = args.evaluations[0]
        if name != first:
            base_wall, base_cpu = costs[first]
            line += f" ({wall / base_wall:.2f}x and {cpu / base_cpu:.2f}x {first})"
        print(line + f"; load average {os.getloadavg()[0]:.1f}", flush=True)
        print(f"  closed-set accuracy {condition.closed_set_accuracy:.4f}")
        metrics = condition.headline.metrics
        for metric in ("auroc", "fpr95_unknown_positive"):
            print(f"  {metric} " + ", ".join(f"{s} {m[metric]:.4f}" for s, m in metrics.items()))
        if condition.ensemble is not None:
            print(f"  decisive {json.dumps(condition.ensemble['decisive'])}")
            print(f"  attacked {json.dumps(condition.ensemble['attacked'])}")
            print(f"  non-finite {json.dumps(condition.ensemble['non_finite'])}")
        profile.report(cpu)
        if args.out:
            write_results(result, chosen, Path(args.out) / name, name)
            if name == "default" and chosen.eval.figures:
                profile.reset()
                cpu = time.process_time()
                write_figures(result, model, data, chosen, Path(args.out) / name / "figures")
                cpu = time.process_time() - cpu
                print(f"  figures: {cpu:.0f} s CPU")
                profile.report(cpu)


if __name__ == "__main__":
    main()
