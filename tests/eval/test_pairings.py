"""The four pairings, adaptive attacks and the options of ``osad test``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from osad.config import make_config, score_names
from osad.errors import ConfigError
from osad.eval import evaluate
from osad.eval.options import select_evaluation
from osad.eval.protocol import combine_pairings
from osad.train import build_model_for
from tests.conftest import TINY


def test_combine_pairings_takes_each_side_from_the_planted_source():
    is_known = torch.tensor([True, True, False, False])
    clean = ({"s": torch.zeros(4, 2)}, {"s": torch.zeros(4)})
    attacked = ({"s": torch.ones(4, 2)}, {"s": torch.ones(4)})

    def measure(name, scores, logits):
        return {"auroc": 0.5, "closed_set_accuracy": 1.0}

    pairings = combine_pairings(["both", "known", "unknown"], is_known, clean, attacked, measure)
    assert pairings["both"].scores["s"].tolist() == [1, 1, 1, 1]
    assert pairings["known"].scores["s"].tolist() == [1, 1, 0, 0]
    assert pairings["unknown"].scores["s"].tolist() == [0, 0, 1, 1]
    assert pairings["known"].logits["s"][:, 0].tolist() == [1, 1, 0, 0]


@pytest.fixture(scope="module")
def untrained(digits_split0):
    config = make_config(overrides=[*TINY, "model.denoise_places=[]"])
    torch.manual_seed(0)
    return build_model_for(config, digits_split0)[0].eval()


@pytest.fixture(scope="module")
def paired(untrained, digits_split0, single_thread):
    overrides = [
        *TINY,
        "model.denoise_places=[]",
        "eval.scores=[msp,knn]",
        "eval.pairings=[both,known,unknown]",
        "eval.attacks={pgd: {name: pgd, eps: 32, steps: 3},"
        " adaptive: {name: apgd, eps: 32, steps: 5, target: score},"
        " joint: {name: apgd, eps: 32, steps: 5, target: joint}}",
    ]
    config = make_config(overrides=overrides)
    result = evaluate(untrained, digits_split0, config, progress=False)
    return {c.name: c for c in result.conditions}


@pytest.mark.slow
def test_pairings_combine_attacked_and_clean_images(paired, digits_split0):
    known = digits_split0.test_known
    clean = paired["clean"].headline
    for name in ("pgd", "adaptive"):
        both = paired[name].pairings["both"]
        only_known = paired[name].pairings["known"]
        only_unknown = paired[name].pairings["unknown"]
        for score in ("msp", "knn"):
            # the attack changed both kinds of images ...
            assert not torch.allclose(both.logits[score][known], clean.logits[score][known])
            assert not torch.allclose(both.logits[score][~known], clean.logits[score][~known])
            # ... and each pairing takes each kind from the right side
            assert torch.equal(only_known.logits[score][known], both.logits[score][known])
            assert torch.equal(only_known.logits[score][~known], clean.logits[score][~known])
            assert torch.equal(only_unknown.logits[score][known], clean.logits[score][known])
            assert torch.equal(only_unknown.logits[score][~known], both.logits[score][~known])
            if score == "msp" or name == "adaptive":  # pgd refits knn on attacked images
                assert torch.equal(only_known.scores[score][~known], clean.scores[score][~known])
            expected = roc_auc_score((~known).numpy(), only_known.scores[score].numpy())
            assert only_known.metrics[score]["auroc"] == pytest.approx(expected)


@pytest.mark.slow
def test_adaptive_attack_moves_each_score_the_wrong_way(paired, digits_split0):
    known = digits_split0.test_known
    clean, adaptive, pgd = (paired[n].headline for n in ("clean", "adaptive", "pgd"))
    for score in ("msp", "knn"):
        assert adaptive.scores[score][known].mean() > clean.scores[score][known].mean()
        assert adaptive.scores[score][~known].mean() < clean.scores[score][~known].mean()
        assert adaptive.auroc[score] < min(clean.auroc[score], pgd.auroc[score])
    # each score attacked its own images
    assert not torch.equal(adaptive.logits["msp"], adaptive.logits["knn"])
    assert paired["adaptive"].attack["target"] == "score"


@pytest.mark.slow
def test_joint_attack_adds_the_classifier_loss_on_known_images_only(paired, digits_split0):
    known = digits_split0.test_known
    labels = digits_split0.test_labels[known]
    adaptive, joint = (paired[n].headline for n in ("adaptive", "joint"))
    for score in ("msp", "knn"):
        assert torch.allclose(joint.scores[score][~known], adaptive.scores[score][~known])
        loss = F.cross_entropy(joint.logits[score][known], labels)
        assert loss > F.cross_entropy(adaptive.logits[score][known], labels)


@pytest.mark.slow
def test_metrics_hold_every_metric_and_the_threshold(paired):
    metrics = paired["pgd"].headline.metrics["msp"]
    for key in ("auroc", "aupr_in", "aupr_out", "fpr95_known_positive", "oscr", "threshold"):
        assert key in metrics
    assert metrics["threshold"] == paired["clean"].headline.metrics["msp"]["threshold"]


def test_select_evaluation_adds_adaptive_attacks_at_the_paper_budget():
    config = make_config(overrides=list(TINY))
    chosen = select_evaluation(
        config, attacks=["pgd", "adaptive", "joint"], scores=["msp"], pairings=["known"]
    )
    assert list(chosen.eval.attacks) == ["pgd", "adaptive", "joint"]
    adaptive = chosen.eval.attacks["adaptive"]
    assert (adaptive.name, adaptive.target, adaptive.eps) == ("apgd", "score", 32.0)
    assert chosen.eval.attacks["joint"].target == "joint"
    assert chosen.eval.pairings == ["both", "known"]
    assert chosen.eval.scores == ["msp"]
    assert list(config.eval.attacks) == ["fgsm", "pgd"]  # the run's config is untouched
    assert select_evaluation(config, pairings=["all"]).eval.pairings == ["both", "known", "unknown"]


@pytest.mark.parametrize(
    "selection,message",
    [
        ({"attacks": ["adaptiv"]}, "did you mean 'adaptive'"),
        ({"scores": ["mps"]}, "did you mean 'msp'"),
        ({"pairings": ["knwon"]}, "did you mean 'known'"),
        ({"scores": ["reconstruction"]}, "needs the OSDN decoder"),
    ],
)
def test_select_evaluation_refuses_unknown_names(selection, message):
    config = make_config(overrides=["method=plain"])
    with pytest.raises(ConfigError, match=message):
        select_evaluation(config, **selection)


def test_all_scores_follow_the_model():
    assert "reconstruction" in score_names(make_config())
    plain = score_names(make_config(overrides=["method=plain"]))
    assert "reconstruction" not in plain and {"msp", "openmax", "odin", "knn"} <= set(plain)


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.attack.target=score", "'train.attack.target' must be classifier"),
        ("eval.pairings=[known]", "must include both"),
        ("eval.attacks.pgd.target=scores", "did you mean .score."),
    ],
)
def test_config_refuses_bad_targets_and_pairings(override, message):
    with pytest.raises(ConfigError, match=message):
        make_config(overrides=[override])
