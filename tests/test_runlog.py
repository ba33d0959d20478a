"""osad.runlog.RunLog: a resumed log's TensorBoard file is read after the old ones."""

from __future__ import annotations

import os
import socket
import time

import osad.runlog as runlog
from osad.rundir import RunDir
from osad.runlog import RunLog


def test_a_resumed_log_writes_an_event_file_that_sorts_after_the_existing_ones(tmp_path):
    # TensorBoard applies a resume's purge only to the events of files read before it,
    # in name order; a writer of the same process in the same second once sorted first
    # (its counter "12" before "99999"), and the purged records came back.
    run = RunDir(tmp_path / "run")
    run.tensorboard.mkdir(parents=True)
    stamp = int(time.time()) + 1  # a file of this second or the next
    old = f"events.out.tfevents.{stamp:010d}.{socket.gethostname()}.{os.getpid()}.99999"
    (run.tensorboard / old).write_bytes(b"")
    log = RunLog(run, [{"iteration": 2, "val_auc": 0.5}], resumed=True, axis="iteration")
    try:
        names = sorted(p.name for p in run.tensorboard.iterdir())
    finally:
        log.close()
    assert len(names) == 2 and names[0] == old


def test_a_file_stamped_far_ahead_is_not_waited_for(tmp_path, monkeypatch):
    # a run copied from a machine whose clock runs an hour ahead: no hang
    run = RunDir(tmp_path / "run")
    run.tensorboard.mkdir(parents=True)
    ahead = int(time.time()) + 3600
    (run.tensorboard / f"events.out.tfevents.{ahead:010d}.elsewhere.1.0").write_bytes(b"")
    sleeps = []
    monkeypatch.setattr(runlog.time, "sleep", sleeps.append)
    RunLog(run, [{"epoch": 1, "loss": 0.5}], resumed=True).close()
    assert sleeps == []
