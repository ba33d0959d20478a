"""The run configuration: typed schemas, validated once at the boundary.

A configuration is built from the defaults below (the embedded digits OSDN
setting), then a YAML file (which may ``extends:`` another one), then
``key=value`` overrides such as ``train.epochs=3`` or
``eval.attacks.pgd.steps=20``; a field name that only one section has may be
given alone (``split=2`` for ``data.split=2``). Unknown keys, wrong types
and out-of-range values raise :class:`~osad.errors.ConfigError` naming the key
and, for misspellings, the closest valid one.

The top-level ``task`` key selects the schema: ``openset`` (:class:`Config`, the
default) or ``fas`` (:class:`osad.fas.config.FasConfig`, face anti-spoofing);
:func:`osad.tasks.make_task_config` dispatches on it.

Attack budgets (``eps``, ``alpha``) are stated in units of 1/255 of the [0, 1]
pixel range, for both norms; :meth:`AttackConfig.eps_unit` converts.

A saved configuration (a run's ``config.yaml``) starts with ``format_version``
and ``osad_version``; a file given with ``--config`` may carry them too (they
are checked, see :mod:`osad.storage`) or leave them out.

The package: :mod:`~osad.config.strict_yaml` (the YAML reader),
:mod:`~osad.config.loader` (schema-agnostic typing of defaults, file and overrides),
:mod:`~osad.config.schema` (the dataclasses) and :mod:`~osad.config.checks`.
"""

from __future__ import annotations

from osad.lazy import lazy_exports

# Public name -> the submodule that defines it, loaded on first use: the
# schema-agnostic loader (osad.config.loader) imports without the registries that
# the schema and its validation need.
_EXPORTS = {
    "expand_key": "build",
    "make_config": "build",
    "resolved_dict": "build",
    "save_config": "build",
    "saved_tree": "build",
    "CONFIG_FORMAT_VERSION": "loader",
    "ConfigSource": "loader",
    "INT_RANGE": "loader",
    "SEED_RANGE": "loader",
    "build_config": "loader",
    "coerce": "loader",
    "parse_override": "loader",
    "ALL_SCORES": "schema",
    "AttackConfig": "schema",
    "CheckpointConfig": "schema",
    "Config": "schema",
    "DIGITS_EPS": "schema",
    "DataConfig": "schema",
    "EvalConfig": "schema",
    "ModelConfig": "schema",
    "PAIRINGS": "schema",
    "PerfConfig": "schema",
    "TrainConfig": "schema",
    "MAX_YAML_BYTES": "strict_yaml",
    "MAX_YAML_DEPTH": "strict_yaml",
    "MAX_YAML_NODES": "strict_yaml",
    "_merge_tree": "strict_yaml",
    "load_yaml": "strict_yaml",
    "parse_yaml": "strict_yaml",
    "read_yaml": "strict_yaml",
    "check_perf_device": "checks",
    "has_decoder": "checks",
    "score_names": "checks",
    "validate": "checks",
    "validate_attack": "checks",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
