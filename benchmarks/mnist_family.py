"""Which model family trains better per CPU minute on mnist5k: the sweep's ResNet-18 at
width 8 or the small CNN of Madry et al. (ICLR 2018)?

    OMP_NUM_THREADS=1 python benchmarks/mnist_family.py                # pgd-at and osdn
    OMP_NUM_THREADS=1 python benchmarks/mnist_family.py --methods pgd-at
    OMP_NUM_THREADS=1 python benchmarks/mnist_family.py --budget-s 300
    python benchmarks/mnist_family.py --quick                          # smoke run, seconds

Every run is a run of configs/sweeps/mnist.yaml (split 0, Linf eps 76.5/255, training
PGD-5 with step eps/4 and a random start) with the family's model:

    resnet18-w8   the sweep's own: ResNet-18, width 8, latent 64, denoising at 2, 3, 4
    madry-cnn     model.arch=madry-cnn, width 32, latent 1024 (Madry et al.'s widths),
                  denoising at its places 1, 2

Equal CPU time: by default the ResNet trains the sweep's epochs and its training CPU
seconds (the validation after each epoch included) are the budget; ``--budget-s``
sets one instead, and the ResNet is fitted to it too. A family fitted to the budget
first trains one epoch to time it, then trains from scratch for round(budget /
seconds per epoch) epochs (at least 1). CPU seconds are the process's
(``time.process_time``, all its threads), so other jobs on the machine slow the wall
clock but not the count. Every method and family first trains once on a few images,
untimed, so that no timed run pays the process's first-call costs (a first training
took twice the CPU time per image of later ones).

Each trained model is tested on the split's 1000 test images (600 known, 400 unknown)
clean and under the sweep's PGD-10 (step eps/4, random start), with the MSP score:
clean accuracy, robust accuracy (correct clean and under PGD-10), and the open-set
AUROC of MSP, clean and with known and unknown images attacked.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import torch
from common import describe_machine

from osad.config import Config
from osad.data import OpenSetData, load_openset
from osad.eval.protocol import evaluate
from osad.sweep.spec import SweepMethod, load_sweep
from osad.train import train

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "configs" / "sweeps" / "mnist.yaml"
FAMILIES = {
    "resnet18-w8": (),  # the sweep's model
    "madry-cnn": (
        "model.arch=madry-cnn",
        "model.width=32",
        "model.latent_dim=1024",
        "model.denoise_places=[1,2]",
    ),
}
ANCHOR = "resnet18-w8"  # trains the sweep's epochs unless --budget-s is given
TEST_ATTACK = "pgd"  # the sweep's PGD-10, step eps/4
SCORE = "msp"
# --quick: training and test images kept, so that the whole run takes seconds.
QUICK_TRAIN, QUICK_TEST = 64, 96
WARM_UP = 32  # training images of the untimed first run of each method and family


def run_config(method: str, family: str, split: int, epochs: int | None) -> Config:
    """The sweep's configuration of ``method`` on ``split`` with ``family``'s model,
    tested under PGD-10 with MSP only."""
    sweep = load_sweep(SWEEP)
    overrides = [*sweep.method(method).overrides, *FAMILIES[family]]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    config = sweep.run_config(SweepMethod(method, overrides=tuple(overrides)), split)
    config.eval.attacks = {TEST_ATTACK: config.eval.attacks[TEST_ATTACK]}
    config.eval.scores = [SCORE]
    config.device = "cpu"
    return config


def subset(data: OpenSetData, train: int, test: int, seed: int = 0) -> OpenSetData:
    """``train`` training images, half as many validation and ``test`` test images,
    drawn at random with ``seed``."""
    generator = torch.Generator().manual_seed(seed)

    def drawn(n: int, *parts: torch.Tensor) -> list[torch.Tensor]:
        keep = torch.randperm(len(parts[0]), generator=generator)[:n]
        return [part[keep] for part in parts]

    train_images, train_labels = drawn(train, data.train_images, data.train_labels)
    val_images, val_labels = drawn(train // 2, data.val_images, data.val_labels)
    tests = drawn(test, data.test_images, data.test_labels, data.test_classes)
    return dataclasses.replace(
        data,
        train_images=train_images,
        train_labels=train_labels,
        val_images=val_images,
        val_labels=val_labels,
        test_images=tests[0],
        test_labels=tests[1],
        test_classes=tests[2],
    )


def trained(config: Config, data: OpenSetData) -> tuple[torch.nn.Module, float, float]:
    """(model, training CPU seconds, training wall seconds)."""
    cpu, wall = time.process_time(), time.perf_counter()
    model = train(config, data, progress=False).model
    return model, time.process_time() - cpu, time.perf_counter() - wall


def tested(model: torch.nn.Module, data: OpenSetData, config: Config) -> dict[str, float]:
    """Clean and robust accuracy on the known test images, MSP AUROC clean and under
    PGD-10; an image counts as robust only if it is classified right clean and
    attacked."""
    result = evaluate(model, data, config, progress=False)
    by_name = {c.name: c for c in result.conditions}
    clean, attacked = by_name["clean"], by_name[TEST_ATTACK]
    known = data.test_known
    labels = data.test_labels[known]
    right = [c.headline.logits[SCORE][known].argmax(1) == labels for c in (clean, attacked)]
    return {
        "clean_acc": right[0].float().mean().item(),
        "robust_acc": (right[0] & right[1]).float().mean().item(),
        "auroc_clean": clean.auroc[SCORE],
        "auroc_pgd10": attacked.auroc[SCORE],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["pgd-at", "osdn"])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--split", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="training CPU seconds of every family (default: the ResNet's sweep epochs)",
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TRAIN} training images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_openset(run_config(args.methods[0], ANCHOR, args.split, None).data)
    if args.quick:
        data = subset(data, QUICK_TRAIN, QUICK_TEST)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {describe_machine(torch.device('cpu'))}; load average {load}")
    attack = run_config(args.methods[0], ANCHOR, args.split, None).train.attack.resolved()
    print(
        f"mnist5k split {args.split}: {len(data.train_labels)} training, "
        f"{len(data.val_labels)} validation, {len(data.test_labels)} test images "
        f"({int(data.test_known.sum())} known); training {attack.name}-"
        f"{attack.params['steps']} eps {attack.eps:g}/255 step {attack.params['alpha']:g}/255"
    )
    few = subset(data, WARM_UP, 0)
    for method in args.methods:  # warm-up, untimed
        for family in args.families:
            trained(run_config(method, family, args.split, 1), few)
    header = "method  family       epochs  cpu_s  wall_s  clean_acc  robust_acc  auroc  auroc_pgd10"
    print(header)
    for method in args.methods:
        budget = args.budget_s
        for family in sorted(args.families, key=lambda f: f != ANCHOR):  # the anchor first
            if budget is None:  # the anchor: the sweep's epochs set the budget
                epochs = 1 if args.quick else None
            else:
                _, epoch_cpu, _ = trained(run_config(method, family, args.split, 1), data)
                epochs = max(1, round(budget / epoch_cpu))
            config = run_config(method, family, args.split, epochs)
            model, cpu_s, wall_s = trained(config, data)
            if budget is None:
                budget = cpu_s
            m = tested(model, data, config)
            print(
                f"{method:7} {family:12} {config.train.epochs:6d} {cpu_s:6.1f} {wall_s:7.1f} "
                f"{m['clean_acc']:10.3f} {m['robust_acc']:11.3f} {m['auroc_clean']:6.3f} "
                f"{m['auroc_pgd10']:12.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
