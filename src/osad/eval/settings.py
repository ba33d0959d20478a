"""The settings record of an evaluation: per result, what produced its numbers.

``osad test`` records beside every condition of ``metrics.json`` the settings that
produced it (open set: :func:`osad.eval.protocol.condition_settings`; anti-spoofing:
:func:`osad.fas.evaluate.target_settings`). Two kinds of readers compare them, both
through this module:

* the reuse decision of an incremental ``osad test`` (:func:`reusable`): a result
  stored under identical settings is reused, new ones are added, those not asked for
  are kept, and one asked for under other settings is refused unless ``--force``;
* ``osad report`` and the sweep summary
  (:func:`osad.eval.aggregate.settings_mismatches`): the runs of one experiment must
  agree on every setting of a condition but those that tell its repetitions apart
  (:func:`condition_differences`).

Light on purpose (no attack, score or model code): the anti-spoofing slice imports it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from osad.checkpoint import differences
from osad.config.loader import expand_key, parse_override
from osad.errors import ConfigError, RunDirError
from osad.storage import recover_dir

# Settings that differ between repetitions of one experiment (its seed, its trained
# weights, its data split), not between ways of evaluating it.
REPETITION_SETTINGS = ("seed", "model_sha256", "data_fingerprint")

# (dotted key, value in the first record, value in the second); None: absent there.
Difference = tuple[str, Any, Any]


def comparable(settings: dict[str, Any], attack: dict[str, Any]) -> dict[str, Any]:
    """What the runs of one experiment must agree on for a condition: its recorded
    ``settings`` without :data:`REPETITION_SETTINGS`, with ``attack`` (metrics.json's
    ``attack`` entry, the one captions describe) as its attack."""
    kept = {k: v for k, v in settings.items() if k not in REPETITION_SETTINGS}
    return {**kept, "attack": attack}


def condition_differences(
    found: tuple[dict[str, Any] | None, dict[str, Any]],
    reference: tuple[dict[str, Any] | None, dict[str, Any]],
) -> list[Difference]:
    """How a condition evaluated under ``found`` differs from one under ``reference``,
    each ``(settings or None, attack)`` as metrics.json records them: every
    :func:`comparable` setting, or the attack alone where either records no settings
    (evaluated by an osad older than the record)."""
    if found[0] is None or reference[0] is None:
        return differences({"attack": found[1]}, {"attack": reference[1]})
    return differences(comparable(*found), comparable(*reference))


def _value(value: Any) -> str:
    return "absent" if value is None else json.dumps(value, sort_keys=True)


def differences_text(found: list[Difference], limit: int = 3) -> str:
    """``key a vs b`` for the first ``limit`` differences of two settings records
    (:func:`osad.checkpoint.differences`), then how many more. An empty mapping that
    the other record fills (``score_options {}`` beside ``score_options.openmax.x``) is
    told by its filled keys alone."""
    found = [
        (key, a, b)
        for key, a, b in found
        if not ({} in (a, b) and any(k.startswith(f"{key}.") for k, _, _ in found))
    ]
    shown = ", ".join(f"{key} {_value(a)} vs {_value(b)}" for key, a, b in found[:limit])
    return shown + (f", +{len(found) - limit} more" if len(found) > limit else "")


def reuse_difference(stored: Any, wanted: dict[str, Any]) -> str:
    """Why a stored result cannot be reused for ``wanted`` settings: the first setting
    that differs, as ``key: stored there, wanted now`` ('' if none)."""
    if not isinstance(stored, dict):
        return "it records no settings: written by an older osad"
    found = differences(stored, wanted)
    if not found:
        return ""
    key, there, now = found[0]
    return f"{key}: {there!r} there, {now!r} now"


def reusable(
    dest: Path,
    settings: dict[str, dict[str, Any]],
    force: bool,
    read: Callable[[Path, str], dict[str, Any]],
) -> tuple[list[str], dict[str, Any]]:
    """The reuse decision of an incremental evaluation into ``dest``: (names of
    ``settings`` stored there under identical settings, the other results stored there,
    kept, with their stored settings).

    ``settings``: per result to compute, its settings record (JSON-like). ``read(path,
    remedy)``: the stored results of ``dest/metrics.json`` by name, each a mapping with
    its ``settings`` (absent: written before the record), raising
    :class:`~osad.errors.RunDirError` with ``remedy`` when the file cannot be read.

    Recovers what a killed evaluation left; refuses a ``dest`` holding files but no
    metrics.json (even with ``force``), and a result stored under other settings than
    asked for unless ``force`` (then nothing is reused or kept).
    Raises :class:`~osad.errors.RunDirError` (one line: the file, the result, the
    first setting that differs, the remedy).
    """
    if dest.exists() and not dest.is_dir():  # a file, never replaced by results
        raise RunDirError(
            f"{dest} exists and is not a folder; choose another --out (nothing was written)"
        )
    recover_dir(dest)
    if not dest.is_dir() or not any(dest.iterdir()):
        return [], {}
    path = dest / "metrics.json"
    if not path.is_file():  # --force replaces an evaluation, never any other folder
        raise RunDirError(
            f"{dest} holds files but no {path.name}, so it is not an osad evaluation; "
            "choose another --out, or remove it yourself"
        )
    if force:
        return [], {}
    stored = read(path, "pass --force to replace the evaluation, or --out DIR to write elsewhere")
    reused = []
    for name, wanted in settings.items():
        if name not in stored:
            continue
        difference = reuse_difference(stored[name].get("settings"), wanted)
        if difference:
            raise RunDirError(
                f"{path} holds condition '{name}' computed under other settings "
                f"({difference}); pass --force to recompute the evaluation, or --out DIR to "
                "write it elsewhere"
            )
        reused.append(name)
    return reused, {n: c.get("settings") for n, c in stored.items() if n not in settings}


def check_evaluation_overrides(overrides: Sequence[str], schema: type) -> None:
    """Refuse an ``osad test`` override (``key=value``) of a run of configuration
    ``schema`` outside ``eval.*``: the others change the trained model or its data.
    Raises :class:`~osad.errors.ConfigError` (also for a malformed override)."""
    for text in overrides:
        key = expand_key(parse_override(text)[0], schema)
        if key.split(".")[0] != "eval":
            raise ConfigError(
                f"osad test takes eval.* overrides only, not '{key}': it changes the trained "
                "model or its data (train a new run; moved data: --data-root)"
            )
