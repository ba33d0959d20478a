"""Fast adversarial training on the digits default: FGSM-RS OSDN against PGD-5 OSDN.

FGSM with a random start and step 1.25 eps (Wong et al., "Fast is better than
free", ICLR 2020, https://arxiv.org/abs/2001.03994) replaces the five PGD steps
of the training attack by one (`osad run train.attack.name=fgsm-rs`). Both
models are then evaluated under the same protocol (PGD-10, eps 32/255).

    python benchmarks/fast_at.py                      # 1 training per method
    python benchmarks/fast_at.py --repeats 3 --fgsm-epochs 20

Prints the median training time of each (training is seeded: accuracies are the
same in every repeat, only times vary), its clean and PGD accuracy, and last the
ratio PGD-5 time / FGSM-RS time.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import describe_machine

from osad.config import make_config
from osad.data import load_openset
from osad.eval import evaluate
from osad.runtime import resolve_device
from osad.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--fgsm-epochs", type=int, default=20, help="PGD-5 trains 20")
    args = parser.parse_args()
    runs = {
        "pgd-5": [],
        "fgsm-rs": ["train.attack.name=fgsm-rs", f"train.epochs={args.fgsm_epochs}"],
    }
    configs = {name: make_config(overrides=["eval.scores=[msp]", *o]) for name, o in runs.items()}
    print(f"device: {describe_machine(resolve_device('auto'))}; digits default, OSDN")
    data = load_openset(configs["pgd-5"].data)
    times: dict[str, list[float]] = {name: [] for name in configs}
    models = {}
    for _ in range(args.repeats):
        for name, config in configs.items():
            start = time.perf_counter()
            models[name] = train(config, data, progress=False).model
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, config in configs.items():
        accuracy = {
            c.name: c.closed_set_accuracy
            for c in evaluate(models[name], data, config, progress=False).conditions
        }
        attack = config.train.attack.resolved()
        print(
            f"{name:>8}: train {medians[name]:.1f} s ({config.train.epochs} epochs, "
            f"step {attack.params['alpha']:g}/255; runs "
            + " ".join(f"{t:.1f}" for t in times[name])
            + f"), clean acc {accuracy['clean']:.4f}, PGD-10 acc {accuracy['pgd']:.4f}"
        )
    print(f"ratio {medians['pgd-5'] / medians['fgsm-rs']:.2f}x")


if __name__ == "__main__":
    main()
