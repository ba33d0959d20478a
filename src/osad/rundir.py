"""The run directory: the one place that knows where a run's files live.

RUN_DIR/
  config.yaml          resolved configuration (with its format version)
  data.json            where the training images came from (osad.data.load_openset's source)
  model.safetensors    trained weights of the run's model (network ``main``) and the recipe
                       that rebuilds it
  NAME.safetensors     the same for each further network of the method (``peer.safetensors``:
                       the peer network of mutual learning, osdn-caml runs only)
  history.jsonl        one JSON line of training metrics per epoch
  checkpoints/         training checkpoints (see osad.checkpoint and osad.train.state)
    step-00000042/     model.safetensors (NAME.safetensors), state.safetensors, state.json,
                       manifest.json
    latest             the name of the newest complete checkpoint
  tensorboard/         TensorBoard event files
  eval/metrics.json    metrics of ``osad test``
  eval/scores.h5       per-sample logits and scores
  eval/results.md      the result table
  eval/roc.png         ROC figure (face anti-spoofing runs)
  eval/figures/        figures of open-set runs (ROC, histograms, eps sweep, reconstructions)
  eval-NAME/           the same results for network NAME (osad test --model peer: eval-peer/)
  check.json           gradient-masking sanity checks of ``osad check``
  .lock                the writer's lock and pid (see osad.runlock)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from osad.errors import RunDirError
from osad.runlock import LOCK_NAME
from osad.storage import remove_path, staging_paths, storage_error

_CHECKPOINT_NAME = re.compile(r"step-(\d{8,})")

# The run's model: the network ``osad test`` evaluates unless ``--model`` names another.
MAIN = "main"
# The names of the networks a run can hold (osad.methods declares which a method
# trains): its model, and the peer network of an osdn-caml run.
RUN_MODELS = (MAIN, "peer")


def plain_name_inside(folder: Path, name: object, source: str) -> Path:
    """``folder / name`` for a name read from a file of a run directory (a checkpoint
    manifest entry, the ``latest`` pointer), which may come from someone else.

    ``name`` must be one plain path component that resolves inside ``folder``: no
    ``..``, no absolute path, no separator, no symbolic link leading out. Raises
    :class:`RunDirError` naming ``source`` and saying nothing about the place the
    name points to (whether it exists, what it holds).
    """
    if (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in "/\\\0")
    ):
        path = folder / name
        try:
            if path.resolve().parent == folder.resolve():
                return path
        except (OSError, RuntimeError):  # a symlink loop
            pass
    raise RunDirError(
        f"{source} names {str(name)[:100]!r}, which is not a file name inside {folder}; "
        "a run directory may only refer to its own files"
    )


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def model(self) -> Path:
        return self.weights(MAIN)

    @staticmethod
    def weights_name(network: str = MAIN) -> str:
        """The file name of network ``network``'s weights, in the run directory and in
        each checkpoint: ``model.safetensors`` for ``main``, ``NAME.safetensors`` else."""
        return "model.safetensors" if network == MAIN else f"{network}.safetensors"

    def weights(self, network: str = MAIN) -> Path:
        """The weights file of the run's network ``network`` (``main``, ``peer``, ...)."""
        return self.root / self.weights_name(network)

    def eval_dir_of(self, network: str = MAIN) -> Path:
        """Where ``osad test`` writes the results of network ``network``: ``eval/`` for
        ``main``, ``eval-NAME/`` else."""
        return self.eval_dir if network == MAIN else self.root / f"eval-{network}"

    @property
    def history(self) -> Path:
        return self.root / "history.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest_checkpoint(self) -> Path:
        """The pointer file naming the newest complete checkpoint."""
        return self.checkpoints / "latest"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:08d}"

    @staticmethod
    def checkpoint_step(path: Path) -> int | None:
        """The step of a checkpoint directory's name, or None if it is not one."""
        match = _CHECKPOINT_NAME.fullmatch(path.name)
        return int(match.group(1)) if match else None

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

    def figures_of(self, network: str = MAIN) -> Path:
        """Where ``osad test`` draws the figures of network ``network``."""
        return self.eval_dir_of(network) / "figures"

    @property
    def check(self) -> Path:
        return self.root / "check.json"

    @property
    def data_record(self) -> Path:
        return self.root / "data.json"

    def owned_paths(self) -> tuple[Path, ...]:
        """Every file and folder a run writes (and what an interrupted evaluation left)."""
        evals = tuple(self.eval_dir_of(network) for network in RUN_MODELS)
        return (
            self.config,
            self.data_record,
            *(self.weights(network) for network in RUN_MODELS),
            self.history,
            self.checkpoints,
            self.tensorboard,
            *evals,
            *(p for e in evals for p in staging_paths(e)),
            self.check,
        )

    @classmethod
    def create(cls, path: str | Path, force: bool = False) -> RunDir:
        """A new run directory; an existing non-empty one is refused unless ``force``,
        which removes the files of the previous run (and nothing else).

        The removal first renames every file of the previous run into one folder inside
        the run directory (a rename moves a symbolic link, never what it points to),
        then deletes that folder: a failure leaves the previous run as it was.
        """
        run = cls(Path(path))
        if run.root.exists() and not run.root.is_dir():
            raise RunDirError(f"run directory {run.root} exists and is not a directory")
        if run.root.is_dir() and any(p.name != LOCK_NAME for p in run.root.iterdir()):
            if not force:
                raise RunDirError(
                    f"run directory {run.root} already exists and is not empty; "
                    "choose another --out or pass --force to overwrite it"
                )
            run._remove_owned()
        run.root.mkdir(parents=True, exist_ok=True)
        return run

    def _remove_owned(self) -> None:
        trash = self.root / ".replaced"
        moved: list[tuple[Path, Path]] = []
        try:
            remove_path(trash)
            trash.mkdir()
            for owned in self.owned_paths():
                if owned.exists() or owned.is_symlink():
                    os.rename(owned, trash / owned.name)
                    moved.append((owned, trash / owned.name))
        except OSError as exc:
            for owned, aside in reversed(moved):
                os.rename(aside, owned)
            raise storage_error(Path(exc.filename or trash), exc) from None
        remove_path(trash)

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing, trained run directory."""
        run = cls(Path(path))
        if not run.root.is_dir():
            raise RunDirError(_not_a_run(run.root))
        for needed in (run.config, run.model):
            if not needed.is_file():
                hint = (
                    f"; continue it with: osad train --resume {run.root}"
                    if run.latest_checkpoint.is_file()
                    else ""
                )
                raise RunDirError(
                    f"{run.root} is not a finished training run: {needed.name} is missing{hint}"
                )
        return run

    @classmethod
    def open_for_resume(cls, path: str | Path) -> tuple[RunDir, Path | None]:
        """An unfinished run to continue, and the checkpoint to continue from: ``path``
        itself when it is a checkpoint directory of a run, else None (the latest)."""
        path = Path(path)
        if cls.checkpoint_step(path) is not None and path.parent.name == "checkpoints":
            run, checkpoint = cls(path.parent.parent), path
        else:
            run, checkpoint = cls(path), None
        if not run.root.is_dir():
            raise RunDirError(_not_a_run(run.root))
        if not run.config.is_file():
            raise RunDirError(f"{run.root} is not a run directory: config.yaml is missing")
        if run.model.exists():
            raise RunDirError(
                f"{run.root} has finished training ({run.model.name} exists); nothing to resume"
            )
        return run, checkpoint


def _not_a_run(path: Path) -> str:
    """Why ``path`` cannot be a run directory, in one line."""
    if path.exists():
        return f"{path} is a file, not a run directory; name the run's folder"
    return f"run directory not found: {path}"
