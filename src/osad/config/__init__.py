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

# Submodule -> the public names it defines, loaded on first use: the
# schema-agnostic loader (osad.config.loader) imports without the registries that
# the schema and its validation need.
_MODULES = {
    "build": ("expand_key", "make_config", "resolved_dict", "save_config", "saved_tree"),
    "loader": (
        "CONFIG_FORMAT_VERSION",
        "ConfigSource",
        "INT_RANGE",
        "SEED_RANGE",
        "build_config",
        "coerce",
        "parse_override",
    ),
    "schema": (
        "ALL_SCORES",
        "AttackConfig",
        "CheckpointConfig",
        "Config",
        "DIGITS_EPS",
        "DataConfig",
        "EvalConfig",
        "ModelConfig",
        "PAIRINGS",
        "PerfConfig",
        "TrainConfig",
    ),
    "strict_yaml": (
        "MAX_YAML_BYTES",
        "MAX_YAML_DEPTH",
        "MAX_YAML_NODES",
        "_merge_tree",
        "load_yaml",
        "parse_yaml",
        "read_yaml",
    ),
    "checks": ("check_perf_device", "has_decoder", "score_names", "validate", "validate_attack"),
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _MODULES)
