"""The OSAD test protocol (Shao et al., ECCV 2020, section 4), with adaptive attacks.

For every condition (``clean`` and each attack of ``eval.attacks``):

* the attack's ``target`` says what it maximises. ``classifier`` (the paper's
  protocol): known test images are attacked with their true label, unknown
  test images with the label the model predicts for the clean image.
  ``score`` (adaptive, Azizmalayeri et al., NeurIPS 2022,
  https://arxiv.org/abs/2210.14525): for each score separately, known images
  are pushed to look unknown and unknown images to look known, against that
  score as fitted for the test. ``joint``: as ``score``, plus the
  classification loss on known images (misclassified *or* rejected);
* attacked known and attacked unknown outputs are computed once and combined
  into the pairings of ``eval.pairings``: ``both`` attacked (the headline),
  ``known`` attacked with unknown clean, ``unknown`` attacked with known clean;
* each score is fitted on the training images (OpenMax of the paper: the
  logits of the correctly classified training images, attacked under the same
  classifier attack with their true labels when ``eval.openmax_fit`` is
  ``attacked``; adaptive conditions use the clean fit, the detector the
  attacker faces) and every metric of :func:`~osad.eval.metrics.open_set_metrics`
  is computed per score and pairing, with the acceptance threshold fixed at 95%
  of the clean known validation images.

Fits are shared: one per fit set (clean, or each classifier attack), reused
by every condition and pairing that needs it. Attacks are seeded per batch, so
the same model and seed give the same numbers, also when ``torchrun`` shares
the batches among several processes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from osad.attacks import eval_mode, get_objective, score_objective
from osad.attacks.objectives import Objective, joint_objective
from osad.attacks.outputs import Outputs, outputs_under_attack
from osad.config import AttackConfig, Config, score_names
from osad.data import OpenSetData
from osad.distributed import is_main, map_batches
from osad.eval.ensemble import run_ensemble
from osad.eval.metrics import acceptance_threshold, open_set_metrics
from osad.eval.options import paper_budget
from osad.openset import OpenMax, Scorer, make_scorer
from osad.perf import autocast


@dataclass
class PairingResult:
    """Per-sample results and metrics of one pairing, per score.

    Under a classifier attack every score sees the same logits; under an adaptive
    attack each score has its own attacked images, hence its own logits.
    """

    logits: dict[str, Tensor]
    scores: dict[str, Tensor]
    metrics: dict[str, dict[str, float]]

    @property
    def auroc(self) -> dict[str, float]:
        return {name: m["auroc"] for name, m in self.metrics.items()}

    @property
    def closed_set_accuracy(self) -> float:
        """Accuracy on the known images; the lowest over scores under adaptive attacks."""
        return min(m["closed_set_accuracy"] for m in self.metrics.values())


@dataclass
class ConditionResult:
    name: str
    attack: dict[str, Any] | None
    pairings: dict[str, PairingResult]  # "both" always
    scorer_fit: dict[str, Any] = field(default_factory=dict)
    # Per score: test images whose attack met a non-finite objective value or gradient.
    nonfinite_gradients: dict[str, int] = field(default_factory=dict)
    # The ensemble condition: version, members, decisive counts (osad.eval.ensemble).
    ensemble: dict[str, Any] | None = None

    @property
    def headline(self) -> PairingResult:
        return self.pairings["both"]

    @property
    def closed_set_accuracy(self) -> float:
        return self.headline.closed_set_accuracy

    @property
    def auroc(self) -> dict[str, float]:
        return self.headline.auroc

    @property
    def scores(self) -> dict[str, Tensor]:
        return self.headline.scores


@dataclass
class EvalResult:
    conditions: list[ConditionResult]
    test_labels: Tensor  # remapped known label, -1 for unknown
    test_classes: Tensor  # original class id


def make_scorers(config: Config, model: nn.Module) -> dict[str, Scorer]:
    """The scorers of ``eval.scores``, unfitted, with their ``eval.score_options``."""
    options = config.eval.score_options
    return {
        name: make_scorer(name, model=model, **options.get(name, {}))
        for name in score_names(config)
    }


def score_outputs(scorer: Scorer, model: nn.Module, outputs: Outputs, batch_size: int) -> Tensor:
    """``scorer`` on ``outputs`` in batches (scores that run the model cost memory), on CPU;
    under torchrun the batches are shared out among the ranks."""

    def score_batch(index: int, batch: slice) -> tuple[Tensor]:
        features = None if outputs.features is None else outputs.features[batch]
        images = None if outputs.images is None else outputs.images[batch]
        with torch.no_grad():
            return (scorer.score(outputs.logits[batch], features, images),)

    with eval_mode(model):
        (scores,) = map_batches(score_batch, len(outputs.logits), batch_size, outputs.logits.device)
    return scores.cpu()


def _scorer_fit_report(scorer: Scorer) -> dict[str, Any]:
    if isinstance(scorer, OpenMax):  # both variants
        return {
            "correct_per_class": [f.correct for f in scorer.class_fits],
            "tail_per_class": [f.tail for f in scorer.class_fits],
            "classes_fitted_on_all_images": [
                i for i, f in enumerate(scorer.class_fits) if f.used_misclassified
            ],
        }
    return {}


def adaptive_objective(scorer: Scorer, attack: AttackConfig) -> Objective:
    """The objective of an adaptive attack on ``scorer``: its score pushed the wrong way
    for each image (``by_label``), plus, for the ``joint`` target, the attack's
    classification loss on known images."""
    detection = score_objective(scorer, "by_label")
    if attack.target == "joint":
        return joint_objective(get_objective(attack.resolved().loss), detection)
    return detection


@dataclass
class FittedScores:
    """Scorers fitted on one fit set, with what every condition using that fit shares:
    the clean test scores and the acceptance thresholds."""

    scorers: dict[str, Scorer]
    clean_scores: dict[str, Tensor]
    thresholds: dict[str, float | None]
    report: dict[str, Any]
    model: nn.Module
    batch_size: int
    train: Outputs  # the training outputs the scorers were fitted on

    def score(self, name: str, outputs: Outputs) -> Tensor:
        return score_outputs(self.scorers[name], self.model, outputs, self.batch_size)


def pair(is_known: Tensor, known_from: Tensor, unknown_from: Tensor) -> Tensor:
    """Per sample: the row of ``known_from`` for a known image, of ``unknown_from`` otherwise."""
    mask = is_known.view(-1, *([1] * (known_from.dim() - 1)))
    return torch.where(mask, known_from, unknown_from)


def pairing_sources(pairing: str) -> tuple[bool, bool]:
    """(known images attacked, unknown images attacked) in ``pairing``."""
    return pairing in ("both", "known"), pairing in ("both", "unknown")


def combine_pairings(
    pairings: list[str],
    is_known: Tensor,
    clean: tuple[dict[str, Tensor], dict[str, Tensor]],
    attacked: tuple[dict[str, Tensor], dict[str, Tensor]],
    measure: Callable[[str, Tensor, Tensor], dict[str, float]],
) -> dict[str, PairingResult]:
    """Each pairing from the (logits, scores) per score of the clean and the attacked
    test images; ``measure(score, scores, logits)`` gives its metrics."""
    results = {}
    for pairing in pairings:
        known_attacked, unknown_attacked = pairing_sources(pairing)
        logits, scores, metrics = {}, {}, {}
        for name in attacked[1]:
            for kind, out in ((0, logits), (1, scores)):
                known_side = attacked[kind][name] if known_attacked else clean[kind][name]
                unknown_side = attacked[kind][name] if unknown_attacked else clean[kind][name]
                out[name] = pair(is_known, known_side, unknown_side)
            metrics[name] = measure(name, scores[name], logits[name])
        results[pairing] = PairingResult(logits, scores, metrics)
    return results


def fits_attacked(config: Config, attack: AttackConfig) -> bool:
    """Whether the scores of ``attack``'s condition are fitted on attacked training images
    (a classifier attack under ``eval.openmax_fit: attacked``) rather than clean ones."""
    return attack.target == "classifier" and config.eval.openmax_fit == "attacked"


def condition_settings(
    config: Config, evaluated: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Per condition :func:`evaluate` computes for ``config`` (``clean``, each of
    ``eval.attacks``, then the ``ensemble`` of ``eval.version``), every setting its
    numbers depend on: the attack (resolved), the scores, pairings, fit, batch size
    (attacks are seeded per batch), seed and precision, and the sha256 of the weights
    file and the data fingerprint from ``evaluated``
    (``{"model": {"weights_sha256": ...}, "data": {"fingerprint": ...}}``; without it,
    these two keys are left out: the settings any run of ``config`` is evaluated under,
    which the sweep compares its runs with).

    Two evaluations whose settings for a condition are equal give the same numbers for
    it (on the same thread count), so an incremental ``osad test`` reuses it.
    """
    e = config.eval
    shared = {
        "scores": score_names(config),
        "score_options": e.score_options,
        "batch_size": e.batch_size,
        "seed": config.seed,
        "bf16": config.perf.bf16,
    }
    if evaluated is not None:
        shared["model_sha256"] = evaluated["model"]["weights_sha256"]
        shared["data_fingerprint"] = evaluated["data"]["fingerprint"]
    settings = {
        "clean": {"attack": {"name": "none"}, "pairings": ["both"], "fit": "clean", **shared}
    }
    for name, attack in e.attacks.items():
        settings[name] = {
            "attack": attack.record(),
            "pairings": list(e.pairings),
            "fit": "attacked" if fits_attacked(config, attack) else "clean",
            **shared,
        }
    if e.version is not None:
        settings[ENSEMBLE] = {
            "attack": ensemble_attack(config),
            "pairings": list(e.pairings),
            "fit": "clean",
            **shared,
        }
    return settings


