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

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tqdm.auto import tqdm

from osad.checkpoint import CheckpointStore, first_difference
from osad.config import Config, resolved_dict, save_config
from osad.errors import RunDirError, TrainingInterrupted
from osad.eval.aggregate import SettingsMismatch, load_run, settings_mismatches
from osad.eval.protocol import condition_settings
from osad.rundir import RunDir
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


def _advance(item: SweepRun, config: Config, progress: bool) -> tuple[str, ...]:
    """Bring one run to 'evaluated' under the sweep's evaluation; return what was done."""
    run = item.run
    actions: list[str] = []
    if run.config.is_file():
        check_same_training(run, config)
    stale = is_finished(run) and bool(stale_conditions(run, config))
    if is_finished(run) and same_evaluation(run, config) and not stale:
        return ("skipped",)
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
) -> list[Step]:
    """Train and evaluate every run of ``sweep`` under ``out`` that has no results yet.

    Interrupted (SIGINT/SIGTERM during training saves a checkpoint), it raises
    :class:`~osad.errors.TrainingInterrupted`; calling it again continues where it
    stopped. ``report`` receives one line per run (default: printed above the bar).
    """
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
