"""The ensemble (osad.eval.ensemble): version tables, per-sample worst case, skipping,
decisive counts, and the condition in the protocol's files."""

import json
from types import SimpleNamespace

import pytest
import torch

from osad.attacks import ATTACKS, OBJECTIVES, build_attack, score_objective
from osad.config import AttackConfig, make_config
from osad.errors import ConfigError
from osad.eval import evaluate, write_results
from osad.eval.ensemble import (
    KINDS,
    SURROGATES,
    UNKNOWN_OBJECTIVES,
    VERSIONS,
    Member,
    SmoothOpenMax,
    WorstCase,
    run_ensemble,
)
from osad.eval.options import select_evaluation
from osad.openset import OpenMax, Scorer, make_scorer
from osad.train import build_model_for
from tests.conftest import TINY


def test_versions_name_registered_attacks_and_objectives():
    for version, members in VERSIONS.items():
        names = [m.name for m in members]
        assert len(set(names)) == len(names), version
        for m in members:
            assert m.attack in ATTACKS and m.kind in KINDS, (version, m)
            allowed = {
                "closed": OBJECTIVES,
                "unknown": ("margin", "ce"),
                "surrogate": SURROGATES,
                "score": ("score", "smooth"),
            }
            assert m.objective in allowed[m.kind], (version, m)
            assert m.budget >= 1
    # each version runs at least what the one before it runs
    assert {m.name for m in VERSIONS["fast"]} <= {m.name for m in VERSIONS["standard"]}
    assert {m.name for m in VERSIONS["standard"]} <= {m.name for m in VERSIONS["plus"]}


def test_unknown_version_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"eval\.version.*fast, plus, standard"):
        make_config(overrides=["eval.version=fastest"])
    with pytest.raises(ConfigError, match=r"eval\.version"):
        select_evaluation(make_config(), version="fastest")
    assert select_evaluation(make_config(), version="none").eval.version is None


# A planted test set of 8 images (ids 0..7): 0..4 known (label 0), 5..7 unknown; the
# score is maxlogit (-max logit), accepted as known at score <= -1.
KNOWN, N = 5, 8
CLEAN_KNOWN = [2.0, 0.0, 0.0]  # correct, accepted (score -2)
CLEAN_UNKNOWN = [0.0, 0.0, 0.0]  # rejected (score 0)
MISCLASSIFIED = [0.0, 1.0, 0.0]  # score -1: still accepted
REJECTED = [-1.0, -2.0, -2.0]  # correct, score 1: rejected, above every unknown image
ACCEPTED = [3.0, 0.0, 0.0]  # score -3: an unknown image accepted


def planted(plan, nan_gradients=None):
    """``outputs`` for run_ensemble: member ``m`` gives ``plan[m][id]`` at image ``id``
    (the clean logits elsewhere) and records the ids it was asked to attack; the ids in
    ``nan_gradients[m]`` are flagged as having met a non-finite gradient inside it."""
    calls = {}
    nan_gradients = nan_gradients or {}

    def outputs(images, labels, config, seed, desc, objective):
        member = desc.split()[1]
        ids = images.flatten(1)[:, 0].long()
        calls.setdefault(member, []).extend(ids.tolist())
        rows = [
            plan.get(member, {}).get(i, CLEAN_KNOWN if i < KNOWN else CLEAN_UNKNOWN)
            for i in ids.tolist()
        ]
        flagged = [i in nan_gradients.get(member, ()) for i in ids.tolist()]
        return SimpleNamespace(
            logits=torch.tensor(rows), features=None, images=None, nonfinite=torch.tensor(flagged)
        )

    return outputs, calls


