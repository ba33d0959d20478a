"""The attack registry: each attack class declares its name, its parameters and
whether it can train with the :func:`register_attack` decorator.

A configured attack (:class:`osad.config.AttackConfig`) states what every attack
shares (``name``, ``norm``, ``eps``, ``restarts``, ``loss``, ``target``) and a
``params`` mapping of the attack's own parameters, checked here against the
attack's :class:`Param` entries. Budgets (``eps`` and step sizes) are in 1/255 units
of the [0, 1] pixel range. Adding an attack is one file with one decorator::

    @register_attack("toy", "one signed-gradient step of eps", params={
        "steps": Param(1, "iterations", at_least=1, caption="{} steps")})
    class Toy(Attack): ...
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from osad.attacks.engine import NORMS
from osad.attacks.objectives import OBJECTIVES
from osad.errors import ConfigError, did_you_mean, shown, unknown_name

# What an attack maximises: the classifier's loss (the paper's protocol), the score of
# the open-set detector under test (adaptive), or both at once (see docs/evaluation.md).
TARGETS = ("classifier", "score", "joint")
# The fields of every configured attack; the rest are an attack's own parameters.
SHARED_FIELDS = ("name", "norm", "eps", "restarts", "loss", "target")


@dataclass(frozen=True)
class Param:
    """One parameter of an attack, as a configuration states it.

    ``default``: the value an unset parameter takes (its type is the parameter's
    type). ``per_eps``: a step size in 1/255 units whose default is ``default``
    times ``eps``, passed to the attack in [0, 1] units. ``fixed``: the attack
    always uses the default; a configuration may only restate it. ``at_least`` /
    ``above`` / ``at_most``: the allowed range. ``arg``: the constructor keyword (the
    parameter's name if unset). ``caption``: how :func:`describe` shows it (a format
    with one ``{}``; unset: not shown).
    """

    default: Any
    doc: str
    per_eps: bool = False
    fixed: bool = False
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    arg: str | None = None
    caption: str | None = None

    @property
    def type(self) -> type:
        return type(self.default)

    def value(self, eps: float) -> Any:
        """The default in the configuration's units, for an attack of budget ``eps``."""
        return self.default * eps if self.per_eps else self.default

    def check(self, value: Any, key: str) -> None:
        """Raise a one-line :class:`ConfigError` unless ``value`` is in range."""
        low = (
            f"[{self.at_least:g}" if self.at_least is not None
            else f"({self.above:g}" if self.above is not None else None
        )  # fmt: skip
        if (
            (self.at_least is None or value >= self.at_least)
            and (self.above is None or value > self.above)
            and (self.at_most is None or value <= self.at_most)
        ):
            return
        unit = " (in 1/255 units)" if self.per_eps else ""
        if low is not None and self.at_most is not None:
            bound = f"in {low}, {self.at_most:g}]"
        elif low is not None:
            bound = (">= " if low[0] == "[" else "> ") + low[1:]
        else:
            bound = f"<= {self.at_most:g}"
        raise ConfigError(f"'{key}' must be {bound}{unit}, got {shown(value)}")


def step_size(times_eps: float) -> Param:
    """The parameter ``alpha`` of a gradient attack: a step in 1/255 units, by default
    ``times_eps`` times the budget."""
    return Param(
        times_eps,
        f"step size in 1/255 (default: {times_eps:g} eps)",
        per_eps=True,
        above=0,
        caption="step {:g}/255",
    )


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: its class and what a configuration may say about it.

    ``fixed`` holds shared fields the attack always takes (the patch's budget is the
    whole pixel range: ``eps`` 255, ``norm`` linf); ``loss`` the default loss.
    """

    name: str
    cls: type
    description: str
    params: dict[str, Param]
    can_train: bool = True
    loss: str = "ce"
    fixed: dict[str, Any] = field(default_factory=dict)

    def resolved_params(self, params: dict[str, Any], eps: float) -> dict[str, Any]:
        """``params`` with every unset parameter at its default, in declaration order."""
        return {k: params[k] if k in params else p.value(eps) for k, p in self.params.items()}

    def check(
        self,
        config: Any,
        key: str,
        num_classes: int | None = None,
        image_size: int | None = None,
    ) -> None:
        """Range checks of ``config`` (an AttackConfig of this attack) named ``key``.

        ``num_classes`` (the known classes the model separates) enables the check that
        the DLR loss has the three classes it needs; ``image_size`` the attack's own
        checks against the images' side (e.g. that a patch fits)."""
        for name, value in self.fixed.items():
            got = getattr(config, name)
            if got != value:
                raise ConfigError(
                    f"'{key}.{name}' is always {value} for {self.name}; set it to {value}, "
                    f"got {shown(got)}"
                )
        for name, value in config.params.items():
            param = self.params.get(name)
            if param is None:
                raise ConfigError(self.misplaced(name, key))
            expected = param.value(config.eps)
            if param.fixed and value != expected:
                raise ConfigError(
                    f"'{key}.{name}' is always {expected} for {self.name}; remove it, "
                    f"got {shown(value)}"
                )
            param.check(value, f"{key}.{name}")
        if config.norm not in NORMS:
            raise unknown_name(f"norm in '{key}.norm'", config.norm, NORMS)
        if config.eps < 0:
            raise ConfigError(f"'{key}.eps' must be >= 0 (in 1/255 units), got {config.eps}")
        if config.norm == "linf" and config.eps > 255:
            raise ConfigError(f"'{key}.eps' must be <= 255 (in 1/255 units), got {config.eps}")
        if config.restarts < 1:
            raise ConfigError(f"'{key}.restarts' must be >= 1, got {config.restarts}")
        if config.target not in TARGETS:
            raise unknown_name(f"target in '{key}.target'", config.target, TARGETS)
        if config.loss is not None and config.loss not in OBJECTIVES:
            raise unknown_name(f"loss in '{key}.loss'", config.loss, OBJECTIVES)
        loss = self.loss if config.loss is None else config.loss
        if loss == "dlr" and num_classes is not None and num_classes < 3:
            raise ConfigError(
                f"'{key}.loss' dlr needs at least 3 classes, the split has {num_classes}; "
                "use margin"
            )
        self.cls.check_config(self.resolved_params(config.params, config.eps), key, image_size)

    def arguments(self, config: Any, **extra: Any) -> dict[str, Any]:
        """The constructor keywords for a resolved AttackConfig: budgets in [0, 1] units,
        parameters the attack fixes left to it, and those of ``extra`` (objective,
        select, generator) the constructor takes."""
        kwargs: dict[str, Any] = {"restarts": config.restarts, "loss": config.loss}
        if "eps" not in self.fixed:
            kwargs["eps"] = config.eps / 255.0
        if "norm" not in self.fixed:
            kwargs["norm"] = config.norm
        for name, param in self.params.items():
            if not param.fixed:
                value = config.params[name]
                kwargs[param.arg or name] = value / 255.0 if param.per_eps else value
        taken = inspect.signature(self.cls.__init__).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in taken.values()):
            extra = {k: v for k, v in extra.items() if k in taken}
        return {**kwargs, **extra}

    def misplaced(self, name: str, key: str) -> str:
        """The message for a parameter ``name`` this attack does not take (``key``: the
        attack's configuration key)."""
        own = ", ".join(self.params) or "none"
        owners = sorted(n for n, s in ATTACK_SPECS.items() if name in s.params)
        if owners:
            return (
                f"'{key}.{name}' does not apply to {self.name} (a parameter of "
                f"{', '.join(owners)}; {self.name} takes: {own}); remove it"
            )
        known = [f"{key}.{k}" for k in (*SHARED_FIELDS, *all_param_names())]
        return (
            f"unknown config key '{shown(f'{key}.{name}', quoted=False)}'"
            f"{did_you_mean(f'{key}.{name}', known)}; {self.name} takes: {own}"
        )


