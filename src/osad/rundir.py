"""The run directory: the one place that knows where a run's files live.

RUN_DIR/
  config.yaml          resolved configuration
  model.safetensors    trained weights and the recipe that rebuilds the model
  history.jsonl        one JSON line of training metrics per epoch
  tensorboard/         TensorBoard event files
  eval/metrics.json    metrics of ``osad test``
  eval/scores.h5       per-sample logits and scores
  eval/results.md      the result table
  eval/roc.png         ROC figure (face anti-spoofing runs)
  eval/figures/        figures of open-set runs (ROC, histograms, eps sweep, reconstructions)
  check.json           gradient-masking sanity checks of ``osad check``
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from osad.errors import RunDirError


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def model(self) -> Path:
        return self.root / "model.safetensors"

    @property
    def history(self) -> Path:
        return self.root / "history.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def metrics(self) -> Path:
        return self.eval_dir / "metrics.json"

    @property
    def scores(self) -> Path:
        return self.eval_dir / "scores.h5"

    @property
    def results(self) -> Path:
        return self.eval_dir / "results.md"

    @property
    def roc_figure(self) -> Path:
        return self.eval_dir / "roc.png"

    @property
    def figures(self) -> Path:
        return self.eval_dir / "figures"

    @property
    def check(self) -> Path:
        return self.root / "check.json"

    def owned_paths(self) -> tuple[Path, ...]:
        """Every file and folder a run writes."""
        return (self.config, self.model, self.history, self.tensorboard, self.eval_dir, self.check)

    @classmethod
    def create(cls, path: str | Path, force: bool = False) -> RunDir:
        """A new run directory; an existing non-empty one is refused unless ``force``,
        which removes the files of the previous run (and nothing else)."""
        run = cls(Path(path))
        if run.root.exists() and not run.root.is_dir():
            raise RunDirError(f"run directory {run.root} exists and is not a directory")
        if run.root.is_dir() and any(run.root.iterdir()):
            if not force:
                raise RunDirError(
                    f"run directory {run.root} already exists and is not empty; "
                    "choose another --out or pass --force to overwrite it"
                )
            for owned in run.owned_paths():
                if owned.is_dir():
                    shutil.rmtree(owned)
                elif owned.exists():
                    owned.unlink()
        run.root.mkdir(parents=True, exist_ok=True)
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing, trained run directory."""
        run = cls(Path(path))
        if not run.root.is_dir():
            raise RunDirError(f"run directory not found: {run.root}")
        for needed in (run.config, run.model):
            if not needed.is_file():
                raise RunDirError(
                    f"{run.root} is not a finished training run: {needed.name} is missing"
                )
        return run
