import numpy as np
import pytest
import torch
from scipy import stats

from osad.errors import ConfigError, FitError
from osad.openset import LIBMR_TRANSLATE, MSP, Energy, MaxLogit, OpenMax, WeibullTail


def _clustered_logits(n_per_class=60, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(k, dtype=torch.float64) * 8.0
    labels = torch.arange(k).repeat_interleave(n_per_class)
    logits = centers[labels] + torch.randn(len(labels), k, generator=g, dtype=torch.float64)
    return logits, labels


def test_msp_is_negative_max_softmax():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    expected = -torch.tensor([np.exp(2) / (np.exp(2) + 2), 1 / 3], dtype=torch.float32)
    assert torch.allclose(MSP().score(logits), expected)


def test_weibull_tail_matches_libmr_translation_and_scipy():
    rng = np.random.default_rng(0)
    tail = np.sort(rng.gamma(2.0, 1.0, 500))[-20:]
    fit = WeibullTail.fit([tail])
    c, _, s = stats.weibull_min.fit(tail + 10000.0 - tail.min(), floc=0.0)
    assert fit.shape[0] == pytest.approx(c) and fit.scale[0] == pytest.approx(s)
    d = torch.tensor([[tail.min()], [tail.mean()], [tail.max()], [0.1]], dtype=torch.float64)
    expected = stats.weibull_min.cdf(d.numpy()[:, 0] + 10000.0 - tail.min(), c, scale=s)
    assert np.allclose(fit.cdf(d).numpy()[:, 0], expected, atol=1e-9)
    # float32 keeps precision next to the large translation
    assert np.allclose(fit.cdf(d.float()).numpy()[:, 0], expected, atol=1e-4)


def test_openmax_matches_hand_computation():
    logits, labels = _clustered_logits()
    om = OpenMax(tail_size=10).fit(logits, None, labels)
    test = torch.tensor([[8.0, 0.5, 0.0, 0.0], [3.0, 3.0, 3.0, 3.0]], dtype=torch.float64)
    expected = []
    for row in test:
        w = []
        for c in range(4):
            cls = logits[(labels == c) & (logits.argmax(1) == labels)]
            mav = cls.mean(0)
            dist = (cls - mav).norm(dim=1).numpy()
            tail = np.sort(dist)[-10:]
            shape, _, scale = stats.weibull_min.fit(tail + 10000 - tail.min(), floc=0)
            d = (row - mav).norm().item()
            w.append(1 - stats.weibull_min.cdf(d + 10000 - tail.min(), shape, scale=scale))
        expected.append(-np.log(np.sum(np.exp(row.numpy() * np.array(w)))))
    assert np.allclose(om.score(test).numpy(), expected, atol=1e-6)


def test_openmax_ranks_planted_unknown_above_knowns():
    logits, labels = _clustered_logits()
    om = OpenMax(tail_size=20).fit(logits, None, labels)
    known, _ = _clustered_logits(seed=1)
    planted = torch.full((5, 4), 2.0, dtype=torch.float64)  # equidistant from every class
    scores_known = om.score(known)
    scores_unknown = om.score(planted)
    assert scores_unknown.min() > scores_known.max()


def test_openmax_is_differentiable_and_records_fallback():
    logits, labels = _clustered_logits()
    # Make class 3 entirely misclassified: the fit falls back to all its images.
    logits[labels == 3] = logits[labels == 3][:, [3, 1, 2, 0]]
    om = OpenMax(tail_size=5).fit(logits, None, labels)
    assert [f.used_misclassified for f in om.class_fits] == [False, False, False, True]
    x = logits[:4].clone().float().requires_grad_(True)
    om.score(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_openmax_requires_fit():
    with pytest.raises(RuntimeError):
        OpenMax().score(torch.zeros(1, 3))


def test_maxlogit_is_negative_max_logit():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 3.0]])
    assert torch.equal(MaxLogit().score(logits), torch.tensor([-2.0, -3.0]))


def test_energy_matches_hand_value_and_tends_to_maxlogit():
    logits = torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64)
    # -T log(e^(2/T) + 2) at T = 2: -2 log(e + 2)
    assert Energy(temperature=2.0).score(logits).item() == pytest.approx(-2 * np.log(np.e + 2))
    assert Energy().score(logits).item() == pytest.approx(-np.log(np.exp(2) + 2))
    cold = Energy(temperature=1e-3).score(logits)
    assert torch.allclose(cold, MaxLogit().score(logits), atol=1e-6)


def test_energy_refuses_non_positive_temperature():
    with pytest.raises(ConfigError, match="temperature"):
        Energy(temperature=0.0)


def test_openmax_keeps_its_translate_constant():
    logits, labels = _clustered_logits()
    om = OpenMax(tail_size=10, translate=500.0).fit(logits, None, labels)
    assert om.weibull.translate == 500.0
    assert OpenMax().translate == LIBMR_TRANSLATE == 10000.0


def test_openmax_on_a_collapsed_model_or_too_few_images_is_a_fit_error():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    collapsed = torch.ones(6, 2)  # every image gets the same logits: no Weibull tail
    with pytest.raises(FitError, match=r"class 0: .* 3 training images .*collapsed"):
        OpenMax().fit(collapsed, None, labels)
    with pytest.raises(FitError, match="two training images of class 1, got 1"):
        OpenMax().fit(torch.randn(4, 2), None, torch.tensor([0, 0, 0, 1]))
