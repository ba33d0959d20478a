import pytest
import torch
from torch import nn

from osad.attacks import Square, margin
from osad.attacks.square import square_fraction, square_side
from tests.attacks.helpers import accuracy, seeded


def test_p_schedule_halves_at_the_papers_points():
    # Progress is rescaled to 10 000 queries; p halves after 10, 50, 200, 500, ...
    assert square_fraction(0.8, 10, 10000) == 0.8
    assert square_fraction(0.8, 11, 10000) == 0.4
    assert square_fraction(0.8, 51, 10000) == 0.2
    assert square_fraction(0.8, 8001, 10000) == pytest.approx(0.8 / 512)
    assert square_fraction(0.8, 50, 1000) == 0.8 / 8  # 500 ten-thousandths: still p / 8
    assert square_fraction(0.8, 51, 1000) == 0.8 / 16
    assert square_side(0.8, 8, 8) == 7  # round(sqrt(51.2)), at most H - 1
    assert square_side(0.001, 8, 8) == 1


class _Watched(nn.Module):
    """Fails if called with autograd on; counts the images it scores."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.images = 0

    def forward(self, x):
        assert not torch.is_grad_enabled(), "Square must not build an autograd graph"
        self.images += len(x)
        return self.model(x)


@pytest.mark.parametrize("norm,eps", [("linf", 32 / 255), ("l2", 1.0)])
def test_square_is_gradient_free_within_budget_and_lowers_accuracy(
    plain_model, known_batch, norm, eps
):
    x, y = known_batch
    for p in plain_model.parameters():
        p.grad = None
    watched = _Watched(plain_model)
    atk = Square(watched, eps=eps, norm=norm, queries=100, generator=seeded())
    adv = atk(x, y)
    assert not adv.requires_grad and all(p.grad is None for p in plain_model.parameters())
    used = atk.queries_used
    assert watched.images == int(used.sum()) and int(used.max()) <= 100
    assert accuracy(plain_model, adv, y) < accuracy(plain_model, x, y) - 0.4
    # A sample stops being queried only once it is misclassified.
    with torch.no_grad():
        wrong = plain_model(adv).argmax(1) != y
    assert wrong[used < 100].all() and (used < 100).any()
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert size.max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1


def test_square_is_seeded(plain_model, known_batch):
    x, y = known_batch
    x, y = x[:16], y[:16]

    def run(seed):
        return Square(plain_model, eps=16 / 255, queries=10, generator=seeded(seed))(x, y)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_square_restarts_only_spend_queries_on_survivors(plain_model, known_batch):
    x, y = known_batch
    one = Square(plain_model, eps=16 / 255, queries=30, generator=seeded())
    two = Square(plain_model, eps=16 / 255, queries=30, restarts=2, generator=seeded())
    adv_one, adv_two = one(x, y), two(x, y)
    with torch.no_grad():
        m_one = margin(plain_model(adv_one), None, y)
        m_two = margin(plain_model(adv_two), None, y)
    assert (m_two >= m_one - 1e-6).all()
    broken = m_one > 0
    assert torch.equal(two.queries_used[broken], one.queries_used[broken])
    assert (two.queries_used <= 60).all()


def test_zero_budget_returns_the_images(plain_model, known_batch):
    x, y = known_batch
    atk = Square(plain_model, eps=0.0, queries=10)
    assert torch.equal(atk(x, y), x) and int(atk.queries_used.sum()) == 0
