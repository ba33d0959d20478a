"""Figures are written, are PNG images, and the eps sweep agrees with the protocol."""

from __future__ import annotations

import pytest

from osad.config import make_config
from osad.eval import evaluate
from osad.eval.figures import eps_sweep, write_figures
from osad.train import build_model_for
from tests.conftest import TINY

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OVERRIDES = [
    *TINY,
    "model.denoise_places=[]",
    "eval.scores=[msp,reconstruction]",
    "eval.eps_sweep=[0,32]",
    "eval.attacks={pgd: {name: pgd, eps: 32, steps: 2}}",
]


@pytest.fixture(scope="module")
def evaluated(digits_split0, single_thread):
    config = make_config(overrides=OVERRIDES)
    model = build_model_for(config, digits_split0)[0].eval()
    return model, config, evaluate(model, digits_split0, config, progress=False)


@pytest.mark.slow
def test_every_figure_is_a_png(evaluated, digits_split0, tmp_path):
    model, config, result = evaluated
    paths = write_figures(result, model, digits_split0, config, tmp_path / "figures")
    names = {p.name for p in paths}
    assert names == {
        "roc_clean.png",
        "roc_pgd.png",
        "hist_msp.png",
        "hist_reconstruction.png",
        "eps_sweep.png",
        "reconstructions.png",
    }
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000, path.name


def test_eps_sweep_starts_at_the_clean_figures(evaluated, digits_split0):
    model, config, result = evaluated
    sweep = eps_sweep(model, digits_split0, config)
    clean = result.conditions[0]
    assert sweep["eps"] == [0.0, 32.0]
    assert sweep["accuracy"][0] == pytest.approx(clean.closed_set_accuracy)
    assert sweep["auroc"]["msp"][0] == pytest.approx(clean.auroc["msp"])
