"""One OSDN PGD-5 training step: osad against a faithful naive implementation.

The model is the paper's: CIFAR ResNet-18 (width 64), embedded-Gaussian
non-local blocks at all five places, latent 512, decoder and rotation head,
32x32 RGB images. The naive step is the algorithm as the authors' code runs it
(Shao et al., ECCV 2020, https://arxiv.org/abs/2009.00814): two separate PGD
attacks (one against the classifier, one against the rotation head), the
encoder run separately on each attacked batch, rotation one image at a time in
a Python loop, and non-local attention as an explicit matmul + softmax. Both
start from identical weights. Before timing, the script checks (in float64 on
the CPU, 4 images) that the naive step and osad's step with
``fused_branches=False`` (the same BatchNorm batches) give the same loss and
parameter gradients, and reports how far the fused
default is from them (the BatchNorm-statistics difference of
src/osad/train/objectives.py).

    python benchmarks/train_step.py                 # batch 16, 3 rounds
    python benchmarks/train_step.py --batch 32 --channels-last --compile
    python benchmarks/train_step.py --device cuda --bf16 --compile
    python benchmarks/train_step.py --profile       # where osad's step spends its time
    python benchmarks/train_step.py --sdpa math     # osad without the fused attention kernels

Prints median seconds per step, images/s, achieved GFLOP/s (FLOPs counted with
torch.utils.flop_counter on the naive step, the algorithm's own count) and its
fraction of a matrix-product peak measured in the same run, for the naive step,
osad with ``fused_branches=False`` and osad's default (fused), and last the
ratio naive / osad default.
"""

from __future__ import annotations

import argparse
import contextlib
import copy

import torch
import torch.nn.functional as F
from common import describe_machine, interleaved_medians, matmul_peak_gflops
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from osad.config import AttackConfig, PerfConfig, make_config
from osad.methods import METHODS
from osad.models import OpenSetNet
from osad.models.denoise import EmbeddedGaussian
from osad.perf import autocast, prepare_model
from osad.train import TrainObjective

EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 5

# OSDN's loss terms at the default weights (CE, rotation CE, reconstruction MSE).
OSDN_TERMS = METHODS["osdn"].network().terms_for(make_config(overrides=["method=osdn"]).train)


class ExplicitGaussian(nn.Module):
    """Embedded-Gaussian non-local op as an explicit (N x N) matmul + softmax."""

    def __init__(self, op: EmbeddedGaussian) -> None:
        super().__init__()
        self.theta, self.phi, self.g = op.theta, op.phi, op.g

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        theta, phi, g = (m(x).flatten(2) for m in (self.theta, self.phi, self.g))
        attention = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # (B, N, N)
        return (g @ attention.transpose(1, 2)).view(b, -1, h, w)


def paper_model() -> OpenSetNet:
    return OpenSetNet(
        num_classes=6,
        in_channels=3,
        image_size=32,
        mean=[0.49, 0.48, 0.45],
        std=[0.25, 0.24, 0.26],
        arch="resnet18",
        width=64,
        latent_dim=512,
        denoise="gaussian",
        denoise_places=[0, 1, 2, 3, 4],
        decoder=True,
        rotation_head=True,
    )


def naive_copy(model: OpenSetNet) -> OpenSetNet:
    naive = copy.deepcopy(model)
    for block in naive.encoder.denoise.values():
        block.op = ExplicitGaussian(block.op)
    return naive


def naive_pgd(forward, x: Tensor, labels: Tensor, start: Tensor) -> Tensor:
    """PGD-5, Linf, last iterate, in [0, 1] pixel space."""
    delta = start.clone()
    for _ in range(STEPS):
        delta.requires_grad_(True)
        loss = F.cross_entropy(forward(x + delta), labels)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + ALPHA * grad.sign()).clamp(-EPS, EPS)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def naive_step(model: OpenSetNet, x: Tensor, y: Tensor, random_start: bool) -> Tensor:
    """The OSDN step as the authors' code runs it; returns the loss after backward."""
    r = torch.randint(0, 4, (x.shape[0],), device=x.device)
    x_rot = torch.stack([torch.rot90(x[i], int(r[i]), dims=(1, 2)) for i in range(x.shape[0])])
    starts = [
        (torch.rand_like(v) * 2 - 1) * EPS if random_start else torch.zeros_like(v)
        for v in (x, x_rot)
    ]
    model.eval()
    x_adv = naive_pgd(model, x, y, (x + starts[0]).clamp(0, 1) - x)
    x_rot_adv = naive_pgd(
        lambda v: model.rotation_head(model.encode(v)),
        x_rot,
        r,
        (x_rot + starts[1]).clamp(0, 1) - x_rot,
    )
    model.train()
    z, z_rot = model.encode(x_adv), model.encode(x_rot_adv)
    loss = (
        F.cross_entropy(model.classifier(z), y)
        + F.cross_entropy(model.rotation_head(z_rot), r)
        + F.mse_loss(model.decoder(z), x)
    )
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach()


