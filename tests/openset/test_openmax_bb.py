import numpy as np
import pytest
import torch
from scipy import stats

from osad.errors import ConfigError
from osad.openset import OpenMax, OpenMaxBB
from tests.openset.test_scores import _clustered_logits


def _distance(kind, a, b):
    euclidean = np.linalg.norm(a - b)
    cosine = 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return {"euclidean": euclidean, "cosine": cosine, "eucos": euclidean / 200 + cosine}[kind]


def _hand_openmax_bb(train, labels, test, tail_size, alpha, kind, translate=10000.0):
    """Bendale & Boult's Algorithm 2 with the released code's rank weights, by hand."""
    train, labels, test = train.numpy(), labels.numpy(), test.numpy()
    k = train.shape[1]
    mavs, weibulls = [], []
    for c in range(k):
        members = train[(labels == c) & (train.argmax(1) == labels)]
        mav = members.mean(0)
        tail = np.sort([_distance(kind, m, mav) for m in members])[-tail_size:]
        shape, _, scale = stats.weibull_min.fit(tail + translate - tail.min(), floc=0)
        mavs.append(mav)
        weibulls.append((shape, scale, tail.min()))
    probabilities = []
    for row in test:
        order = np.argsort(-row, kind="stable")
        weights = np.ones(k)
        for rank, c in enumerate(order[: min(alpha, k)]):
            shape, scale, small = weibulls[c]
            d = _distance(kind, row, mavs[c]) + translate - small
            cdf = stats.weibull_min.cdf(d, shape, scale=scale)
            weights[c] = 1 - (alpha - rank) / alpha * cdf
        revised = row * weights
        unknown = np.sum(row * (1 - weights))
        exp = np.exp(np.r_[revised, unknown])
        probabilities.append(exp / exp.sum())
    return np.array(probabilities)


TEST_ROWS = torch.tensor(
    [[8.0, 0.5, 0.0, 0.0], [3.0, 3.0, 2.0, 1.0], [1.0, 9.0, -1.0, 0.5], [4.0, 0.0, 7.5, 1.0]],
    dtype=torch.float64,
)


@pytest.mark.parametrize("kind", ["eucos", "euclidean", "cosine"])
@pytest.mark.parametrize("alpha", [1, 2, 4])
def test_openmax_bb_matches_hand_computation(kind, alpha):
    logits, labels = _clustered_logits()
    om = OpenMaxBB(tail_size=10, alpha=alpha, distance=kind).fit(logits, None, labels)
    expected = _hand_openmax_bb(logits, labels, TEST_ROWS, 10, alpha, kind)
    assert np.allclose(om.probabilities(TEST_ROWS).numpy(), expected, atol=1e-9)
    assert np.allclose(om.score(TEST_ROWS).numpy(), expected[:, -1], atol=1e-9)
    uncertainty = OpenMaxBB(tail_size=10, alpha=alpha, distance=kind, score_kind="uncertainty")
    uncertainty.fit(logits, None, labels)
    assert np.allclose(uncertainty.score(TEST_ROWS).numpy(), 1 - expected[:, :-1].max(1), atol=1e-9)


def test_alpha_one_revises_only_the_top_class():
    logits, labels = _clustered_logits()
    om = OpenMaxBB(tail_size=10, alpha=1, distance="euclidean").fit(logits, None, labels)
    row = torch.tensor([[2.0, 1.5, 1.0, 0.5]], dtype=torch.float64)  # far from every MAV
    cdf = om.outlier_probability(row)
    weights = om.rank_weights(row)
    assert weights.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    p = om.probabilities(row)[0]
    # the lower classes keep their activations: their ratios to each other are unchanged
    assert (p[1] / p[2]).item() == pytest.approx(np.exp(0.5))
    assert p[-1] / p[1] == pytest.approx(np.exp(2.0 * cdf[0, 0].item() - 1.5))


def test_default_is_eucos_and_alpha_is_capped_at_the_number_of_classes():
    logits, labels = _clustered_logits()
    om = OpenMaxBB(tail_size=10).fit(logits, None, labels)
    assert om.distance == "eucos" and om.alpha == 10
    expected = _hand_openmax_bb(logits, labels, TEST_ROWS, 10, 4, "eucos")
    assert np.allclose(om.score(TEST_ROWS).numpy(), expected[:, -1], atol=1e-9)
    assert np.allclose(om.rank_weights(TEST_ROWS[:1]).numpy(), [[1.0, 0.75, 0.5, 0.25]])


def test_planted_unknowns_get_higher_unknown_probability():
    logits, labels = _clustered_logits(n_per_class=400)
    om = OpenMaxBB(tail_size=20, alpha=2).fit(logits, None, labels)
    known, _ = _clustered_logits(seed=1)
    planted = torch.full((5, 4), 2.0, dtype=torch.float64) + torch.arange(4) * 0.1
    # the tail is the top 5% of each class, and the libMR translate makes the CDF
    # a steep step across it: a few fresh known samples beyond it are flagged too
    assert (om.score(known) >= om.score(planted).min()).float().mean() < 0.1
    assert om.score(known).median() < 0.01


def test_openmax_bb_shares_the_fit_and_exposes_translate():
    logits, labels = _clustered_logits()
    bb = OpenMaxBB(tail_size=10, distance="euclidean", translate=500.0).fit(logits, None, labels)
    paper = OpenMax(tail_size=10, translate=500.0).fit(logits, None, labels)
    assert torch.equal(bb.mav, paper.mav)
    assert np.array_equal(bb.weibull.shape, paper.weibull.shape)
    assert bb.weibull.translate == 500.0
    assert isinstance(bb, OpenMax) and bb.name == "openmax-bb" and paper.name == "openmax"


def test_openmax_bb_is_differentiable():
    logits, labels = _clustered_logits()
    om = OpenMaxBB(tail_size=10, alpha=2).fit(logits, None, labels)
    x = TEST_ROWS.clone().requires_grad_(True)
    om.score(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": 0}, "alpha"),
        ({"distance": "cosin"}, "did you mean 'cosine'"),
        ({"score_kind": "unknwn"}, "did you mean 'unknown'"),
        ({"tail_size": 1}, "tail_size"),
    ],
)
def test_openmax_bb_refuses_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        OpenMaxBB(**options)
