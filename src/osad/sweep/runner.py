"""Running a sweep: one run directory per (method, split), resumable at any point.

SWEEP_DIR/
  <method>/split<k>/   an ordinary run directory (osad test and osad train --resume work on it)
  sweep.jsonl          one line per step taken: method, split, action, seconds, time
  summary.json         mean and std over splits (osad.sweep.summary)
  results.md           the tables

Each run is brought to its next state: a run with results is skipped, a trained
run is evaluated, a run with a checkpoint continues from it
(:func:`osad.workflow.resume_run`), a run that started without reaching a
checkpoint starts again. A run directory trained with another configuration
than the sweep gives is refused, so a changed preset never mixes old and new
runs; a run trained as the sweep says but evaluated under another ``eval``
section (an attack or score added to the preset), or whose ``eval/metrics.json``
records other settings than the preset gives (a stale result, by the check
``osad report`` makes, :func:`osad.eval.aggregate.settings_mismatches`), is
evaluated again, without training.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path

import torch
from tqdm.auto import tqdm

from osad.checkpoint import CheckpointStore, first_difference
from osad.config import Config, resolved_dict, save_config
from osad.errors import OsadError, RunDirError, TrainingInterrupted, require
from osad.eval.aggregate import SettingsMismatch, load_run, settings_mismatches
from osad.eval.protocol import condition_settings
from osad.rundir import RunDir
from osad.runtime import STOP_SIGNALS
from osad.sweep.spec import Sweep, SweepMethod
from osad.workflow import load_run_config, resume_run, test_run, train_run

# Keys that may differ between a run and the sweep: where the data live.
_LOCAL_KEYS = ("data.root",)


@dataclass(frozen=True)
class SweepRun:
    method: SweepMethod
    split: int
    run: RunDir

    @property
    def name(self) -> str:
        return f"{self.method.label} split {self.split}"


@dataclass(frozen=True)
class Step:
    """What the sweep did to one run: ``skipped`` (it had results), ``trained``,
    ``resumed`` (training continued from a checkpoint) and/or ``evaluated``."""

    run: SweepRun
    actions: tuple[str, ...]
    seconds: float


def run_dir(out: Path, method: SweepMethod, split: int) -> RunDir:
    return RunDir(Path(out) / method.label / f"split{split}")


def plan(sweep: Sweep, out: str | Path) -> list[SweepRun]:
    """Every run of ``sweep``, split by split (a partial sweep covers every method)."""
    return [
        SweepRun(method, split, run_dir(Path(out), method, split))
        for split in sweep.splits
        for method in sweep.methods
    ]


def is_finished(run: RunDir) -> bool:
    """Evaluated: results.md is the last file ``osad test`` writes."""
    return run.metrics.is_file() and run.results.is_file()


def _comparable(config: Config) -> dict:
    tree = resolved_dict(config)
    for key in _LOCAL_KEYS:
        section, field = key.split(".")
        tree[section].pop(field)
    return tree


def same_evaluation(run: RunDir, expected: Config) -> bool:
    """Whether the run's saved ``eval`` section is the one ``expected`` gives."""
    saved = _comparable(load_run_config(run))["eval"]
    return first_difference(saved, _comparable(expected)["eval"]) is None


def expected_settings(config: Config) -> dict[str, dict]:
    """Each condition ``config`` evaluates, with the settings metrics.json records for
    it (:func:`osad.eval.protocol.condition_settings`, without the run's weights and data)."""
    return json.loads(json.dumps(condition_settings(config)))


def stale_conditions(run: RunDir, expected: Config) -> list[SettingsMismatch]:
    """The conditions of ``expected`` that a finished run's metrics.json lacks or records
    under other settings (conditions ``expected`` does not name are not checked: the
    summary leaves them out, and re-evaluating would drop them)."""
    wanted = expected_settings(expected)
    return settings_mismatches([load_run(run.root)], list(wanted), wanted, "the preset")


