"""The embedded default reproduces the paper's headline effect (about 2 minutes)."""

from __future__ import annotations

import pytest

from osad.config import make_config
from osad.data import load_openset
from osad.eval import evaluate
from osad.train import train


@pytest.fixture(scope="module")
def default_data():
    return load_openset(make_config().data)


def _metrics(method: str, data) -> dict[str, float]:
    # The paper's conditions only (no ensemble): its headline effect is about PGD.
    config = make_config(overrides=[f"method={method}", "eval.scores=[msp]", "eval.version=null"])
    model = train(config, data, progress=False).model
    result = evaluate(model, data, config, progress=False)
    return {c.name: c.closed_set_accuracy for c in result.conditions}


@pytest.mark.slow
def test_osdn_is_accurate_and_robust_where_plain_is_not(default_data):
    osdn = _metrics("osdn", default_data)
    plain = _metrics("plain", default_data)
    assert osdn["clean"] >= 0.90
    assert plain["pgd"] < plain["clean"] - 0.3  # the attack works
    assert osdn["pgd"] > plain["pgd"] + 0.2  # and OSDN resists it
