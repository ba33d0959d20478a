"""A new score is one class and one decorator: registered here, the toy score is
accepted by the configuration (``eval.scores``, ``eval.score_options.toy.*`` checked
against its constructor), built with its options, named by its own label in tables,
and held to the score contracts (finite values and gradients, higher = more unknown)
with no edit anywhere else."""

from __future__ import annotations

import re

import pytest

from osad.config import make_config, score_names
from osad.errors import ConfigError
from osad.eval.protocol import make_scorers
from osad.eval.report import score_label
from osad.openset import SCORERS, Scorer, register_scorer
from osad.openset.base import check_positive
from tests.openset import test_finite as finite
from tests.openset import test_registry as registry


@pytest.fixture
def toy():
    @register_scorer
    class NegativeMaxLogit(Scorer):
        """``-scale * max_c l_c``: a low top logit looks unknown."""

        name = "toy"
        label = "Toy (-max logit)"

        def __init__(self, scale: float = 1.0) -> None:
            check_positive(scale, "scale", self.name)
            self.scale = scale

        def score(self, logits, features=None, images=None):
            return -self.scale * logits.amax(dim=1)

    yield NegativeMaxLogit
    del SCORERS["toy"]


def test_the_config_takes_the_toy_score_and_checks_its_options(toy):
    config = make_config(overrides=["eval.scores=[msp,toy]", "eval.score_options.toy.scale=2"])
    assert score_names(config) == ["msp", "toy"] and "toy" in score_names(make_config())
    scorers = make_scorers(config, model=None)
    assert isinstance(scorers["toy"], toy) and scorers["toy"].scale == 2.0
    assert score_label("toy") == "Toy (-max logit)"
    for override, message in [
        ("eval.score_options.toy.scal=2", "score 'toy' has no option 'scal' (did you mean"),
        ("eval.score_options.toy.scale=0", "option 'scale' of score 'toy' must be > 0"),
        ("eval.score_options.toy.scale=big", "'eval.score_options.toy.scale' must be a number"),
        ("eval.scores=[tooy]", "did you mean 'toy'"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            make_config(overrides=[override])


def test_the_score_contracts_hold_for_the_toy(toy):
    for case in finite.FEATURE_CASES:
        for dtype in finite.DTYPES:
            finite.test_every_score_and_its_gradient_are_finite_far_outside_the_fit(
                "toy", case, dtype
            )
    registry.test_higher_score_means_more_unknown("toy")
