"""When a training run writes its checkpoints, and what it says when it must stop.

:class:`CheckpointPolicy` writes a run's checkpoints as ``config.checkpoint`` says
(every so many epochs and steps, keeping the newest), never with non-finite
weights; it resumes a :class:`~osad.train.state.TrainState` from one, naming an
earlier intact checkpoint when the one asked for is damaged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from osad.checkpoint import CheckpointConfig, CheckpointStore
from osad.errors import CheckpointError, RunDirError, TrainingInterrupted
from osad.rundir import RunDir
from osad.runtime import StopRequest
from osad.train.state import TrainState
from osad.train.step import NonFiniteLossError


class CheckpointPolicy:
    """Writes a run's checkpoints when ``config`` says, never with non-finite weights.

    Every process reads the checkpoint it resumes from; only the one that ``writes``
    (rank 0 under torchrun) writes or deletes (the processes hold the same weights and
    optimizer state, and the random streams that differ between them restart from the
    step counter). Used by the open-set loop and the anti-spoofing trainer alike;
    ``position`` says where a run is in its messages (default: ``epoch E, step S``)."""

    def __init__(
        self,
        run: RunDir,
        config: CheckpointConfig,
        epochs: int,
        *,
        writes: bool = True,
        position: Callable[[TrainState], str] | None = None,
    ) -> None:
        self.run, self.config, self.epochs = run, config, epochs
        self.position = position or (lambda state: f"epoch {state.epoch}, step {state.step}")
        self.store = CheckpointStore(run, config.keep)
        self.saved_step: int | None = None
        self.writes = writes

    def resume(self, state: TrainState, checkpoint: Path) -> None:
        try:
            state.restore(self.store.read(checkpoint), f"checkpoint {checkpoint}")
        except CheckpointError as exc:
            step = RunDir.checkpoint_step(checkpoint)
            earlier = [s for s in self.store.steps() if step is not None and s < step]
            if not earlier:
                raise
            raise CheckpointError(
                f"{exc}; an earlier checkpoint may be intact: "
                f"osad train --resume {self.run.checkpoint(earlier[-1])}"
            ) from None
        if self.writes:
            self.store.discard_after(state.step)
        self.saved_step = state.step

    def epoch_due(self, epoch: int) -> bool:
        every = self.config.every_epochs
        return every > 0 and (epoch % every == 0 or epoch == self.epochs)

    def step_due(self, state: TrainState, epoch_done: bool) -> bool:
        # At an epoch's last batch the epoch-end checkpoint (after validation) replaces it.
        if epoch_done and self.epoch_due(state.epoch):
            return False
        every = self.config.every_steps
        return every > 0 and state.step % every == 0

    def save(self, state: TrainState) -> Path:
        if self.saved_step == state.step:
            return self.run.checkpoint(state.step)
        if not state.weights_finite():
            raise NonFiniteLossError(
                f"training stopped: non-finite weights at {self.position(state)}; "
                f"not saved, {self.last_good()}"
            )
        path = self.store.save(state.step, state.files()) if self.writes else None
        self.saved_step = state.step
        return path or self.run.checkpoint(state.step)

    def last_good(self) -> str:
        latest = self.store.latest()
        if latest is None:
            return "no checkpoint was written before"
        return f"the last good checkpoint {latest} is kept"

    def interrupted(self, stop: StopRequest, state: TrainState) -> TrainingInterrupted:
        """Save a checkpoint of ``state`` and say how to resume from it."""
        path = self.save(state)
        return TrainingInterrupted(
            f"interrupted by {stop.name} at {self.position(state)}; checkpoint "
            f"saved to {path}; resume with: osad train --resume {self.run.root}",
            stop.signum or 0,
        )


def resume_point(run: RunDir, config: CheckpointConfig, checkpoint: Path | None) -> Path:
    """The checkpoint ``osad train --resume`` continues ``run`` from: ``checkpoint``, else
    the latest one; refuses (:class:`~osad.errors.RunDirError`) a run without any."""
    if checkpoint is None:
        checkpoint = CheckpointStore(run, config.keep).latest()
    if checkpoint is None:
        raise RunDirError(
            f"{run.root} has no checkpoint yet, nothing to resume; start it again with: "
            f"osad train --out {run.root} --force"
        )
    return checkpoint


@contextlib.contextmanager
def naming_last_good(checkpoints: CheckpointPolicy | None) -> Iterator[None]:
    """A non-finite loss raised inside also names the last good checkpoint."""
    try:
        yield
    except NonFiniteLossError as error:
        kept = checkpoints.last_good() if checkpoints else "no run directory"
        raise NonFiniteLossError(f"{error}; {kept}") from None
