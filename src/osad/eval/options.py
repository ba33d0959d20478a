"""What ``osad test --attacks/--scores/--pairings`` selects, applied to a run's config.

``--attacks`` names entries of ``eval.attacks`` or the built-in adaptive attacks:

* ``adaptive``: APGD (Croce & Hein, ICML 2020, https://arxiv.org/abs/2003.01690)
  on each score, known images pushed to look unknown and unknown images to look
  known (Azizmalayeri et al., NeurIPS 2022, https://arxiv.org/abs/2210.14525);
* ``joint``: the same plus the cross-entropy of known images (misclassified or
  rejected).

and every registered attack (:data:`~osad.attacks.ATTACK_SPECS`: ``fgsm``,
``fgsm-rs``, ``pgd``, ``apgd``, ``square``, ``patch``) by its name, with its
default settings on the classifier.

All take their budget (eps, norm) from the run's ``pgd`` attack, or else from
its largest classifier attack, so adaptive and paper attacks are compared at one
budget (the patch attack has its own, the whole pixel range). A config may
define its own under any name with ``target: score`` or ``target: joint`` in
``eval.attacks``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

from osad.attacks.registry import ATTACK_SPECS
from osad.config import ALL_SCORES, DIGITS_EPS, PAIRINGS, AttackConfig, Config, validate
from osad.errors import unknown_name

ADAPTIVE_ATTACKS = {"adaptive": "score", "joint": "joint"}
NO_ENSEMBLE = "none"  # --version none: no ensemble condition


def paper_budget(config: Config) -> AttackConfig:
    """The classifier attack whose budget the built-in adaptive attacks share."""
    classifier = {n: a for n, a in config.eval.attacks.items() if a.target == "classifier"}
    if "pgd" in classifier:
        return classifier["pgd"]
    if classifier:
        return max(classifier.values(), key=lambda a: a.eps)
    return AttackConfig(eps=DIGITS_EPS)


def at_eps(attack: AttackConfig, eps: float) -> AttackConfig:
    """``attack`` at budget ``eps`` (1/255 units), its step sizes (the parameters
    stated in units of eps) scaled in proportion."""
    c = attack.resolved()
    spec = ATTACK_SPECS[c.name]
    params = {}
    for key, value in c.params.items():
        param = spec.params[key]
        if not param.per_eps:
            params[key] = value
        elif c.eps != 0 and not param.fixed:
            params[key] = value * eps / c.eps
    return dataclasses.replace(c, eps=eps, params=params)


def adaptive_attack(config: Config, target: str) -> AttackConfig:
    """APGD with the default steps on ``target`` (score or joint), at the paper budget."""
    base = paper_budget(config)
    return AttackConfig(name="apgd", norm=base.norm, eps=base.eps, target=target)


def named_attack(config: Config, name: str) -> AttackConfig:
    """Registered attack ``name`` with its defaults on the classifier, at the paper
    budget (unless the attack fixes its own, as the patch does)."""
    base = paper_budget(config)
    fixed = ATTACK_SPECS[name].fixed
    return AttackConfig(
        name=name, norm=fixed.get("norm", base.norm), eps=fixed.get("eps", base.eps)
    )


def select_evaluation(
    config: Config,
    attacks: Sequence[str] | None = None,
    scores: Sequence[str] | None = None,
    pairings: Sequence[str] | None = None,
    version: str | None = None,
) -> Config:
    """A copy of ``config`` evaluating only ``attacks`` (names of ``eval.attacks``, of
    :data:`ADAPTIVE_ATTACKS` or registered attacks), ``scores`` (names,
    or ``all``), ``pairings`` (names, or ``all``; ``both`` is always included) and the
    ensemble ``version`` (``fast``, ``standard``, ``plus``, or ``none``). ``None`` keeps
    the config's choice.

    Raises :class:`~osad.errors.ConfigError` for an unknown name.
    """
    config = copy.deepcopy(config)
    if attacks is not None:
        chosen = {}
        for name in attacks:
            if name in config.eval.attacks:
                chosen[name] = config.eval.attacks[name]
            elif name in ADAPTIVE_ATTACKS:
                chosen[name] = adaptive_attack(config, ADAPTIVE_ATTACKS[name])
            elif name in ATTACK_SPECS:
                chosen[name] = named_attack(config, name)
            else:
                known = {*config.eval.attacks, *ADAPTIVE_ATTACKS, *ATTACK_SPECS}
                raise unknown_name("attack", name, known)
        config.eval.attacks = chosen
    if scores is not None:
        config.eval.scores = [ALL_SCORES] if ALL_SCORES in scores else list(scores)
    if pairings is not None:
        if "all" in pairings:
            pairings = PAIRINGS
        for name in pairings:
            if name not in PAIRINGS:
                raise unknown_name("pairing", name, (*PAIRINGS, "all"))
        config.eval.pairings = [p for p in PAIRINGS if p == "both" or p in pairings]
    if version is not None:
        config.eval.version = None if version == NO_ENSEMBLE else version
    validate(config)
    return config
