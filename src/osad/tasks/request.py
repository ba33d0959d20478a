"""What ``osad test`` asks of a task (:meth:`osad.tasks.Task.test`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class EvaluationRequest:
    """One evaluation of a run: its network ``model`` (``main``, ``peer``) evaluated on
    ``device`` into ``dest`` (replaced only with ``force``, else added to where the
    task can); ``selection`` (attacks, scores, pairings, version: None = the run's own)
    and ``overrides`` (``eval.key=value``) narrow or change what is evaluated."""

    model: str
    dest: Path
    device: torch.device
    force: bool = False
    progress: bool = True
    selection: dict[str, Any] = field(default_factory=dict)
    overrides: Sequence[str] = ()
