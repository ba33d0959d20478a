"""The task interface: the workflow runs every task through its adapter
(:mod:`osad.tasks`), never by testing which task a configuration belongs to."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import osad.workflow
from osad.errors import ConfigError
from osad.tasks import TASKS, Task, load_saved_config, make_task_config, task_of


def test_every_registered_task_has_the_interface_under_its_name():
    for name, task in TASKS.items():
        assert isinstance(task, Task)
        assert task.name == name
        assert task_of(task.make_config(None, [])) is task
        assert isinstance(task.make_config(None, []), task.schema)


def test_the_workflow_names_no_task_schema():
    """workflow.py neither imports a task's configuration class nor anything of a
    task's own package, so it cannot branch on ``isinstance(config, ...)``."""
    tree = ast.parse(Path(osad.workflow.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("osad.fas")
            imported |= {a.asname or a.name for a in node.names}
    schemas = {task.schema.__name__ for task in TASKS.values()}
    assert not imported & schemas
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not names & schemas


def test_the_task_key_chooses_the_adapter(monkeypatch):
    calls = []

    class Toy:
        name = "toy"

        def make_config(self, file, overrides):
            calls.append((file, list(overrides)))
            return "toy config"

    monkeypatch.setitem(TASKS, "toy", Toy())
    assert make_task_config({"task": "toy", "seed": 1}, ["task=toy"]) == "toy config"
    assert calls == [({"task": "toy", "seed": 1}, ["task=toy"])]


def test_an_unknown_task_is_one_line_naming_the_known_ones():
    with pytest.raises(ConfigError) as error:
        make_task_config(overrides=["task=nope"])
    message = str(error.value)
    assert "'nope'" in message and "\n" not in message
    assert all(name in message for name in TASKS)


def test_a_saved_configuration_needs_its_format_version():
    saved = TASKS["fas"].make_config(None, []).to_dict()
    with pytest.raises(ConfigError, match=r"config\.yaml"):
        load_saved_config(saved, "config.yaml")
