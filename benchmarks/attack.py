"""PGD-10 throughput: osad's attack engine against torchattacks' PGD on one model.

torchattacks (https://github.com/Harry24k/adversarial-attacks-pytorch) is an
optional benchmark extra; its package pins a torchvision that breaks here, so
install it without dependencies (its PGD imports no torchvision):

    pip install --no-deps torchattacks
    python benchmarks/attack.py                       # digits default model, batch 256
    python benchmarks/attack.py --model paper --batch 16

Both attacks run Linf PGD-10 (eps 8/255, step 2/255, random start) on the same
model in eval mode. osad is timed twice: ``select="last"`` returns the last
iterate like torchattacks; the default ``select="best"`` keeps each sample's
strongest iterate, which costs one more forward pass. Prints the median
seconds per batch and images/s of each, and last the ratio of osad's default
PGD throughput to torchattacks'.
"""

from __future__ import annotations

import argparse

import torch
from common import describe_machine, interleaved_medians
from train_step import paper_model

from osad.attacks import PGD
from osad.config import make_config
from osad.methods import model_spec
from osad.models import OpenSetNet, create_model

EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 10


def digits_model() -> OpenSetNet:
    """The architecture `osad run` trains by default (width 16, 8x8 gray images)."""
    name, kwargs = model_spec(make_config(), 6, 1, 8, (0.3,), (0.4,))
    return create_model(name, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("digits", "paper"), default="digits")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    try:
        import torchattacks
    except ImportError as exc:
        raise SystemExit(
            f"torchattacks is needed for this benchmark ({exc}): pip install --no-deps torchattacks"
        ) from None
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = (paper_model() if args.model == "paper" else digits_model()).to(device).eval()
    c, s = model.in_channels, model.image_size
    x = torch.rand(args.batch, c, s, s, device=device)
    y = torch.randint(0, 6, (args.batch,), device=device)
    print(f"device: {describe_machine(device)}; {args.model} model, batch {args.batch}, PGD-10")

    reference = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)
    last = PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, select="last")
    best = PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS)
    for name, attack in (("torchattacks", reference), ("osad", best)):
        gap = (attack(x, y) - x).abs().max().item()
        assert gap <= EPS + 1e-6, f"{name} left the eps-ball: {gap}"
    medians = interleaved_medians(
        {
            "torchattacks": lambda: reference(x, y),
            "osad-last": lambda: last(x, y),
            "osad": lambda: best(x, y),
        },
        args.repeats,
    )
    for name, seconds in medians.items():
        print(f"{name:>12}: {seconds:.3f} s/batch, {args.batch / seconds:.1f} images/s")
    print(f"ratio {medians['torchattacks'] / medians['osad']:.2f}x")


if __name__ == "__main__":
    main()