def check_same_training(run: RunDir, expected: Config) -> None:
    """Refuse a run directory saved with another configuration than ``expected``,
    apart from its ``eval`` section."""
    saved, current = _comparable(load_run_config(run)), _comparable(expected)
    saved.pop("eval"), current.pop("eval")
    difference = first_difference(saved, current)
    if difference:
        key, old, new = difference
        raise RunDirError(
            f"{run.root} was made with {key}={old!r}, the sweep now gives {new!r}; "
            "remove that run directory or choose another --out"
        )


def up_to_date(run: RunDir, config: Config) -> bool:
    """Whether ``run`` has results under ``config``'s evaluation that are not stale
    (the sweep skips it). Raises :class:`~osad.errors.RunDirError` for a run directory
    trained with another configuration (:func:`check_same_training`)."""
    if run.config.is_file():
        check_same_training(run, config)
    return is_finished(run) and same_evaluation(run, config) and not stale_conditions(run, config)


def _advance(item: SweepRun, config: Config, progress: bool) -> tuple[str, ...]:
    """Bring one run to 'evaluated' under the sweep's evaluation; return what was done."""
    run = item.run
    if up_to_date(run, config):
        return ("skipped",)
    stale = is_finished(run) and bool(stale_conditions(run, config))
    actions: list[str] = []
    if not run.model.is_file():
        latest = None
        if run.config.is_file():
            latest = CheckpointStore(run, config.checkpoint.keep).latest()
        if latest is not None:
            resume_run(
                run.root,
                progress=progress,
                data_root=config.data.root or None,
                verify=config.data.verify,
            )
            actions.append("resumed")
        else:
            train_run(config, run.root, force=True, progress=progress)
            actions.append("trained")
    if not same_evaluation(run, config):
        # Trained as the sweep says, evaluated under an older eval section: record the
        # sweep's (after training, which checks its checkpoints against the saved one).
        save_config(config, run.config)
        actions.append("eval changed")
    elif stale:
        actions.append("stale results")
    # force: an evaluation interrupted before results.md may have left part of eval/.
    test_run(
        run.root,
        force=True,
        progress=progress,
        data_root=config.data.root or None,
        verify=config.data.verify,
    )
    actions.append("evaluated")
    return tuple(actions)