def osad_step(model: OpenSetNet, objective: TrainObjective, x: Tensor, y: Tensor) -> Tensor:
    model.train()
    out = objective(model, x, y)
    model.zero_grad(set_to_none=True)
    out.loss.backward()
    return out.loss.detach()


def gradient_gap(a: nn.Module, b: nn.Module) -> float:
    """Relative L2 difference of the two models' parameter gradients, all parameters
    together (per-parameter ratios are noise where a gradient is nearly zero, as for
    the embeddings behind the zero-initialised BatchNorm of each denoising block)."""
    ga = torch.cat([p.grad.flatten() for p in a.parameters() if p.grad is not None])
    gb = torch.cat([p.grad.flatten() for p in b.parameters() if p.grad is not None])
    return ((ga - gb).norm() / gb.norm()).item()


def check_same_results(model: OpenSetNet, x: Tensor, y: Tensor) -> None:
    """Naive vs osad (unfused and fused) from one state, zero start, one rotation draw."""
    attack = AttackConfig(
        eps=EPS * 255, params={"alpha": ALPHA * 255, "steps": STEPS, "random_start": False}
    )
    naive, unfused, fused = naive_copy(model), copy.deepcopy(model), copy.deepcopy(model)
    torch.manual_seed(1)
    naive_loss = naive_step(naive, x, y, random_start=False)
    results = {}
    for name, net, fuse in (("unfused", unfused, False), ("fused", fused, True)):
        torch.manual_seed(1)  # the same rotations as the naive step
        loss = osad_step(net, TrainObjective(attack, OSDN_TERMS, fused_branches=fuse), x, y)
        results[name] = (
            abs(loss - naive_loss).item() / naive_loss.item(),
            gradient_gap(net, naive),
        )
    for name, (loss_gap, grad_gap) in results.items():
        print(
            f"  osad {name} vs naive: loss rel diff {loss_gap:.2e}, "
            f"gradient rel diff {grad_gap:.2e}"
        )
    loss_gap, grad_gap = results["unfused"]
    if loss_gap > 1e-4 or grad_gap > 1e-3:
        raise SystemExit("osad (unfused) and the naive step disagree: not the same algorithm")
    print("  same loss and gradients: yes (unfused); fused differs by BatchNorm batch statistics")


def step_flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="CUDA only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sdpa",
        choices=("auto", "math"),
        default="auto",
        help="math: restrict osad's attention to SDPA's unfused math path (SDPA off)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="print torch.profiler's table of one osad step"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    model = paper_model().to(device)
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 6, (args.batch,), device=device)
    print(
        f"device: {describe_machine(device)}; batch {args.batch}, 32x32, PGD-5 (eps 8/255), "
        f"osad's SDPA: {args.sdpa}"
    )
    # The algorithm check runs in float64 on the CPU: on a GPU, TF32 convolutions and
    # cuDNN's algorithm choice change the last bits, and PGD's gradient sign turns
    # those into different attacked pixels, which says nothing about the algorithm.
    check_same_results(copy.deepcopy(model).cpu().double(), x[:4].cpu().double(), y[:4].cpu())

    perf = PerfConfig(channels_last=args.channels_last, bf16=args.bf16, compile=args.compile)
    attack = AttackConfig(eps=EPS * 255, params={"alpha": ALPHA * 255, "steps": STEPS})
    naive = naive_copy(model)
    osad = prepare_model(copy.deepcopy(model), perf, device)
    fused = TrainObjective(attack, OSDN_TERMS)
    unfused = TrainObjective(attack, OSDN_TERMS, fused_branches=False)

    def run_osad(objective: TrainObjective) -> Tensor:
        kernels = sdpa_kernel(SDPBackend.MATH) if args.sdpa == "math" else contextlib.nullcontext()
        with autocast(perf, device), kernels:
            return osad_step(osad, objective, x, y)

    if args.profile:
        from torch.profiler import profile

        run_osad(fused)
        with profile() as prof:
            run_osad(fused)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        return
    flops = step_flops(lambda: naive_step(copy.deepcopy(naive), x, y, random_start=True))
    peak = matmul_peak_gflops(device)
    medians = interleaved_medians(
        {
            "naive": lambda: naive_step(naive, x, y, random_start=True),
            "osad-unfused": lambda: run_osad(unfused),
            "osad": lambda: run_osad(fused),
        },
        args.repeats,
        # The equality check above already ran every path once; compilation needs more.
        warmup=2 if args.compile else 0,
    )
    print(f"FLOPs per step: {flops / 1e9:.1f} GFLOP; matmul peak {peak:.1f} GFLOP/s")
    for name, seconds in medians.items():
        achieved = flops / seconds / 1e9
        print(
            f"{name:>12}: {seconds:.3f} s/step, {args.batch / seconds:.2f} images/s, "
            f"{achieved:.1f} GFLOP/s ({achieved / peak:.0%} of matmul peak)"
        )
    print(f"ratio {medians['naive'] / medians['osad']:.2f}x")


if __name__ == "__main__":
    main()