def run_planted(plan, nan_gradients=None):
    labels = torch.tensor([0] * KNOWN + [-1] * (N - KNOWN))
    clean = torch.tensor([CLEAN_KNOWN] * KNOWN + [CLEAN_UNKNOWN] * (N - KNOWN))
    scorer = make_scorer("maxlogit")
    outputs, calls = planted(plan, nan_gradients)
    train = (torch.eye(3) * 4, None, torch.arange(3))
    logits, scores, report = run_ensemble(
        "fast",
        AttackConfig(eps=8),
        {"maxlogit": scorer},
        {"maxlogit": -1.0},
        (clean, {"maxlogit": scorer.score(clean)}),
        train,
        torch.arange(N, dtype=torch.float32).view(N, 1, 1, 1),
        labels,
        outputs,
        lambda name, out: scorer.score(out.logits),
        seed=0,
    )
    return logits["maxlogit"], scores["maxlogit"], report, calls


def test_worst_case_is_the_union_over_members_and_skips_broken_samples():
    nan = [float("nan")] * 3
    plan = {
        "apgd-ce": {0: MISCLASSIFIED, 1: MISCLASSIFIED},  # A: accuracy on 0, 1
        "apgd-mav": {1: REJECTED, 2: REJECTED, 5: ACCEPTED},  # B: detection on 1, 2, 5
        "apgd-maxlogit": {3: MISCLASSIFIED, 6: nan},  # C: accuracy on 3; NaN on 6
    }
    logits, scores, report, calls = run_planted(plan)
    wrong = logits[:KNOWN].argmax(1) != 0
    assert wrong.tolist() == [True, True, False, True, False]  # A | C
    rejected = scores[:KNOWN] > -1
    accepted = scores[KNOWN:] <= -1
    assert rejected.tolist() == [False, True, True, False, False]
    assert scores[1:3].min() > scores[KNOWN:].max()  # ranked above every unknown image
    assert accepted.tolist() == [True, False, False]
    # an unknown image's logits are those of its score-worst point
    assert logits[5].tolist() == ACCEPTED and logits[6].tolist() == CLEAN_UNKNOWN
    # closed-set members attack only correct known images
    assert sorted(calls["apgd-ce"]) == [0, 1, 2, 3, 4]
    # after A and B, 1 (misclassified and rejected) and 5 (accepted) are broken everywhere
    assert sorted(calls["apgd-maxlogit"]) == [0, 2, 3, 4, 6, 7]
    # the score itself: only samples it does not yet get wrong (1, 2 rejected and above
    # every unknown image; 5 accepted and below every known one)
    assert sorted(calls["apgd-score"]) == [0, 3, 4, 6, 7]
    assert "apgd-smooth" not in calls  # maxlogit has no smooth surrogate
    assert report["non_finite"]["apgd-maxlogit"] == 1
    assert report["attacked"] == {m: len(ids) for m, ids in calls.items()}
    decisive = report["decisive"]
    assert decisive["accuracy"] == {"clean": 1, "apgd-ce": 2, "apgd-mav": 1, "apgd-maxlogit": 1}
    assert decisive["maxlogit"] == {"clean": 3, "apgd-ce": 1, "apgd-mav": 3, "apgd-maxlogit": 1}


def test_non_finite_gradients_inside_members_are_counted_per_member():
    # apgd-mav meets a NaN gradient on 0 and 6, apgd-score on 6: its points stay finite
    # (so the worst case cannot see it), only the attack knows its search was blind there
    _, _, report, _ = run_planted({}, {"apgd-mav": {0, 6}, "apgd-score": {6}})
    counts = {"apgd-ce": 0, "apgd-mav": 2, "apgd-maxlogit": 0, "apgd-score": 1}
    assert report["nonfinite_gradients"] == counts
    assert set(report["non_finite"].values()) == {0}
    _, _, report, _ = run_planted({})
    assert set(report["nonfinite_gradients"].values()) == {0}


