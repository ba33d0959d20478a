"""Does the inner step of anti-spoofing meta-learning change the outer gradient?

For the meta-learning method of an anti-spoofing preset (``rfmeta`` in
configs/fas-digits.yaml), at several training stages (the preset's model after
N iterations of ordinary training, N = 0 being the initialisation) and inner
step sizes alpha, computes the outer gradient g(alpha) of
:func:`osad.fas.trainer.meta_step`'s loss with respect to every trainable
parameter (F, D and M), on the same batches and meta-train/meta-test split as
the reference alpha = 0 (no adaptation), and prints the relative change
||g(alpha) - g(0)|| / ||g(0)|| and the cosine of g(alpha) and g(0), averaged
over several draws of batches and splits (mean, standard deviation, range).
Issue 19 reports a change of about 0.15% at the start of training and 0.006%
after 400 iterations at the authors' alpha = 1e-3.

    python benchmarks/fas_inner_step.py
    python benchmarks/fas_inner_step.py --stages 0 100 400 --draws 8
    python benchmarks/fas_inner_step.py --config configs/fas-digits.yaml method=rfmeta-aggregated

The training losses are means over a domain batch of 2 x train.batch_size
frames (real and attack). The paper's equations sum them over the batch: the
summed inner loss is B = 2 x train.batch_size times the mean, so its inner step
at alpha is the mean-reduced step at B x alpha; summing the outer losses too
only scales the whole gradient by B, which changes neither the relative change
nor the cosine. The "sum" rows are therefore meta_step at B x alpha. Beside the
change, its first-order part alpha ||dg/dalpha|| / ||g(0)||: dg/dalpha at 0
(exact, by autograd through a 0-d tensor inner step) is the gradient of the
meta-learning term, -w_test sum_i grad L_cls_i . grad L_cls_test.

Gradients are computed in float64 (a float64 copy of the trained float32
model), so the small differences are not rounding. Training is the trainer's
own (:func:`osad.fas.trainer.train_meta`, seeded by the preset's ``seed``); the
draws are seeded by ``--seed`` and are the same at every stage.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from common import describe_machine

from osad.fas.config import FasConfig
from osad.fas.data import FasData
from osad.fas.methods import META_METHODS
from osad.fas.model import FasNet
from osad.fas.task import FasTask
from osad.fas.trainer import (
    BalancedSampler,
    DomainBatch,
    draw_split,
    fas_model_spec,
    meta_step,
    train_meta,
)
from osad.models import create_model
from osad.runtime import seed_everything

ALPHAS = (1e-3, 1e-2, 1e-1, 0.5, 1.0)


def model_at(config: FasConfig, data: FasData, iterations: int) -> FasNet:
    """The preset's network after ``iterations`` training iterations (0: as initialised,
    exactly as :func:`train_meta` initialises it)."""
    if iterations == 0:
        seed_everything(config.seed)
        name, kwargs = fas_model_spec(config)
        return create_model(name, **kwargs)
    train = replace(config.train, iterations=iterations, eval_every=iterations)
    return train_meta(replace(config, train=train), data, progress=False).model


def outer_gradient(
    model: FasNet,
    batches: list[DomainBatch],
    split: tuple[list[int], int],
    config: FasConfig,
    inner_lr: float | torch.Tensor,
    create_graph: bool = False,
) -> torch.Tensor:
    """The gradient of meta_step's loss with respect to every trainable parameter, as one
    flat vector (``inner_lr`` may be a 0-d tensor to differentiate through)."""
    params = [p for p in model.parameters() if p.requires_grad]
    t = config.train
    method = META_METHODS[config.method]
    out = meta_step(model, batches, split, method, inner_lr, t.depth_weight, t.meta_test_weight)
    grads = torch.autograd.grad(out.loss, params, allow_unused=True, create_graph=create_graph)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).flatten()
            for g, p in zip(grads, params, strict=True)
        ]
    )


def alpha_derivative(
    model: FasNet, batches: list[DomainBatch], split: tuple[list[int], int], config: FasConfig
) -> torch.Tensor:
    """dg/dalpha at alpha = 0, exact by autograd (third order): the smooth, first-order
    part of the change, ``g(alpha) = g(0) + alpha dg/dalpha + O(alpha^2)`` within the
    region where no ReLU or max-pooling choice flips."""
    alpha = torch.zeros((), dtype=torch.float64, requires_grad=True)
    g = outer_gradient(model, batches, split, config, alpha, create_graph=True)
    probe = torch.zeros_like(g, requires_grad=True)
    (directional,) = torch.autograd.grad(g, alpha, grad_outputs=probe, create_graph=True)
    (derivative,) = torch.autograd.grad(directional, probe)
    return derivative


def summary(values: list[float], scale: float, digits: int, spread: bool = False) -> str:
    """``mean ± standard deviation`` of ``scale * values``, with their range if ``spread``."""
    values = [v * scale for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    text = f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"
    return text + (f" ({min(values):.{digits}f} to {max(values):.{digits}f})" if spread else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/fas-digits.yaml")
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 100, 400])
    parser.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS))
    parser.add_argument("--draws", type=int, default=8, help="batches and splits per stage")
    parser.add_argument("--seed", type=int, default=0, help="seeds the draws")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the preset")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = FasTask()
    config = task.make_config(args.config, args.overrides)
    if config.device != "cpu":
        config = task.make_config(args.config, [*args.overrides, "device=cpu"])
    method = META_METHODS[config.method]
    if not method.meta:
        parser.error(f"method={config.method} has no inner step; use a meta-learning method")
    data = task.load_data(config)
    frames = 2 * config.train.batch_size
    print(
        f"{describe_machine(torch.device('cpu'))}; load average "
        f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )
    print(
        f"{args.config} {' '.join(args.overrides)}: method {config.method}, preset seed "
        f"{config.seed}, sources {', '.join(config.data.sources)}, {frames} frames per domain "
        f"batch; {args.draws} draws (seed {args.seed}); float64 gradients"
    )
    print()
    print(
        "| iteration | inner loss | alpha | inner step | ‖g(a) − g(0)‖ / ‖g(0)‖ (%) "
        "| first-order part a‖dg/da‖ / ‖g(0)‖ (%) | cosine(g(a), g(0)) |"
    )
    print("|---|---|---|---|---|---|---|")
    started = time.perf_counter()
    for stage in args.stages:
        model = copy.deepcopy(model_at(config, data, stage)).double().train()
        batch_gen = torch.Generator().manual_seed(args.seed)
        split_gen = torch.Generator().manual_seed(args.seed + 1)
        samplers = [
            BalancedSampler(s.train, config.train.batch_size, batch_gen) for s in data.sources
        ]
        steps = {
            (reduction, alpha): alpha * (frames if reduction == "sum" else 1)
            for reduction in ("mean", "sum")
            for alpha in args.alphas
        }
        change: dict[tuple[str, float], list[float]] = {key: [] for key in steps}
        cosine: dict[tuple[str, float], list[float]] = {key: [] for key in steps}
        slope: list[float] = []  # ||dg/dalpha|| / ||g(0)|| per draw
        for _ in range(args.draws):
            batches = [
                DomainBatch(b.images.double(), b.labels.double(), b.depth.double())
                for b in (sampler.draw() for sampler in samplers)
            ]
            split = draw_split(len(batches), split_gen)
            reference = outer_gradient(model, batches, split, config, 0.0)
            derivative = alpha_derivative(model, batches, split, config)
            slope.append((derivative.norm() / reference.norm()).item())
            for key, step in steps.items():
                g = outer_gradient(model, batches, split, config, step)
                change[key].append(((g - reference).norm() / reference.norm()).item())
                cosine[key].append(F.cosine_similarity(g, reference, dim=0).item())
        for (reduction, alpha), step in steps.items():
            print(
                f"| {stage} | {reduction} | {alpha:g} | {step:g} "
                f"| {summary(change[reduction, alpha], 100, 4, spread=True)} "
                f"| {summary([step * v for v in slope], 100, 4)} "
                f"| {summary(cosine[reduction, alpha], 1, 6)} |",
                flush=True,
            )
    print(f"\n{time.perf_counter() - started:.0f} s (training included)")


if __name__ == "__main__":
    main()