def evaluate(
    model: nn.Module,
    data: OpenSetData,
    config: Config,
    progress: bool = True,
    skip: Collection[str] = (),
) -> EvalResult:
    """Run the test protocol of ``config.eval`` on ``data`` (moved to the model's device).

    Conditions named in ``skip`` (results an incremental ``osad test`` reuses; never
    ``clean``, which every fit needs) are not computed. They stay in ``config``, so
    budgets derived from the whole evaluation (:func:`~osad.eval.options.paper_budget`)
    do not change.

    Forward passes run under ``config.perf``'s autocast; the model-side switches
    (channels_last, compile) are the caller's, see :func:`osad.perf.prepare_model`.
    """
    device = next(model.parameters()).device
    data = data.to(device)
    bs = config.eval.batch_size
    probe = make_scorers(config, model)  # refuses a bad score before any attack runs
    names = list(probe)
    is_known = data.test_known.cpu()
    labels = data.test_labels.cpu()
    keep_images = any(scorer.needs_images for scorer in probe.values())

    def outputs(
        images: Tensor,
        labels: Tensor | None,
        attack: AttackConfig | None,
        seed: int,
        desc: str,
        objective: Objective | None = None,
    ) -> Outputs:
        # Autocast covers the model (and the score inside an adaptive attack's objective);
        # the scores reported are computed afterwards, in fp32.
        with autocast(config.perf, device):
            return outputs_under_attack(
                model,
                images,
                labels,
                attack,
                batch_size=bs,
                seed=seed,
                objective=objective,
                desc=desc,
                progress=progress,
                keep_images=keep_images,
            )

    clean_test = outputs(data.test_images, data.test_labels, None, config.seed, "clean test")
    clean_val = (
        outputs(data.val_images, data.val_labels, None, config.seed, "clean val")
        if len(data.val_images)
        else None
    )
    fits: dict[str, FittedScores] = {}

    def fitted(fit_name: str, attack: AttackConfig | None) -> FittedScores:
        if fit_name not in fits:
            train = outputs(
                data.train_images, data.train_labels, attack, config.seed + 1, f"{fit_name} fit"
            )
            scorers = make_scorers(config, model)
            for scorer in scorers.values():
                scorer.fit(train.logits, train.features, data.train_labels)
            fits[fit_name] = FittedScores(
                scorers,
                {n: score_outputs(s, model, clean_test, bs) for n, s in scorers.items()},
                {
                    n: None
                    if clean_val is None
                    else acceptance_threshold(score_outputs(s, model, clean_val, bs))
                    for n, s in scorers.items()
                },
                {n: r for n, s in scorers.items() if (r := _scorer_fit_report(s))},
                model,
                bs,
                train,
            )
        return fits[fit_name]

    clean_logits = {n: clean_test.logits.cpu() for n in names}
    conditions: list[tuple[str, AttackConfig | None]] = [("clean", None)]
    conditions += [(n, a) for n, a in config.eval.attacks.items() if n not in skip]
    results = []
    # One step per condition (ETA over the conditions); below it, a bar per attack pass.
    bar = tqdm(conditions, desc="evaluate", unit="condition", disable=not (progress and is_main()))
    for name, attack in bar:
        bar.set_postfix_str(name if attack is None else f"{name}: {attack.describe()}")
        attacked_fit = attack is not None and fits_attacked(config, attack)
        fit = fitted(name if attacked_fit else "clean", attack if attacked_fit else None)

        def measure(score: str, scores: Tensor, logits: Tensor, fit=fit) -> dict[str, float]:
            return open_set_metrics(scores, ~is_known, logits, labels, fit.thresholds[score])

        clean = (clean_logits, fit.clean_scores)
        if attack is None:
            pairings = combine_pairings(["both"], is_known, clean, clean, measure)
            nonfinite = {}
        else:
            attacked_logits, attacked_scores, nonfinite = _attacked_outputs(
                name, attack, fit, outputs, data, config.seed
            )
            attacked = (attacked_logits, attacked_scores)
            pairings = combine_pairings(config.eval.pairings, is_known, clean, attacked, measure)
        results.append(
            ConditionResult(
                name=name,
                attack=None if attack is None else attack.record(),
                pairings=pairings,
                scorer_fit=fit.report,
                nonfinite_gradients=nonfinite,
            )
        )
    if config.eval.version is not None and ENSEMBLE not in skip:
        fit = fitted("clean", None)
        results.append(_ensemble_condition(config, fit, outputs, data, clean_test.logits.cpu()))
    return EvalResult(results, labels, data.test_classes.cpu())