def test_unknown_member_pulls_each_unknown_image_towards_its_top_classes(monkeypatch):
    member = Member("apgd-t-unknown", "unknown", "apgd", "margin", 10, targets=2)
    monkeypatch.setitem(VERSIONS, "unknown-only", (member,))
    labels = torch.tensor([0, 0, -1, -1, -1])
    # the unknown images' clean top classes: 2 then 1, 0 then 2, 1 then 0
    clean = torch.tensor([CLEAN_KNOWN, CLEAN_KNOWN, [0.0, 1, 2], [2.0, 0, 1], [1.0, 2, 0]])
    calls = []

    def outputs(images, targets, config, seed, desc, objective):
        ids = images.flatten(1)[:, 0].long()
        calls.append((desc, ids.tolist(), targets.tolist(), objective))
        # the first run makes image 2 a confident member of class 0: accepted, below
        # every known image, so broken for the only score and left out of the second
        rows = [[9.0, 0, 0] if i == 2 and "target 1" in desc else clean[i].tolist() for i in ids]
        return SimpleNamespace(logits=torch.tensor(rows), features=None, nonfinite=None)

    scorer = make_scorer("maxlogit")
    _, scores, report = run_ensemble(
        "unknown-only",
        AttackConfig(eps=8),
        {"maxlogit": scorer},
        {"maxlogit": -1.0},
        (clean, {"maxlogit": scorer.score(clean)}),
        (torch.eye(3) * 4, None, torch.arange(3)),
        torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1),
        labels,
        outputs,
        lambda name, out: scorer.score(out.logits),
        seed=0,
    )
    assert [c[:3] for c in calls] == [
        ("ensemble apgd-t-unknown target 1", [2, 3, 4], [2, 0, 1]),
        ("ensemble apgd-t-unknown target 2", [3, 4], [2, 0]),
    ]
    # maximised to the end of the run: no success test stops it at the predicted class
    assert all(getattr(c[3], "success", None) is None for c in calls)
    assert scores["maxlogit"][2] == -9.0
    assert report["decisive"]["maxlogit"] == {"clean": 4, "apgd-t-unknown": 1}
    assert report["attacked"] == {"apgd-t-unknown": 5}


@pytest.mark.parametrize("name", sorted(UNKNOWN_OBJECTIVES))
def test_unknown_objectives_rise_as_the_target_class_wins_and_never_stop(name):
    objective = UNKNOWN_OBJECTIVES[name]()
    assert getattr(objective, "success", None) is None  # maximised to the end of the run
    target = torch.tensor([0, 0, 0])
    logits = torch.tensor([[0.0, 1, 2], [2.0, 1, 0], [6.0, 1, 0]])  # class 0 ever more ahead
    values = objective(logits, None, target)
    assert torch.isfinite(values).all() and (values.diff() > 0).all()


def test_worst_case_never_better_than_clean():
    # a point better than clean for the defender (confident known, rejected unknown)
    better = [5.0, 0.0, 0.0]
    labels = torch.tensor([0] * KNOWN + [-1] * (N - KNOWN))
    clean = torch.tensor([MISCLASSIFIED] + [CLEAN_KNOWN] * (KNOWN - 1) + [ACCEPTED] * 3)
    worst = WorstCase(clean, {"s": -clean.amax(1)}, labels, {"s": -1.0})
    offered = torch.tensor([-5.0] * KNOWN + [5.0] * (N - KNOWN))
    worst.offer("a", torch.arange(N), torch.tensor([better] * N), {"s": offered})
    logits, scores = worst.results()
    assert torch.equal(logits["s"], clean) and torch.equal(scores["s"][KNOWN:], -clean[KNOWN:, 0])
    assert torch.equal(scores["s"][:KNOWN], -clean[:KNOWN].amax(1))
    assert worst.decisive() == {"accuracy": {"clean": KNOWN}, "s": {"clean": N}}


def test_smooth_openmax_has_a_gradient_where_openmax_is_flat():
    torch.manual_seed(0)
    train = torch.randn(200, 3) + 4 * torch.eye(3).repeat(67, 1)[:200]
    labels = torch.arange(3).repeat(67)[:200]
    openmax = OpenMax(tail_size=10).fit(train, None, labels)
    far = torch.tensor([[300.0, -200.0, 100.0]], requires_grad=True)  # far from every MAV
    flat = torch.autograd.grad(openmax.score(far).sum(), far)[0]
    assert not (torch.isfinite(flat) & (flat != 0)).any()  # zero or NaN: no direction
    smooth = torch.autograd.grad(SmoothOpenMax(openmax).score(far).sum(), far)[0]
    assert torch.isfinite(smooth).all() and (smooth != 0).any()
    # ascending the smooth surrogate's negative moves the logits towards a class mean
    step = far - 1.0 * smooth.sign()
    assert (
        torch.cdist(step, openmax.mav.float()).min() < torch.cdist(far, openmax.mav.float()).min()
    )


