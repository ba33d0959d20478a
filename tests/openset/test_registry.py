import pytest
import torch

from osad.config import make_config
from osad.errors import ConfigError
from osad.eval import auroc
from osad.models import OpenSetNet
from osad.openset import SCORERS, OpenMaxBB, make_scorer, scorer_options


def _model():
    return OpenSetNet(3, 1, 8, [0.5], [0.25], width=4, latent_dim=6, decoder=True).eval()


def test_every_registered_score_builds_by_name():
    model = _model()
    assert set(SCORERS) == {
        "msp",
        "maxlogit",
        "energy",
        "odin",
        "mahalanobis",
        "knn",
        "openmax",
        "openmax-bb",
        "reconstruction",
    }
    for name, cls in SCORERS.items():
        scorer = make_scorer(name, model=model)
        assert type(scorer) is cls and scorer.name == name


def test_make_scorer_passes_options():
    scorer = make_scorer("openmax-bb", alpha=3, distance="euclidean", tail_size=7)
    assert isinstance(scorer, OpenMaxBB)
    assert (scorer.alpha, scorer.distance, scorer.tail_size) == (3, "euclidean", 7)
    assert make_scorer("knn", k=5).k == 5
    assert scorer_options("odin") == ["temperature", "eps"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: make_scorer("maxlogits"), "unknown score 'maxlogits' \\(did you mean 'maxlogit'"),
        (lambda: make_scorer("knn", kk=3), "score 'knn' has no option 'kk' \\(did you mean 'k'"),
        (lambda: make_scorer("msp", temperature=2), "its options: none"),
        (lambda: make_scorer("odin"), "needs model="),
        (lambda: make_scorer("knn", k=-1), "'k'"),
        (lambda: make_scorer("energy", temperature=-1.0), "temperature"),
    ],
)
def test_make_scorer_refuses_bad_requests_in_one_line(call, message):
    with pytest.raises(ConfigError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_config_refuses_reconstruction_without_decoder():
    with pytest.raises(ConfigError, match="needs the OSDN decoder"):
        make_config(overrides=["method=plain", "eval.scores=[reconstruction]"])
    with pytest.raises(ConfigError, match="needs the OSDN decoder"):
        make_config(overrides=["train.reconstruction=false", "eval.scores=[reconstruction]"])
    assert make_config(overrides=["eval.scores=[reconstruction, odin, knn]"]).eval.scores


def _planted(seed):
    """Latent clusters per class; logits = z @ W; unknowns sit between classes with low logits."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(80)
    z_known = torch.eye(3, 5, dtype=torch.float64)[labels] * 5
    z_known = z_known + 0.5 * torch.randn(len(labels), 5, generator=g, dtype=torch.float64)
    z_unknown = 1.5 + 0.5 * torch.randn(60, 5, generator=g, dtype=torch.float64)
    weight = torch.eye(3, 5, dtype=torch.float64) * 2
    return labels, z_known, z_unknown, weight


@pytest.mark.parametrize("name", [n for n, cls in SCORERS.items() if not cls.needs_model])
def test_higher_score_means_more_unknown(name):
    labels, z_train, _, weight = _planted(0)
    _, z_known, z_unknown, _ = _planted(1)
    scorer = make_scorer(name).fit(z_train @ weight.T, z_train, labels)
    z = torch.cat([z_known, z_unknown])
    is_unknown = torch.arange(len(z)) >= len(z_known)
    assert auroc(scorer.score(z @ weight.T, z).detach(), is_unknown) > 0.9