ENSEMBLE = "ensemble"  # the condition's name


def _ensemble_condition(
    config: Config,
    fit: FittedScores,
    outputs: Callable[..., Outputs],
    data: OpenSetData,
    clean_logits: Tensor,
) -> ConditionResult:
    """The ensemble of ``eval.version`` (:mod:`osad.eval.ensemble`) at the paper's budget,
    against the scorers fitted on clean training outputs (the detector the attacker faces)."""
    base = paper_budget(config)
    is_known, labels = data.test_known.cpu(), data.test_labels.cpu()
    logits, scores, report = run_ensemble(
        config.eval.version,
        base,
        fit.scorers,
        fit.thresholds,
        (clean_logits, fit.clean_scores),
        (fit.train.logits, fit.train.features, data.train_labels),
        data.test_images,
        data.test_labels,
        outputs,
        fit.score,
        config.seed,
    )

    def measure(score: str, values: Tensor, logits: Tensor) -> dict[str, float]:
        return open_set_metrics(values, ~is_known, logits, labels, fit.thresholds[score])

    clean_pair = ({n: clean_logits for n in scores}, fit.clean_scores)
    pairings = combine_pairings(
        config.eval.pairings, is_known, clean_pair, (logits, scores), measure
    )
    return ConditionResult(ENSEMBLE, ensemble_attack(config), pairings, fit.report, ensemble=report)


