"""Every registered score: finite values and finite input gradients far outside the
fitted range, and degenerate fits handled alike (issue 20 item 0, issue 15 item 10)."""

import numpy as np
import pytest
import torch

from osad.errors import FitError
from osad.models import OpenSetNet
from osad.openset import SCORERS, OpenMax, Scorer, WeibullTail, make_scorer

FITTED = [name for name, cls in SCORERS.items() if cls.fit is not Scorer.fit]
ON_OUTPUTS = [name for name, cls in SCORERS.items() if not cls.needs_model]
ON_IMAGES = [name for name, cls in SCORERS.items() if cls.needs_model]
DTYPES = [torch.float32, torch.bfloat16]


def _model():
    torch.manual_seed(0)
    return OpenSetNet(3, 1, 8, [0.5], [0.25], width=4, latent_dim=6, decoder=True).eval()


def _planted(per_class=(40, 40, 40), seed=0, identical=False):
    """Latent clusters per class (float64), labels, and logits = z @ W^T (W = 2 * eye)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(torch.tensor(per_class))
    z = torch.eye(3, 5, dtype=torch.float64)[labels] * 5
    z = z + 0.5 * torch.randn(len(labels), 5, generator=g, dtype=torch.float64)
    if identical:
        z[labels == 2] = z[labels == 2][0]
    weight = torch.eye(3, 5, dtype=torch.float64) * 2
    return z @ weight.T, z, labels


def _check_finite(scorer, logits, features=None, images=None):
    """The score and its gradient w.r.t. every input it reads are finite."""
    inputs = [t for t in (logits, features, images) if t is not None]
    for t in inputs:
        t.requires_grad_(True)
    score = scorer.score(logits, features, images)
    assert torch.isfinite(score.float()).all(), score
    grads = torch.autograd.grad(score.float().sum(), inputs, allow_unused=True)
    for grad in grads:
        assert grad is None or torch.isfinite(grad.float()).all(), grad


# Latent test features far outside, at and far inside the fitted range (logits follow).
def _feature_cases():
    _, z_test, _ = _planted(seed=1)
    _, z_train, labels = _planted()
    z = z_test[::20]  # 6 samples of the 3 classes
    means = torch.stack([z_train[labels == c].mean(0) for c in range(3)])
    return {
        "inside": z,
        "far": z * 1e3,
        "huge": z * 1e6,
        "huge negative": -z * 1e6,
        "one class far": z + torch.tensor([0.0, 0.0, 1e3, 0.0, 0.0], dtype=torch.float64),
        "tiny": z * 1e-30,
        "zero": torch.zeros_like(z),
        "ties": torch.ones_like(z),  # equal logits for every class
        "training points": z_train[::20],  # zero distance to a stored feature
        "class means": means,  # zero distance to a mean
    }


FEATURE_CASES = _feature_cases()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(FEATURE_CASES))
@pytest.mark.parametrize("name", ON_OUTPUTS)
def test_every_score_and_its_gradient_are_finite_far_outside_the_fit(name, case, dtype):
    logits, z, labels = _planted()
    scorer = make_scorer(name).fit(logits, z, labels)
    features = FEATURE_CASES[case]
    weight = torch.eye(3, 5, dtype=torch.float64) * 2
    test_logits = (features @ weight.T).to(dtype)
    _check_finite(scorer, test_logits, features.to(dtype))


def _image_cases():
    g = torch.Generator().manual_seed(0)
    uniform = torch.rand(4, 1, 8, 8, generator=g)
    return {
        "uniform": uniform,
        "black": torch.zeros(4, 1, 8, 8),
        "white": torch.ones(4, 1, 8, 8),
        "ties": uniform[:1].expand(4, -1, -1, -1).clone(),
    }


IMAGE_CASES = _image_cases()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(IMAGE_CASES))
@pytest.mark.parametrize("name", ON_IMAGES)
def test_scores_that_run_the_model_have_finite_image_gradients(name, case, dtype):
    model = _model()
    scorer = make_scorer(name, model=model)
    images = IMAGE_CASES[case].clone()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        logits, features = model.forward_features(images)
        scorer.fit(logits.detach(), features.detach(), torch.arange(4) % 3)
        images.requires_grad_(True)
        logits, features = model.forward_features(images)
        score = scorer.score(logits, features, images)
    assert torch.isfinite(score.float()).all()
    (grad,) = torch.autograd.grad(score.float().sum(), images)
    assert torch.isfinite(grad).all()


def test_weibull_cdf_and_openmax_gradient_stay_finite_far_above_the_tail():
    """The reported case: a tail fitted on distances 1..2, test distances 10 to 1e6."""
    tail = WeibullTail.fit([np.linspace(1.0, 2.0, 20)])
    distances = torch.tensor([[1.5], [10.0], [30.0], [100.0], [1e6]], requires_grad=True)
    cdf = tail.cdf(distances)
    assert torch.isfinite(cdf).all() and (cdf[1:] == 1).all()
    (grad,) = torch.autograd.grad(cdf.sum(), distances)
    assert torch.isfinite(grad).all()
    # OpenMax sums over classes: one distant class must not poison the image's gradient.
    logits, _, labels = _planted()
    openmax = OpenMax().fit(logits, None, labels)
    test = logits[:4].float() + torch.tensor([0.0, 0.0, 1.0]) * torch.tensor(
        [[10.0], [30.0], [100.0], [1e6]]
    )
    test.requires_grad_(True)
    score = openmax.score(test)
    (grad,) = torch.autograd.grad(score.sum(), test)
    assert torch.isfinite(score).all() and torch.isfinite(grad).all()


def test_weibull_cdf_values_are_unchanged_where_they_were_finite():
    """The stable form equals the plain Weibull CDF (scipy) wherever that is finite."""
    from scipy import stats

    values = np.linspace(1.0, 2.0, 20)
    tail = WeibullTail.fit([values])
    d = np.array([0.5, 1.0, 1.5, 1.9, 2.0, 2.05, 2.2, 3.0, 10.0])
    expected = stats.weibull_min.cdf(
        d + tail.translate - values.min(), tail.shape[0], scale=tail.scale[0]
    )
    got = tail.cdf(torch.tensor(d, dtype=torch.float64)[:, None])[:, 0].numpy()
    assert np.allclose(got, expected, rtol=0, atol=1e-12)


def _degenerate(n, identical=False):
    """Class 2 (the last) has ``n`` training images (all identical if ``identical``)."""
    return _planted((40, 40, n), identical=identical)


def _fit_or_refuse(name, logits, z, labels, collapsed=False):
    """The fitted scorer, or None when it refused with a one-line FitError (which
    blames a collapsed model only when it is given one)."""
    scorer = make_scorer(name, model=_model())
    try:
        return scorer.fit(logits, z, labels)
    except FitError as error:
        assert "\n" not in str(error)
        assert collapsed or "collapsed" not in str(error), error
        return None


@pytest.mark.parametrize("name", ON_OUTPUTS)
def test_small_classes_are_fitted_or_refused_alike(name):
    """0, 1, 2, 3 images of a class and identical images: a scorer refuses (one-line
    FitError) or fits with finite scores; once a size fits, every larger size fits,
    so two images are handled like one or three, never as a collapsed model."""
    fitted = {}
    for n in (0, 1, 2, 3):
        logits, z, labels = _degenerate(n)
        scorer = _fit_or_refuse(name, logits, z, labels)
        fitted[n] = scorer is not None
        if scorer is not None:
            test_logits, test_z, _ = _planted(seed=1)
            _check_finite(scorer, test_logits[::10].float(), test_z[::10].float())
    sizes = [n for n, ok in fitted.items() if ok]
    assert sizes == list(range(min(sizes), 4)), fitted
    assert fitted[3]
    logits, z, labels = _degenerate(3, identical=True)
    scorer = _fit_or_refuse(name, logits, z, labels, collapsed=True)
    if scorer is not None:
        test_logits, test_z, _ = _planted(seed=1)
        _check_finite(scorer, test_logits[::10].float(), test_z[::10].float())


@pytest.mark.parametrize("identical", [False, True])
@pytest.mark.parametrize("correct", [0, 1, 2, 3])
@pytest.mark.parametrize("name", ON_OUTPUTS)
def test_a_class_with_few_correctly_classified_images_is_fitted(name, correct, identical):
    """The reported case: a class of 40 images of which 0..3 are classified correctly
    (or the correct ones are identical) is fitted, whatever the count."""
    logits, z, labels = _planted()
    of_class = (labels == 2).nonzero().squeeze(1)
    wrong = of_class[correct:]
    logits[wrong] = logits[wrong][:, [2, 1, 0]]  # misclassified as class 0
    if identical:
        logits[of_class[:correct]] = logits[of_class[0]].clone()
        z[of_class[:correct]] = z[of_class[0]].clone()
    scorer = make_scorer(name).fit(logits, z, labels)
    test_logits, test_z, _ = _planted(seed=1)
    _check_finite(scorer, test_logits[::10].float(), test_z[::10].float())
    if isinstance(scorer, OpenMax):
        assert scorer.class_fits[2].correct == correct
        # Two images are equidistant from their mean in euclidean distance, not in eucos.
        two_no_tail = correct == 2 and scorer.distance == "euclidean"
        fallback = correct < 2 or identical or two_no_tail
        assert scorer.class_fits[2].used_misclassified == fallback


def test_mahalanobis_refuses_a_missing_last_class():
    logits, z, labels = _degenerate(0)
    with pytest.raises(FitError, match=r"classes \[2\]"):
        make_scorer("mahalanobis").fit(logits, z, labels)


@pytest.mark.parametrize("name", FITTED)
def test_a_collapsed_model_is_a_fit_error_or_finite(name):
    """Every class's images give one output: refused with a one-line error, or finite."""
    logits, z, labels = _planted()
    logits[:] = logits[0]
    z[:] = z[0]
    scorer = _fit_or_refuse(name, logits, z, labels, collapsed=True)
    if scorer is not None:
        test_logits, test_z, _ = _planted(seed=1)
        _check_finite(scorer, test_logits[::10].float(), test_z[::10].float())
