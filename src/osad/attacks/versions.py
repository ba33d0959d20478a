"""The ensemble's versions: fixed lists of attacks on objectives, each at a fixed cost.

The tables are what :mod:`osad.eval.ensemble` runs (see its docstring for the
per-sample worst case); they live among the attacks so that the configuration can
check ``eval.version`` without importing the evaluation. Croce & Hein, ICML 2020
(https://arxiv.org/abs/2003.01690) for the closed-set members.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from osad.errors import unknown_name

if TYPE_CHECKING:
    from osad.config import AttackConfig

KINDS = ("closed", "unknown", "surrogate", "score")


@dataclass(frozen=True)
class Member:
    """One attack of a version: a registry attack on one objective, at a fixed cost.

    ``objective`` names a classification loss of :data:`osad.attacks.OBJECTIVES`
    (kind ``closed``; kind ``unknown``: ``margin`` or ``ce``, the targeted margin or
    log-probability), a surrogate
    of :data:`SURROGATES` (kind ``surrogate``), or ``score``/``smooth`` (kind
    ``score``: the score itself, or its smooth surrogate of :data:`SMOOTH`).
    ``budget`` is APGD's steps or Square's queries. ``targets`` > 0: a targeted run
    towards each of the ``targets`` highest classes of the clean logits, one after
    the other: for kind ``closed`` the known images towards the classes other than
    their label, for kind ``unknown`` the unknown images towards their own top
    classes (the predicted class first).
    """

    name: str
    kind: str
    attack: str
    objective: str
    budget: int
    targets: int = 0

    @property
    def params(self) -> dict[str, int]:
        """The attack's parameters: its budget as APGD's ``steps`` or Square's ``queries``."""
        return {"queries": self.budget} if self.attack == "square" else {"steps": self.budget}


_FAST = (
    Member("apgd-ce", "closed", "apgd", "ce", 100),
    Member("apgd-mav", "surrogate", "apgd", "mav", 100),
    Member("apgd-maxlogit", "surrogate", "apgd", "maxlogit", 100),
    Member("apgd-score", "score", "apgd", "score", 100),
    Member("apgd-smooth", "score", "apgd", "smooth", 100),
)
_STANDARD = (
    *_FAST[:1],
    Member("apgd-t", "closed", "apgd", "margin", 100, targets=9),
    *_FAST[1:3],
    Member("apgd-mav-latent", "surrogate", "apgd", "mav-latent", 100),
    Member("apgd-top2", "surrogate", "apgd", "top2-margin", 100),
    Member("apgd-energy", "surrogate", "apgd", "energy", 100),
    *_FAST[3:],
    Member("square", "closed", "square", "margin", 1000),
    Member("square-score", "score", "square", "score", 1000),
    Member("apgd-t-unknown", "unknown", "apgd", "margin", 100, targets=5),
    Member("apgd-entropy", "surrogate", "apgd", "entropy", 100),
)
_PLUS = (
    *_STANDARD[:2],
    Member("apgd-dlr", "closed", "apgd", "dlr", 100),
    *_STANDARD[2:-4],
    Member("square", "closed", "square", "margin", 5000),
    Member("square-score", "score", "square", "score", 5000),
    *_STANDARD[-2:],
    Member("apgd-t-unknown-ce", "unknown", "apgd", "ce", 100, targets=5),
)

VERSIONS: dict[str, tuple[Member, ...]] = {
    "fast": _FAST,
    "standard": _STANDARD,
    "plus": _PLUS,
}


def get_version(name: str) -> tuple[Member, ...]:
    """The members of version ``name``; :class:`~osad.errors.ConfigError` if unknown."""
    if name not in VERSIONS:
        raise unknown_name("ensemble version (eval.version)", name, VERSIONS)
    return VERSIONS[name]


def describe(version: str, base: AttackConfig) -> str:
    """One line for tables, e.g. ``ensemble fast (linf eps 32/255): apgd-ce, ...``."""
    members = ", ".join(m.name for m in get_version(version))
    return f"ensemble {version} ({base.norm} eps {base.eps:g}/255): {members}"
