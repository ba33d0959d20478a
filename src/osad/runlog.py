"""A run's metric log: one JSON line per record in ``history.jsonl``, and TensorBoard.

Shared by the trainers (the open-set loop logs one record per epoch, the
anti-spoofing trainer one per validation iteration). It imports nothing from
attacks, openset, distributed or eval, so that any trainer can use it.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from osad.rundir import RunDir
from osad.storage import storage_error, write_atomic


def _wait_for_a_later_event_file_name(folder: Path) -> None:
    """Sleep until a new event file in ``folder`` sorts after every file there.

    TensorBoard reads a folder's event files in name order and applies a purge only to
    the events read before it. The names are ``events.out.tfevents.<seconds>.<host>.
    <pid>.<counter>``: a resume in the same second as the last writer (a test, or a
    notebook calling the trainer twice) in the same process could sort first (counter
    10 before 9) and keep the purged records. At most two seconds: a file stamped
    further ahead (copied from a machine whose clock runs ahead) is not waited for,
    since no wait that short can pass it."""
    stamps = []
    for path in folder.glob("events.out.tfevents.*"):
        field = path.name.split(".")[3]
        if field.isdigit():
            stamps.append(int(field))
    wait = max(stamps) + 1 - time.time() if stamps else 0.0
    if 0.0 < wait <= 2.0:
        time.sleep(wait)


class RunLog:
    """``history.jsonl`` and TensorBoard of ``run`` (nothing when ``run`` is None).

    Each record is a mapping of metric names to numbers; ``axis`` names its key
    that is TensorBoard's x coordinate (``epoch``, ``iteration``), and no key of
    ``counters`` is logged as a scalar. ``resumed``: the log restarts from
    ``history`` (the records a checkpoint holds), rewriting ``history.jsonl`` and
    dropping TensorBoard scalars logged after them (they are logged per record).

    A failed write (a full disk) of either raises a one-line
    :class:`~osad.errors.StorageError` naming the file. TensorBoard writes from a thread
    that would also print the error's traceback; that thread's failure is left to the
    next flush here, which re-raises it.
    """

    def __init__(
        self,
        run: RunDir | None,
        history: Sequence[dict[str, float]] = (),
        *,
        resumed: bool = False,
        axis: str = "epoch",
        counters: Sequence[str] = ("epoch", "step"),
    ) -> None:
        self.run, self.writer = run, None
        self.axis, self.counters = axis, (axis, *counters)
        if run is None:
            return
        from torch.utils.tensorboard import SummaryWriter

        if resumed:
            write_atomic(run.history, "".join(json.dumps(r) + "\n" for r in history))
        self._excepthook = threading.excepthook
        threading.excepthook = self._quiet_writer_thread
        # TensorBoard drops the events at steps (values of ``axis``) from this one on.
        purge = (int(history[-1][axis]) + 1 if history else 0) if resumed else None
        if resumed:
            _wait_for_a_later_event_file_name(run.tensorboard)
        try:
            with self._writing(run.tensorboard):
                self.writer = SummaryWriter(str(run.tensorboard), purge_step=purge)
        except BaseException:
            threading.excepthook = self._excepthook
            raise

    def _quiet_writer_thread(self, args: threading.ExceptHookArgs) -> None:
        if not (
            isinstance(args.exc_value, OSError) and "AsyncWriter" in type(args.thread).__name__
        ):
            self._excepthook(args)

    @contextlib.contextmanager
    def _writing(self, path: Path) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise storage_error(path, exc) from None

    def add(self, record: dict[str, float]) -> None:
        """Append ``record`` to ``history.jsonl`` and its scalars to TensorBoard."""
        if self.run is None:
            return
        with self._writing(self.run.history), self.run.history.open("a") as f:
            f.write(json.dumps(record) + "\n")
        with self._writing(self.run.tensorboard):
            for key, value in record.items():
                if key not in self.counters:
                    self.writer.add_scalar(key, value, record[self.axis])
            self.writer.flush()

    def close(self) -> None:
        if self.run is None:
            return
        try:
            if self.writer is not None:
                with self._writing(self.run.tensorboard):
                    self.writer.close()
        finally:
            threading.excepthook = self._excepthook
