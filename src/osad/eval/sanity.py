"""Sanity checks against gradient masking (``osad check RUN_DIR``).

After Carlini et al., "On Evaluating Adversarial Robustness" (2019,
https://arxiv.org/abs/1902.06705), section 5: an evaluation whose attacks are
fooled by masked gradients shows tell-tale signs. Each check measures one of
them on the run's test images, for accuracy under the classifier attack (the
paper's protocol) and for AUROC under the adaptive attack on one score (known
images pushed to look unknown, unknown images to look known):

* ``eps_monotone``: accuracy and AUROC fall (never rise by more than ``tol``) as
  eps grows, and reach about zero (``<= zero_tol``) at an unbounded budget
  (linf 255/255: any image is reachable);
* ``more_iterations``: four times the steps and two restarts lower neither by
  more than ``tol``: the attack had converged;
* ``black_box``: the black-box Square attack (gradient-free) is not stronger
  than the white-box attack by more than ``tol``;
* ``gradients``: the input gradients of the margin loss (which, unlike
  cross-entropy, does not saturate) and of the score are finite, and non-zero
  for at least ``nonzero_share`` of the images;
* ``deterministic``: two forward passes give identical logits and scores (a
  randomised defence needs Expectation over Transformation to be attacked);
* ``ensemble`` (only with ``version``): the per-sample worst-case ensemble
  (:mod:`osad.eval.ensemble`) is not stronger than the attack under test by more
  than ``tol``: the configured attack is close to the worst case.

The attack under test is the run's ``pgd`` entry of ``eval.attacks`` (else its
largest classifier attack); eps values of the sweep are multiples of its eps.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from osad.attacks import ATTACK_SPECS, eval_mode, margin, model_outputs
from osad.attacks.objectives import Objective, objective_values, score_objective
from osad.attacks.outputs import Outputs, outputs_under_attack
from osad.config import AttackConfig, Config
from osad.data import OpenSetData, to_float
from osad.errors import ConfigError, unknown_name
from osad.eval.ensemble import get_version, run_ensemble
from osad.eval.metrics import auroc, closed_set_accuracy
from osad.eval.options import at_eps, paper_budget
from osad.eval.protocol import adaptive_objective, make_scorers, score_outputs
from osad.openset import SCORERS, Scorer


@dataclass
class CheckSettings:
    """What the checks measure on, and how much slack each allows."""

    images: int = 1000  # test images (known and unknown, a seeded sample)
    score: str = "msp"  # the score whose AUROC is checked
    eps_multiples: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
    square_queries: int = 1000
    # An ensemble version (osad.eval.ensemble): also check the attack against it.
    version: str | None = None
    tol: float = 0.03
    zero_tol: float = 0.1
    nonzero_share: float = 0.95

    def validate(self) -> None:
        """Raise :class:`~osad.errors.ConfigError` for a setting no check can use."""
        if self.score not in SCORERS:
            raise unknown_name("score", self.score, SCORERS)
        for name in ("images", "square_queries"):
            if getattr(self, name) < 1:
                raise ConfigError(f"check setting '{name}' must be >= 1, got {getattr(self, name)}")
        if self.version is not None:
            get_version(self.version)


@dataclass
class CheckResult:
    name: str
    passed: bool
    summary: str  # one line with the figures
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class Probe:
    """The model, the test sample and the fitted score the checks share."""

    model: nn.Module
    images: Tensor
    labels: Tensor  # -1 for unknown
    scorer: Scorer
    batch_size: int
    seed: int
    # One step per measurement and per check, with an ETA; a bar per attack pass below it.
    bar: tqdm | None = None

    def measure(self, attack: AttackConfig | None) -> tuple[float, float]:
        """(accuracy under ``attack`` on the classifier, AUROC under ``attack`` on the score).

        Without an attack, both are the clean figures."""
        what = "clean" if attack is None else attack.describe()
        self.step(what)
        known = self.labels >= 0
        classifier = self._outputs(attack, None, f"{what}, classifier")
        accuracy = closed_set_accuracy(classifier.logits[known], self.labels[known])
        if attack is None:
            detector = classifier
        else:
            score_attack = dataclasses.replace(attack, target="score")
            objective = adaptive_objective(self.scorer, score_attack)
            detector = self._outputs(score_attack, objective, f"{what}, score")
        scores = score_outputs(self.scorer, self.model, detector, self.batch_size)
        return accuracy, auroc(scores, ~known.cpu())

    def step(self, what: str) -> None:
        """Count the previous step done and name the next one on the progress bar."""
        if self.bar is not None:
            if self.bar.n or self.bar.postfix:
                self.bar.update(1)
            self.bar.set_postfix_str(what)

    def _outputs(
        self, attack: AttackConfig | None, objective: Objective | None, desc: str
    ) -> Outputs:
        return outputs_under_attack(
            self.model,
            self.images,
            self.labels,
            attack,
            batch_size=self.batch_size,
            seed=self.seed,
            objective=objective,
            keep_images=self.scorer.needs_images,
            desc=desc,
            progress=self.bar is not None,
        )


def make_probe(
    model: nn.Module, data: OpenSetData, config: Config, settings: CheckSettings, train: Outputs
) -> Probe:
    """A seeded sample of ``settings.images`` test images (on the model's device) and the
    check score, fitted on the clean ``train`` outputs."""
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(data.test_labels), generator=generator)[: settings.images]
    order = order.to(data.test_labels.device)
    only_score = dataclasses.replace(config.eval, scores=[settings.score])
    scorer = make_scorers(dataclasses.replace(config, eval=only_score), model)[settings.score]
    scorer.fit(train.logits, train.features, data.train_labels)
    return Probe(
        model,
        data.test_images[order],
        data.test_labels[order],
        scorer,
        config.eval.batch_size,
        config.seed,
    )


def unbounded_eps(attack: AttackConfig, images: Tensor) -> float:
    """A budget (1/255 units) that reaches every image of the [0, 1] box."""
    if attack.norm == "linf":
        return 255.0
    return 255.0 * math.sqrt(images[0].numel())


def _falls(values: list[float], tol: float) -> bool:
    return all(later <= earlier + tol for earlier, later in pairwise(values))


def check_eps_monotone(probe: Probe, base: AttackConfig, s: CheckSettings) -> CheckResult:
    eps = [m * base.eps for m in s.eps_multiples] + [unbounded_eps(base, probe.images)]
    figures = {"eps": eps, "accuracy": [], "auroc": []}
    for e in eps:
        accuracy, area = probe.measure(at_eps(base, e) if e > 0 else None)
        figures["accuracy"].append(accuracy)
        figures["auroc"].append(area)
    passed = (
        _falls(figures["accuracy"], s.tol)
        and _falls(figures["auroc"], s.tol)
        and figures["accuracy"][-1] <= s.zero_tol
        and figures["auroc"][-1] <= s.zero_tol
    )
    summary = (
        f"eps {_row(eps, '{:g}')}: accuracy {_row(figures['accuracy'])}, "
        f"AUROC {_row(figures['auroc'])}"
    )
    return CheckResult("eps_monotone", passed, summary, figures)


def stronger(attack: AttackConfig) -> AttackConfig:
    """The same attack with four times the steps and two restarts."""
    c = attack.resolved()
    params = dict(c.params)
    if "steps" in params and not ATTACK_SPECS[c.name].params["steps"].fixed:
        params["steps"] *= 4
    return dataclasses.replace(c, params=params, restarts=max(2, c.restarts))


def check_more_iterations(
    probe: Probe, base: AttackConfig, baseline: tuple[float, float], s: CheckSettings
) -> CheckResult:
    strong = stronger(base)
    accuracy, area = probe.measure(strong)
    passed = accuracy >= baseline[0] - s.tol and area >= baseline[1] - s.tol
    summary = (
        f"{base.resolved().params.get('steps')} steps: accuracy {baseline[0]:.3f}, "
        f"AUROC {baseline[1]:.3f}; {strong.params.get('steps')} steps x "
        f"{strong.restarts} restarts: "
        f"accuracy {accuracy:.3f}, AUROC {area:.3f}"
    )
    figures = {"base": list(baseline), "stronger": [accuracy, area], "attack": strong.describe()}
    return CheckResult("more_iterations", passed, summary, figures)


def black_box(base: AttackConfig, queries: int) -> AttackConfig:
    return AttackConfig(name="square", norm=base.norm, eps=base.eps, params={"queries": queries})


def check_black_box(
    probe: Probe, base: AttackConfig, baseline: tuple[float, float], s: CheckSettings
) -> CheckResult:
    square = black_box(base, s.square_queries)
    accuracy, area = probe.measure(square)
    passed = accuracy >= baseline[0] - s.tol and area >= baseline[1] - s.tol
    summary = (
        f"white-box: accuracy {baseline[0]:.3f}, AUROC {baseline[1]:.3f}; "
        f"Square ({s.square_queries} queries): accuracy {accuracy:.3f}, AUROC {area:.3f}"
    )
    figures = {"white_box": list(baseline), "square": [accuracy, area]}
    return CheckResult("black_box", passed, summary, figures)


def check_ensemble(
    probe: Probe,
    base: AttackConfig,
    baseline: tuple[float, float],
    train: Outputs,
    train_labels: Tensor,
    s: CheckSettings,
) -> CheckResult:
    """The ensemble of ``s.version`` on the probe (no threshold: no sample skipped) is not
    stronger than the attack under test by more than ``tol``."""
    name, bs = s.score, probe.batch_size

    def outputs(images, labels, attack, seed, desc, objective=None) -> Outputs:
        return outputs_under_attack(
            probe.model,
            images,
            labels,
            attack,
            batch_size=bs,
            seed=seed,
            objective=objective,
            keep_images=probe.scorer.needs_images,
        )

    def score(_: str, out: Outputs) -> Tensor:
        return score_outputs(probe.scorer, probe.model, out, bs)

    clean = outputs(probe.images, probe.labels, None, probe.seed, "clean")
    logits, scores, _ = run_ensemble(
        s.version,
        base,
        {name: probe.scorer},
        {name: None},
        (clean.logits.cpu(), {name: score(name, clean)}),
        (train.logits, train.features, train_labels),
        probe.images,
        probe.labels,
        outputs,
        score,
        probe.seed,
    )
    labels = probe.labels.cpu()
    known = labels >= 0
    accuracy = closed_set_accuracy(logits[name][known], labels[known])
    area = auroc(scores[name], ~known)
    passed = accuracy >= baseline[0] - s.tol and area >= baseline[1] - s.tol
    summary = (
        f"attack under test: accuracy {baseline[0]:.3f}, AUROC {baseline[1]:.3f}; "
        f"ensemble {s.version}: accuracy {accuracy:.3f}, AUROC {area:.3f}"
    )
    figures = {"attack": list(baseline), "ensemble": [accuracy, area]}
    return CheckResult("ensemble", passed, summary, figures)


def input_gradients(probe: Probe) -> dict[str, Tensor]:
    """Per image, the input-gradient norm of the margin loss and of the score."""
    detection = score_objective(probe.scorer, "by_label")
    norms: dict[str, list[Tensor]] = {"margin": [], "score": []}
    with eval_mode(probe.model):
        for i in range(0, len(probe.images), probe.batch_size):
            x = to_float(probe.images[i : i + probe.batch_size]).requires_grad_(True)
            labels = probe.labels[i : i + probe.batch_size]
            logits, features = model_outputs(probe.model, x)
            with torch.no_grad():
                target = torch.where(labels >= 0, labels, logits.argmax(1))
            values = {
                "margin": margin(logits, features, target),
                "score": objective_values(detection, logits, features, labels, x),
            }
            for name, value in values.items():
                (grad,) = torch.autograd.grad(value.sum(), x, retain_graph=True)
                norms[name].append(grad.flatten(1).norm(dim=1).detach().cpu())
    return {name: torch.cat(parts) for name, parts in norms.items()}


def check_gradients(probe: Probe, s: CheckSettings) -> CheckResult:
    norms = input_gradients(probe)
    figures = {}
    passed = True
    for name, values in norms.items():
        finite = bool(torch.isfinite(values).all())
        nonzero = float((values > 0).float().mean())
        figures[name] = {"finite": finite, "nonzero_share": nonzero}
        passed = passed and finite and nonzero >= s.nonzero_share
    summary = "; ".join(
        f"{name}: {'finite' if f['finite'] else 'NOT finite'}, non-zero for "
        f"{f['nonzero_share']:.1%} of images"
        for name, f in figures.items()
    )
    return CheckResult("gradients", passed, summary, figures)


def check_deterministic(
    probe: Probe, scorers: dict[str, Scorer], train: Outputs, train_labels: Tensor
) -> CheckResult:
    for scorer in scorers.values():
        scorer.fit(train.logits, train.features, train_labels)
    x = to_float(probe.images[: probe.batch_size])
    runs = []
    with eval_mode(probe.model):
        for _ in range(2):
            with torch.no_grad():
                logits, features = model_outputs(probe.model, x)
            runs.append(
                {"logits": logits}
                | {
                    name: scorer.score(logits, features, x if scorer.needs_images else None)
                    for name, scorer in scorers.items()
                }
            )
    differing = [k for k in runs[0] if not torch.equal(runs[0][k], runs[1][k])]
    passed = not differing
    summary = (
        f"two passes over {len(x)} images: logits and {len(scorers)} scores identical"
        if passed
        else f"two passes over {len(x)} images differ in: {', '.join(differing)}"
    )
    return CheckResult("deterministic", passed, summary, {"differing": differing})


def run_checks(
    model: nn.Module,
    data: OpenSetData,
    config: Config,
    settings: CheckSettings | None = None,
    *,
    progress: bool = False,
) -> list[CheckResult]:
    """Every check, in order; see the module docstring. ``progress``: a bar on stderr
    over the measurements (one per attack budget and check, with an ETA) and one per
    attack pass."""
    s = settings or CheckSettings()
    s.validate()
    model = model.eval()
    data = data.to(next(model.parameters()).device)
    # The clean fit pass, the baseline, each eps (and the unbounded one), the stronger
    # and the black-box attacks, the gradient and the determinism checks.
    steps = 1 + 1 + len(s.eps_multiples) + 1 + 2 + 2 + (s.version is not None)
    with tqdm(
        total=steps, desc="check", unit="step", disable=not progress, dynamic_ncols=True
    ) as bar:
        bar = None if bar.disable else bar
        if bar is not None:
            bar.set_postfix_str("clean training images (score fit)")
        train = outputs_under_attack(
            model,
            data.train_images,
            data.train_labels,
            None,
            batch_size=config.eval.batch_size,
            seed=config.seed,
            desc="score fit",
            progress=progress,
        )
        probe = make_probe(model, data, config, s, train)
        probe.bar = bar
        base = paper_budget(config).resolved()
        baseline = probe.measure(base)
        results = [
            check_eps_monotone(probe, base, s),
            check_more_iterations(probe, base, baseline, s),
            check_black_box(probe, base, baseline, s),
        ]
        probe.step("gradients")
        results.append(check_gradients(probe, s))
        probe.step("deterministic")
        scorers = make_scorers(config, model)
        results.append(check_deterministic(probe, scorers, train, data.train_labels))
        if s.version is not None:
            probe.step(f"ensemble ({s.version})")
            results.append(check_ensemble(probe, base, baseline, train, data.train_labels, s))
        probe.step("done")
    return results


def _row(values: list[float], fmt: str = "{:.3f}") -> str:
    return " ".join(fmt.format(v) for v in values)