@pytest.mark.slow
def test_ensemble_condition_flows_through_the_files(digits_split0, tmp_path, single_thread):
    config = make_config(
        overrides=[
            *TINY,
            "model.denoise_places=[]",
            "eval.scores=[msp,openmax]",
            "eval.pairings=[both,known]",
            "eval.attacks={pgd: {name: pgd, eps: 32, steps: 3}}",
            "eval.version=fast",
        ]
    )
    torch.manual_seed(0)
    model = build_model_for(config, digits_split0)[0].eval()
    result = evaluate(model, digits_split0, config, progress=False)
    table = write_results(result, config, tmp_path, "tiny")
    clean, _, ensemble = result.conditions
    assert ensemble.name == "ensemble"
    for score in ("msp", "openmax"):
        metrics = ensemble.headline.metrics[score]
        # AutoAttack's convention: never more robust than clean
        assert (
            metrics["closed_set_accuracy"] <= clean.headline.metrics[score]["closed_set_accuracy"]
        )
        assert {"eer", "hter", "oscr", "fpr95_unknown_positive"} <= set(metrics)
    document = json.loads((tmp_path / "metrics.json").read_text())
    entry = document["conditions"]["ensemble"]
    assert entry["attack"] == {"name": "ensemble", "version": "fast", "norm": "linf", "eps": 32.0}
    assert set(entry["pairings"]) == {"known"}
    counts = document["counts"]
    decisive = entry["ensemble"]["decisive"]
    assert sum(decisive["accuracy"].values()) == counts["test_known"]
    assert sum(decisive["openmax"].values()) == counts["test_known"] + counts["test_unknown"]
    assert "| ensemble | ensemble fast (linf eps 32/255): apgd-ce" in table


def test_a_rejected_known_image_is_attacked_on_until_no_unknown_scores_above_it():
    # threshold 0: both known images rejected; only the second is above the unknown one,
    # so only it has no pair left for the AUROC to lose
    labels = torch.tensor([0, 0, -1])
    logits = torch.zeros(3, 3)
    for threshold in (0.0, None):
        worst = WorstCase(logits, {"s": torch.tensor([0.5, 2.0, 1.0])}, labels, {"s": threshold})
        assert worst.detected_wrong("s").tolist() == [False, True, False]
    # an unknown image below every known one, but above the threshold, is still attacked
    worst = WorstCase(logits, {"s": torch.tensor([0.5, 2.0, 0.2])}, labels, {"s": 0.0})
    assert worst.detected_wrong("s").tolist() == [True, True, False]


class _CountingMaxLogit(Scorer):
    """``-max logit``, counting the images it scores (a score that runs the model, as ODIN
    or reconstruction, pays a model pass for each)."""

    name = "counting"

    def __init__(self) -> None:
        self.scored = 0

    def score(self, logits, features=None, images=None):
        self.scored += len(logits)
        return -logits.amax(dim=1)


@pytest.mark.parametrize("attack", ["apgd", "square"])
def test_a_score_attack_scores_each_point_once(attack):
    # the threshold's success comes from the objective's own value, not a second score
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    x, labels = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, -1, -1, -1])
    scorer = _CountingMaxLogit()
    objective = score_objective(scorer, "by_label", threshold=0.0)
    budget = {"steps": 5} if attack == "apgd" else {"queries": 5}
    forwards = 0

    def count(module, args, output):
        nonlocal forwards
        forwards += len(args[0])

    model.register_forward_hook(count)
    build_attack(model, AttackConfig(name=attack, eps=8, params=budget), objective=objective)(
        x, labels
    )
    assert scorer.scored == forwards  # one score per model pass, not two
    # and the success it reports is the score's own at the threshold
    logits = model(x)
    value = objective(logits, None, labels)
    assert torch.equal(
        objective.success_from_value(value, labels), objective.success(logits, None, labels)
    )