ATTACK_SPECS: dict[str, AttackSpec] = {}


class _Classes(Mapping):
    """Name -> attack class, a live view of :data:`ATTACK_SPECS`."""

    def __getitem__(self, name: str) -> type:
        return ATTACK_SPECS[name].cls

    def __iter__(self) -> Iterator[str]:
        return iter(ATTACK_SPECS)

    def __len__(self) -> int:
        return len(ATTACK_SPECS)


# Every registered attack class by name (``ATTACKS["pgd"] is PGD``).
ATTACKS: Mapping[str, type] = _Classes()


def register_attack(
    name: str,
    description: str,
    *,
    params: dict[str, Param],
    can_train: bool = True,
    loss: str = "ce",
    fixed: dict[str, Any] | None = None,
):
    """Class decorator: register an :class:`~osad.attacks.base.Attack` subclass as
    ``name`` in :data:`ATTACKS`. ``can_train``: whether training may use it (it
    needs input gradients); see :class:`AttackSpec` and :class:`Param` for the rest."""

    def decorate(cls: type) -> type:
        if name in ATTACK_SPECS:
            raise ValueError(f"attack '{name}' is registered twice")
        ATTACK_SPECS[name] = AttackSpec(
            name, cls, description, dict(params), can_train, loss, dict(fixed or {})
        )
        cls.name = name
        return cls

    return decorate


def attack_spec(name: str, key: str = "attack") -> AttackSpec:
    """The registered attack ``name``; :class:`ConfigError` naming ``key`` if unknown."""
    if name not in ATTACK_SPECS:
        raise unknown_name(f"attack in '{key}'", name, ATTACK_SPECS)
    return ATTACK_SPECS[name]


def describe(config: Any) -> str:
    """One line for tables of a resolved AttackConfig, e.g. ``PGD linf eps 8/255, step
    2/255, 10 steps``: the attack's caption, its captioned parameters it does not fix,
    then restarts, a loss other than its default, and the target."""
    spec = attack_spec(config.name)
    parts = [spec.cls.caption(config)]
    for name, param in spec.params.items():
        if param.caption and not param.fixed:
            parts.append(param.caption.format(config.params[name]))
    if config.restarts > 1:
        parts.append(f"{config.restarts} restarts")
    if not spec.cls.caption_names_loss and config.loss != spec.loss:
        parts.append(f"{config.loss} loss")
    if config.target == "score":
        parts.append("on each score")
    elif config.target == "joint":
        parts.append(f"on {config.loss} + each score")
    return ", ".join(parts)


def train_attack_names() -> list[str]:
    """The attacks training may use (gradient attacks; black-box ones only evaluate)."""
    return [name for name, spec in ATTACK_SPECS.items() if spec.can_train]


def find_param(name: str) -> Param | None:
    """The parameter ``name`` of the first registered attack that has one, if any."""
    return next((s.params[name] for s in ATTACK_SPECS.values() if name in s.params), None)


def all_param_names() -> list[str]:
    """Every parameter name of a registered attack, in registration order."""
    return list(dict.fromkeys(k for spec in ATTACK_SPECS.values() for k in spec.params))