def ensemble_attack(config: Config) -> dict[str, Any]:
    """The ensemble condition's ``attack`` entry in metrics.json: version and budget."""
    base = paper_budget(config)
    return {"name": ENSEMBLE, "version": config.eval.version, "norm": base.norm, "eps": base.eps}


def _attacked_outputs(
    name: str,
    attack: AttackConfig,
    fit: FittedScores,
    outputs: Callable[..., Outputs],
    data: OpenSetData,
    seed: int,
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, int]]:
    """(logits, scores, count of test images whose attack met a non-finite objective value
    or gradient) per score under ``attack``: one attack pass shared by all scores for
    the classifier target, one per score otherwise."""
    logits, scores, nonfinite = {}, {}, {}
    if attack.target == "classifier":
        test = outputs(data.test_images, data.test_labels, attack, seed, f"{name} test")
        for score in fit.scorers:
            logits[score] = test.logits.cpu()
            scores[score] = fit.score(score, test)
            nonfinite[score] = int(test.nonfinite.sum())
        return logits, scores, nonfinite
    for score, scorer in fit.scorers.items():
        test = outputs(
            data.test_images,
            data.test_labels,
            attack,
            seed,
            f"{name} on {score}",
            objective=adaptive_objective(scorer, attack),
        )
        logits[score] = test.logits.cpu()
        scores[score] = fit.score(score, test)
        nonfinite[score] = int(test.nonfinite.sum())
    return logits, scores, nonfinite
