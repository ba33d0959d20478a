"""The tasks a run can be (the top-level ``task`` key of its configuration) and what the
workflow (:mod:`osad.workflow`) asks of each, so that it never branches on a task.

* ``openset`` (:mod:`osad.tasks.openset`): OSDN and its baselines, the default;
* ``fas`` (:mod:`osad.fas.task`): face anti-spoofing by meta-learning.

A task is any object with the attributes and methods of :class:`Task`; a new task is
one adapter and one entry in :data:`TASKS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from osad.config import ConfigSource, load_yaml, parse_override, saved_tree
from osad.errors import unknown_name
from osad.fas.task import FasTask
from osad.rundir import RunDir
from osad.tasks.openset import OpenSetTask
from osad.tasks.request import EvaluationRequest


@runtime_checkable
class Task(Protocol):
    """What the workflow needs of a task (``config`` is the task's own configuration)."""

    name: str  # the value of the ``task`` key
    title: str  # how messages name it, e.g. "face anti-spoofing"
    schema: type  # the configuration dataclass
    supports_resume: bool  # osad train --resume (checkpoints mid-training)
    supports_processes: bool  # several processes under torchrun
    supports_check: bool  # osad check (the gradient-masking sanity checks)
    verifies_data: bool  # its data carry checksums that --no-verify turns off

    def make_config(self, file: ConfigSource, overrides: Sequence[str]) -> Any:
        """The validated configuration from defaults, a file (or mapping) and overrides."""

    def prepare_training(self, config: Any) -> None:
        """Refuse, before any data is read, what cannot train here; make data paths
        absolute so the run can be tested from another directory (in place)."""

    def load_data(self, config: Any) -> Any:
        """The data ``config`` trains and tests on."""

    def check_training(self, config: Any, data: Any, device: torch.device) -> None:
        """Refuse what training would refuse, before the run directory is created."""

    def data_record(self, data: Any) -> dict[str, Any] | None:
        """What the run records about its data in ``data.json`` (None: no record)."""

    def train(
        self,
        config: Any,
        data: Any,
        run: RunDir,
        progress: bool,
        resume_from: Path | None = None,
    ) -> Any:
        """Train into ``run``; returns an :class:`osad.train.TrainResult`."""

    def resume_point(self, run: RunDir, config: Any, checkpoint: Path | None) -> Path:
        """The checkpoint ``osad train --resume`` continues from (``checkpoint``, else the
        latest); refuses a run that cannot continue."""

    def data_folder(self, root: str) -> Path:
        """The folder a ``data.root`` value names ('' is the default one)."""

    def test(self, run: RunDir, config: Any, request: EvaluationRequest) -> str:
        """Carry out ``request`` on the run (the caller holds the run's lock); returns
        the Markdown result table."""


TASKS: dict[str, Task] = {task.name: task for task in (OpenSetTask(), FasTask())}
DEFAULT_TASK = "openset"


def task_named(name: Any) -> Task:
    """The task registered as ``name``; raises ConfigError naming the known ones."""
    if name not in TASKS:
        raise unknown_name("task", str(name), TASKS)
    return TASKS[name]


def task_of(config: Any) -> Task:
    """The task a configuration belongs to (its ``task`` field)."""
    return task_named(config.task)


def make_task_config(file: ConfigSource = None, overrides: Sequence[str] = ()) -> Any:
    """The validated configuration of the task named by the top-level ``task`` key
    (in the overrides, else the file, else ``openset``). Raises ConfigError."""
    tree = dict(file) if isinstance(file, dict) else load_yaml(file) if file is not None else {}
    name = tree.get("task", DEFAULT_TASK)
    for text in overrides:
        key, value = parse_override(text)
        if key == "task":
            name = value
    return task_named(name).make_config(tree, overrides)


def load_saved_config(data: dict[str, Any], source: str) -> Any:
    """Rebuild the configuration of a run from its saved ``config.yaml`` mapping
    (written by :func:`osad.config.save_config`, whose format version it must carry)."""
    return make_task_config(saved_tree(data, source))


__all__ = [
    "DEFAULT_TASK",
    "TASKS",
    "Task",
    "load_saved_config",
    "make_task_config",
    "task_named",
    "task_of",
]
