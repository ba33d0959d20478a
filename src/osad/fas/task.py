"""The face anti-spoofing task (``task: fas``) as the workflow runs it (see
:class:`osad.tasks.Task`): one process, mid-training checkpoints and ``osad train
--resume`` as open-set runs have them, no sanity checks,
data from frame lists under ``data.root`` (relative to the working directory)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from osad.checkpoint import load_model
from osad.config.loader import ConfigSource
from osad.errors import ConfigError, RunDirError
from osad.fas.config import FasConfig, make_fas_config
from osad.fas.data import FasData, load_fas
from osad.fas.evaluate import evaluate_fas, write_fas_results
from osad.fas.trainer import check_meta_training, train_meta
from osad.rundir import RunDir
from osad.storage import recover_dir, replace_dir
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
        """Evaluate on the held-out target domain into ``dest`` (replaced only with
        ``force``); the open-set selection and ``eval.*`` overrides are refused."""
        chosen = [f"--{k}" for k, v in request.selection.items() if v is not None]
        chosen += ["key=value overrides"] if request.overrides else []
        if chosen:
            raise ConfigError(f"{', '.join(chosen)} apply to open-set runs, not {self.title}")
        dest = request.dest
        recover_dir(dest)
        if dest.exists() and any(dest.iterdir()) and not request.force:
            raise RunDirError(f"{dest} already holds results; pass --force to overwrite them")
        data = self.load_data(config)
        result = evaluate_fas(
            load_model(run.model, request.device), data, config, progress=request.progress
        )
        title = f"{config.method}: {', '.join(config.data.sources)} to {config.data.target}"
        with replace_dir(dest) as staged:
            return write_fas_results(result, config, staged, staged / run.roc_figure.name, title)