def _log_step(out: Path, step: Step) -> None:
    record = {
        "method": step.run.method.label,
        "split": step.run.split,
        "actions": list(step.actions),
        "seconds": round(step.seconds, 1),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with (out / "sweep.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def run_sweep(
    sweep: Sweep,
    out: str | Path,
    *,
    progress: bool = True,
    data_root: str | None = None,
    report: Callable[[str], None] | None = None,
    jobs: int = 1,
) -> list[Step]:
    """Train and evaluate every run of ``sweep`` under ``out`` that has no results yet.

    Interrupted (SIGINT/SIGTERM during training saves a checkpoint), it raises
    :class:`~osad.errors.TrainingInterrupted`; calling it again continues where it
    stopped. ``report`` receives one line per run (default: printed above the bar).

    ``jobs`` > 1 runs up to that many runs at once, each in its own process
    (:func:`_run_parallel`, docs/sweeps.md) on :func:`threads_per_run` threads; a run
    that fails is reported and the others go on, then :class:`RunsFailed` is raised.
    With ``jobs`` 1 the runs are done one after the other in this process and the
    first failure stops the sweep. Raises :class:`~osad.errors.ConfigError` for
    ``jobs`` < 1. The run processes are spawned (:mod:`multiprocessing`), which imports
    the calling script again in each: a script calling this with ``jobs`` > 1 must do so
    under ``if __name__ == "__main__":``.
    """
    require(jobs >= 1, f"--jobs must be 1 or more (runs at once), got {jobs}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"sweep directory {out} exists and is not a directory")
    runs = plan(sweep, out)
    configs = {}
    for item in runs:
        config = sweep.run_config(item.method, item.split)
        if data_root:
            config.data.root = data_root
        configs[item] = config
    out.mkdir(parents=True, exist_ok=True)
    say = report or tqdm.write
    if jobs > 1:
        threads = threads_per_run(jobs)
        bar = tqdm(
            total=len(runs),
            desc=f"sweep {sweep.name} ({jobs} jobs)",
            unit="run",
            disable=not progress,
        )
        with bar:
            return _run_parallel(runs, configs, out, jobs, threads, bar, say)
    steps = []
    bar = tqdm(runs, desc=f"sweep {sweep.name}", unit="run", disable=not progress)
    for i, item in enumerate(bar, 1):
        bar.set_postfix_str(item.name)
        start = time.perf_counter()
        try:
            # Runs train without their own bars: one bar over runs reads better in a log.
            actions = _advance(item, configs[item], progress=False)
        except TrainingInterrupted as exc:
            raise TrainingInterrupted(
                f"sweep interrupted in {item.name} ({exc}); run the same osad sweep "
                "command again to continue",
                exc.signum,
            ) from None
        step = Step(item, actions, time.perf_counter() - start)
        steps.append(step)
        if actions != ("skipped",):
            _log_step(out, step)
        say(f"[{i}/{len(runs)}] {item.name}: {' + '.join(actions)} ({step.seconds:.0f} s)")
    return steps


class RunsFailed(OsadError):
    """Some runs of a sweep with ``jobs`` > 1 failed (each reported on its own line);
    the others were done. ``runs`` names the failed ones."""

    def __init__(self, message: str, runs: list[SweepRun]) -> None:
        super().__init__(message)
        self.runs = runs


def threads_per_run(jobs: int) -> int:
    """The torch threads of each of ``jobs`` runs at once: ``OMP_NUM_THREADS`` when set,
    else the CPUs this process may use divided among the jobs (at least 1).
    Raises :class:`~osad.errors.ConfigError` for an ``OMP_NUM_THREADS`` that is not a
    positive integer."""
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given:
        require(
            given.isdigit() and int(given) >= 1,
            f"OMP_NUM_THREADS must be a positive integer (threads of each run), got {given!r}",
        )
        return int(given)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cpus or 1) // jobs)


def _child(conn: Connection, item: SweepRun, config: Config, threads: int) -> None:
    """One run of a parallel sweep, in a process of its own: report the outcome to the
    parent as ``("done", actions)``, ``("interrupted",)`` or ``("failed", line)``."""
    # A process group of its own: Ctrl-C in a terminal reaches the parent alone, which
    # passes each signal on exactly once (a second one would cut a checkpoint short).
    os.setpgid(0, 0)
    # SIGTERM stops the run as SIGINT does: a checkpoint during training (osad.runtime.
    # stop_signals), partial results discarded during evaluation.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    torch.set_num_threads(threads)
    try:
        outcome: tuple = ("done", _advance(item, config, progress=False))
    except (TrainingInterrupted, KeyboardInterrupt):
        outcome = ("interrupted",)
    except (OsadError, OSError) as exc:
        outcome = ("failed", " ".join(str(exc).split()))
    except Exception as exc:  # a fault in osad: its traceback goes to stderr
        traceback.print_exc()
        outcome = ("failed", f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    with contextlib.suppress(OSError):  # the sweep is gone (SIGKILL): the run is done
        conn.send(outcome)
        conn.close()


def _run_parallel(
    runs: list[SweepRun],
    configs: dict[SweepRun, Config],
    out: Path,
    jobs: int,
    threads: int,
    bar: tqdm,
    say: Callable[[str], None],
) -> list[Step]:
    """Up to ``jobs`` runs at once, each in a spawned process (:func:`_child`); this
    process alone appends to ``sweep.jsonl``, in the order the runs finish.

    SIGINT or SIGTERM stops starting runs and is passed on to the running ones (each
    saves its checkpoint), then :class:`~osad.errors.TrainingInterrupted` names them.
    """
    steps: list[Step] = []
    failed: list[SweepRun] = []
    stopped: list[SweepRun] = []

    count = iter(range(1, len(runs) + 1))

    def done(item: SweepRun, text: str) -> None:
        bar.update()
        say(f"[{next(count)}/{len(runs)}] {item.name}: {text}")

    todo: deque[SweepRun] = deque()
    for item in runs:  # what is up to date is skipped here, without starting a process
        try:
            skip = up_to_date(item.run, configs[item])
        except OsadError as exc:
            failed.append(item)
            done(item, f"failed: {exc}")
            continue
        if skip:
            steps.append(Step(item, ("skipped",), 0.0))
            done(item, "skipped (0 s)")
        else:
            todo.append(item)

    context = multiprocessing.get_context("spawn")
    running: dict[int, tuple[SweepRun, BaseProcess, Connection, float]] = {}
    with _signals_to_children() as signals:
        sent = 0
        while todo or running:
            while todo and len(running) < jobs and not signals.received:
                item = todo.popleft()
                receive, send = context.Pipe(duplex=False)
                process = context.Process(
                    target=_child,
                    args=(send, item, configs[item], threads),
                    name=f"osad sweep {item.name}",
                )
                process.start()
                send.close()
                running[process.sentinel] = (item, process, receive, time.perf_counter())
                bar.set_postfix_str(", ".join(r[0].name for r in running.values()))
            if not running:
                break
            ready = wait([*running, signals.wakeup])
            if signals.wakeup in ready:
                signals.drain()
            for signum in signals.received[sent:]:  # each signal once to each run
                for _, process, _, _ in running.values():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signum)
            sent = len(signals.received)
            for sentinel in [r for r in ready if r in running]:
                item, process, receive, start = running.pop(sentinel)
                process.join()
                outcome = _outcome(receive, process.exitcode)
                receive.close()
                seconds = time.perf_counter() - start
                bar.set_postfix_str(", ".join(r[0].name for r in running.values()))
                if outcome[0] == "done":
                    step = Step(item, outcome[1], seconds)
                    steps.append(step)
                    if step.actions != ("skipped",):
                        _log_step(out, step)
                    done(item, f"{' + '.join(step.actions)} ({seconds:.0f} s)")
                elif signals.received and outcome[0] in ("interrupted", "died"):
                    stopped.append(item)  # not done: no count, no step of the bar
                    say(f"{item.name}: interrupted ({seconds:.0f} s)")
                else:
                    failed.append(item)
                    done(item, f"failed: {_failure(outcome)}")
    if signals.received:
        signum = signals.received[0]
        raise TrainingInterrupted(
            f"sweep interrupted in {', '.join(item.name for item in stopped) or 'no run'} "
            f"(by {signal.Signals(signum).name}); run the same osad sweep command again "
            "to continue",
            signum,
        )
    if failed:
        raise RunsFailed(
            f"{len(failed)} of {len(runs)} runs failed ({', '.join(i.name for i in failed)}: "
            "see the lines above); the others are done: fix those and run the same osad "
            "sweep command again",
            failed,
        )
    return steps


def _outcome(receive: Connection, exitcode: int | None) -> tuple:
    """What a run's process reported, or ``("died", exitcode)`` when it ended without
    reporting (killed, e.g. for memory: its closed pipe reads as ready but is empty)."""
    try:
        return receive.recv() if receive.poll() else ("died", exitcode)
    except EOFError:
        return ("died", exitcode)


def _failure(outcome: tuple) -> str:
    """Why a run that neither finished nor was stopped by the sweep's own signal failed."""
    if outcome[0] == "failed":
        return outcome[1]
    if outcome[0] == "interrupted":  # a signal to the run's process alone
        return "its process was interrupted (its checkpoint is kept)"
    return f"its process ended with exit code {outcome[1]} before reporting"


class _Received:
    """The stop signals this process received, and a pipe a signal handler writes to so
    that :func:`multiprocessing.connection.wait` returns."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.wakeup, self._write = os.pipe()
        os.set_blocking(self._write, False)

    def handle(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        with contextlib.suppress(OSError):
            os.write(self._write, b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            os.read(self.wakeup, 4096)

    def close(self) -> None:
        os.close(self.wakeup)
        os.close(self._write)


@contextlib.contextmanager
def _signals_to_children() -> Iterator[_Received]:
    """Record SIGINT and SIGTERM instead of stopping at once (the sweep passes them on
    to its runs and waits for them); the previous handlers come back on exit."""
    received = _Received()
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS:
        signal.signal(s, received.handle)
    try:
        yield received
    finally:
        for s, handler in previous.items():
            if handler is not None:
                signal.signal(s, handler)
        received.close()
