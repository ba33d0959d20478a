"""OpenMax scoring of 100k logit vectors: osad's vectorised scorer against a
per-sample Python loop over the same fitted model (the authors' code scores one
image at a time).

    python benchmarks/openmax.py
    python benchmarks/openmax.py --n 100000 --classes 6 --repeats 3

Checks that both give the same scores, then prints the median seconds of each
and last the ratio loop / vectorised.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from common import describe_machine, interleaved_medians

from osad.openset import OpenMax


def loop_scores(scorer: OpenMax, logits: np.ndarray) -> np.ndarray:
    """The paper's OpenMax score, one sample and one class at a time."""
    weibull = scorer.weibull
    mav = scorer.mav.numpy()  # float64, as the loop's Python floats
    out = np.empty(len(logits))
    for i, row in enumerate(logits):
        total = 0.0
        for c in range(len(mav)):
            distance = float(np.sqrt(((row - mav[c]) ** 2).sum()))
            translated = distance + weibull.translate - weibull.small_score[c]
            cdf = 1.0 - math.exp(-((translated / weibull.scale[c]) ** weibull.shape[c]))
            total += math.exp(row[c] * (1.0 - cdf))
        out[i] = -math.log(total)
    return out


def synthetic_logits(n: int, classes: int, generator: torch.Generator) -> torch.Tensor:
    labels = torch.randint(0, classes, (n,), generator=generator)
    logits = torch.randn(n, classes, generator=generator)  # fp32, as models give them
    logits[torch.arange(n), labels] += 6.0
    return logits, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    train_logits, train_labels = synthetic_logits(6000, args.classes, generator)
    scorer = OpenMax(tail_size=20).fit(train_logits, None, train_labels)
    test_logits, _ = synthetic_logits(args.n, args.classes, generator)
    test_numpy = test_logits.numpy()
    print(f"device: {describe_machine(torch.device('cpu'))}; {args.n} x {args.classes} logits")

    vectorised = scorer.score(test_logits).numpy()
    looped = loop_scores(scorer, test_numpy[:2000])
    gap = np.abs(vectorised[:2000] - looped).max()
    assert gap < 1e-4, f"vectorised and per-sample scores differ by {gap}"
    print(f"  same scores: max abs difference {gap:.1e} on the first 2000")
    medians = interleaved_medians(
        {
            "loop": lambda: loop_scores(scorer, test_numpy),
            "vectorised": lambda: scorer.score(test_logits),
        },
        args.repeats,
        warmup=0,
    )
    for name, seconds in medians.items():
        print(f"{name:>10}: {seconds:.4f} s, {args.n / seconds:.0f} vectors/s")
    print(f"ratio {medians['loop'] / medians['vectorised']:.0f}x")


if __name__ == "__main__":
    main()
