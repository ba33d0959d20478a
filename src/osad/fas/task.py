"""The face anti-spoofing task (``task: fas``) as the workflow runs it (see
:class:`osad.tasks.Task`): one process, mid-training checkpoints and ``osad train
--resume`` as open-set runs have them, no sanity checks,
data from frame lists under ``data.root`` (relative to the working directory)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from osad.config.loader import ConfigSource
from osad.errors import ConfigError
from osad.fas.config import FasConfig, make_fas_config
from osad.fas.data import FasData, load_fas
from osad.fas.evaluate import evaluate_fas_run
from osad.fas.trainer import check_meta_training, train_meta
from osad.rundir import RunDir
from osad.train.checkpoints import resume_point

if TYPE_CHECKING:
    from osad.tasks.request import EvaluationRequest


class FasTask:
    """The adapter :mod:`osad.workflow` runs for ``task: fas``."""

    name = "fas"
    title = "face anti-spoofing"
    schema = FasConfig
    supports_resume = True
    supports_processes = False
    supports_check = False
    verifies_data = False

    def make_config(self, file: ConfigSource, overrides: Sequence[str]) -> FasConfig:
        return make_fas_config(file, overrides)

    def prepare_training(self, config: FasConfig) -> None:
        """Nothing to refuse before the data are read (frame lists stay relative)."""

    def load_data(self, config: FasConfig) -> FasData:
        return load_fas(config.data, config.depth_size)

    def check_training(self, config: FasConfig, data: FasData, device: torch.device) -> None:
        check_meta_training(config, device)

    def data_record(self, data: FasData) -> None:
        return None

    def train(
        self,
        config: FasConfig,
        data: FasData,
        run: RunDir,
        progress: bool,
        resume_from: Path | None = None,
    ) -> Any:
        return train_meta(config, data, run=run, progress=progress, resume_from=resume_from)

    def resume_point(self, run: RunDir, config: FasConfig, checkpoint: Path | None) -> Path:
        return resume_point(run, config.checkpoint, checkpoint)

    def data_folder(self, root: str) -> Path:
        """Relative to the working directory (see :func:`osad.fas.data.load_frame_lists`)."""
        return Path(root or ".")

    def test(self, run: RunDir, config: FasConfig, request: EvaluationRequest) -> str:
        """Evaluate on the held-out target domains, incrementally
        (:func:`osad.fas.evaluate.evaluate_fas_run`); the open-set selection is refused."""
        chosen = [f"--{k}" for k, v in request.selection.items() if v is not None]
        if chosen:
            raise ConfigError(f"{', '.join(chosen)} apply to open-set runs, not {self.title}")
        return evaluate_fas_run(
            run,
            config,
            request.dest,
            request.device,
            force=request.force,
            progress=request.progress,
            overrides=request.overrides,
        )
