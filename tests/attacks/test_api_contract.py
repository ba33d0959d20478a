"""The attack API's contract for every attack in the registry (``osad.attacks.ATTACKS``):
the budget and the [0, 1] box hold in every floating dtype, every loop ends, and a
bad model output, label, budget or device gives one InputError line."""

from __future__ import annotations

import inspect
import math
import re

import pytest
import torch
from torch import nn

from osad.attacks import ATTACKS, PGD, Square
from osad.errors import InputError
from tests.attacks.helpers import seeded

CLASSES = 4
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
NORM_EPS = [("linf", 8 / 255), ("l2", 0.5)]
# Few steps and queries: the contract holds from the first iterate on.
SETTINGS = dict(steps=3, queries=30, size=3, candidates=4)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, CLASSES))


def _images(dtype: torch.dtype = torch.float32, n: int = 6) -> torch.Tensor:
    # Include the box's corners: pixels at exactly 0 and 1.
    x = torch.rand(n, 1, 8, 8, generator=seeded(1), dtype=torch.float64)
    x[:, :, 0] = 0.0
    x[:, :, 1] = 1.0
    return x.to(dtype)


def _labels(n: int = 6) -> torch.Tensor:
    return torch.arange(n) % CLASSES


def _accepts(cls: type, key: str) -> bool:
    """Whether ``cls(...)`` takes keyword ``key``, following ``**kwargs`` up the classes."""
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters
        if key in parameters:
            return True
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            return False
    return False


def _taken(cls: type, model: nn.Module, settings: dict) -> dict:
    """Those of ``settings`` that ``cls`` takes (a subclass that fixes a keyword, as
    FGSM fixes ``steps``, gets it dropped)."""
    chosen = {k: v for k, v in settings.items() if _accepts(cls, k)}
    while True:
        try:
            cls(model, **chosen)
        except TypeError as error:
            fixed = re.search(r"multiple values for keyword argument '(\w+)'", str(error))
            if fixed is None:
                raise
            del chosen[fixed.group(1)]
            continue
        except InputError:
            pass  # a value under test: the keyword was taken
        return chosen


def build(name: str, model: nn.Module, **settings) -> object:
    """Attack ``name`` of the registry with those of ``settings`` its constructor takes."""
    cls = ATTACKS[name]
    return cls(model, generator=seeded(), **_taken(cls, model, {**SETTINGS, **settings}))


def takes(name: str, key: str, value: object) -> bool:
    """Whether attack ``name`` takes keyword ``key`` (tried with a valid ``value``)."""
    return key in _taken(ATTACKS[name], _net(), {key: value})


def _budget_used(adv: torch.Tensor, x: torch.Tensor, norm: str) -> float:
    """The perturbation's size, computed exactly (float64) from the returned pixels."""
    delta = (adv.double() - x.double()).flatten(1)
    return (delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)).max().item()


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm,eps", NORM_EPS)
def test_budget_and_box_hold_exactly_in_every_dtype(name, dtype, norm, eps):
    """In the image's own dtype; the model runs in that dtype too (its parameters cast)."""
    model = _net().to(dtype)
    atk = build(name, model, eps=eps, norm=norm)
    x = _images(dtype)
    adv = atk(x, _labels())
    assert adv.dtype == dtype and adv.shape == x.shape
    assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0
    # float16/bfloat16: rounding the result to the image dtype goes towards the clean
    # image, so the budget holds exactly; float32/float64 compute in their own dtype.
    assert _budget_used(adv, x, atk.norm) <= atk.eps
    assert not torch.equal(adv, x)  # the attack did perturb


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_images_of_another_dtype_than_the_model_are_attacked(name):
    """float64 or bfloat16 images attack a float32 model: its input is cast to the
    model's dtype, the result keeps the images' dtype and budget."""
    for dtype in (torch.float64, torch.bfloat16):
        x = _images(dtype)
        atk = build(name, _net())
        adv = atk(x, _labels())
        assert adv.dtype == dtype
        assert _budget_used(adv, x, atk.norm) <= atk.eps


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_budget_below_the_pixel_resolution_ends(name, norm):
    """eps far below float32's resolution of the pixels: nothing can change, and every
    loop (Square's sign redraw included) still ends."""
    x = _images().clamp(0.25, 0.75)
    adv = build(name, _net(), eps=1e-9, norm=norm, queries=50)(x, _labels())
    if name != "patch":  # the patch's budget is the whole pixel range
        assert _budget_used(adv, x, norm) <= 1e-9


class _Pair(nn.Module):
    """forward returns (logits, features): the documented pair contract."""

    def __init__(self):
        super().__init__()
        self.net = _net()

    def forward(self, x):
        return self.net(x), x.flatten(1)


class _Dict(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _net()

    def forward(self, x):
        return {"logits": self.net(x)}


class _Triple(_Pair):
    def forward(self, x):
        return self.net(x), x, x


class _Flat(_Pair):
    def forward(self, x):
        return self.net(x).flatten()


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_a_forward_returning_logits_and_features_is_accepted(name):
    x, y = _images(), _labels()
    pair = _Pair()
    adv = build(name, pair)(x, y)
    # The same attack on the bare network (same weights, same generator) gives the same images.
    assert torch.equal(adv, build(name, pair.net)(x, y))


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize(
    "model,says",
    [
        (_Dict, "dict"),
        (_Triple, "tuple of 3"),
        (_Flat, "shape (24,)"),
    ],
)
def test_a_forward_returning_something_else_is_one_line(name, model, says):
    with pytest.raises(InputError, match="logits") as error:
        build(name, model())(_images(), _labels())
    assert says in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_labels_beyond_the_models_classes_are_one_line(name):
    y = _labels()
    y[2] = CLASSES
    with pytest.raises(InputError, match=f"< {CLASSES}") as error:
        build(name, _net())(_images(), y)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_meta_device_images_are_one_line(name):
    with pytest.raises(InputError, match="meta"):
        build(name, _net())(_images().to("meta"), _labels())


BAD_NUMBERS = [math.inf, -math.inf, math.nan, -1.0]


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_non_finite_or_negative_budgets_are_refused_by_the_constructor(name):
    keys = [key for key in ("eps", "alpha") if takes(name, key, 1 / 255)]
    assert keys or name == "patch"  # the patch's budget is the whole pixel range
    for key in keys:
        for value in BAD_NUMBERS:
            for norm in ("linf", "l2"):
                with pytest.raises(InputError, match=key):
                    build(name, _net(), norm=norm, **{key: value})


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_counts_below_one_are_refused_by_the_constructor(name):
    keys = [k for k in ("steps", "queries", "restarts", "size", "candidates") if takes(name, k, 2)]
    assert "restarts" in keys
    for key in keys:
        for value in (0, -1, 2.5):
            with pytest.raises(InputError, match=key):
                build(name, _net(), **{key: value})


def test_pgd_with_an_infinite_l2_budget_is_refused_not_nan():
    with pytest.raises(InputError, match="eps must be >= 0 and finite"):
        PGD(_net(), eps=math.inf, norm="l2")


def test_square_still_attacks_in_bfloat16():
    """The rounding towards the clean image leaves Square room to move at eps 8/255."""
    model = _net().to(torch.bfloat16)
    x = _images(torch.bfloat16)
    atk = Square(model, eps=8 / 255, queries=30, generator=seeded())
    adv = atk(x, _labels())
    assert (adv != x).flatten(1).any(1).all()
