"""osad sweep end to end on a miniature: 1 split, 1 epoch, 2 methods; interruption and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from osad.cli import main
from osad.config import make_config
from osad.errors import ConfigError
from osad.eval.aggregate import worst_case
from osad.eval.results import SUMMARY_FORMAT, read_summary
from osad.runlock import run_lock
from osad.sweep import load_sweep
from osad.sweep.figures import budget_config
from osad.sweep.runner import threads_per_run
from osad.sweep.spec import FigureSpec
from osad.sweep.summary import WORST, compute_time, paired_differences
from osad.train import TrainObjective

ROOT = Path(__file__).resolve().parents[1]

# Tiny models on a busy 2-core machine run far faster on one thread.
pytestmark = pytest.mark.usefixtures("one_thread")

# Two epochs of six steps (batch 128) with a checkpoint after every step, so an
# interruption leaves a checkpoint to resume from.
MINIATURE = """\
description: miniature for the tests
overrides:
  - model.width=2
  - model.latent_dim=8
  - train.epochs=1
  - train.batch_size=128
  - train.attack.steps=1
  - eval.attacks.pgd.steps=1
  - eval.scores=[msp,openmax]
  - eval.version=null
  - checkpoint.every_steps=1
splits: [0]
methods:
  plain: {overrides: [method=plain]}
  osdn: {}
compare: [[osdn, plain]]
figures: {split: 0, methods: [plain, osdn], score: openmax, attack: pgd, eps: [0, 16, 32]}
"""


def _write(tmp_path: Path, text: str = MINIATURE) -> Path:
    path = tmp_path / "mini.yaml"
    path.write_text(text)
    return path


def _sweep(preset: Path, out: Path, *extra: str) -> int:
    return main(["sweep", str(preset), "--out", str(out), "--no-progress", *extra])


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, one_thread):
    """The miniature run without interruption: the reference."""
    folder = tmp_path_factory.mktemp("sweep")
    preset, out = _write(folder), folder / "out"
    assert _sweep(preset, out) == 0
    return preset, out


@pytest.mark.slow
def test_sweep_runs_every_method_and_tabulates_its_metrics(finished_sweep):
    out = finished_sweep[1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] == summary["runs"] == 2 and summary["missing"] == []
    assert summary["format_version"] == SUMMARY_FORMAT
    assert read_summary(out / "summary.json").methods == summary["methods"]
    assert list(summary["methods"]) == ["plain", "osdn"]
    assert list(summary["conditions"]) == ["clean", "fgsm", "pgd", WORST]
    for label in ("plain", "osdn"):
        metrics = json.loads((out / label / "split0" / "eval" / "metrics.json").read_text())
        saved = (out / label / "split0" / "config.yaml").read_text()
        assert f"method: {label}" in saved
        for name, condition in metrics["conditions"].items():
            cell = summary["methods"][label]["conditions"][name]
            assert cell["closed_set_accuracy"]["values"] == [condition["closed_set_accuracy"]]
            assert cell["closed_set_accuracy"]["mean"] == condition["closed_set_accuracy"]
            assert cell["auroc"]["openmax"]["mean"] == condition["auroc"]["openmax"]
            assert cell["auroc"]["msp"]["std"] is None  # one split: no spread
        attacked = [c for name, c in metrics["conditions"].items() if name != "clean"]
        worst = summary["methods"][label]["conditions"][WORST]
        assert worst["closed_set_accuracy"]["mean"] == min(
            c["closed_set_accuracy"] for c in attacked
        )
        for score in ("msp", "openmax"):
            assert worst["auroc"][score]["mean"] == min(c["auroc"][score] for c in attacked)
    osdn_pgd = summary["methods"]["osdn"]["conditions"]["pgd"]
    (pair,) = summary["paired"]
    assert (pair["a"], pair["b"]) == ("osdn", "plain")
    plain_pgd = summary["methods"]["plain"]["conditions"]["pgd"]
    difference = pair["conditions"]["pgd"]["auroc"]["msp"]
    assert difference["values"] == [
        osdn_pgd["auroc"]["msp"]["mean"] - plain_pgd["auroc"]["msp"]["mean"]
    ]
    assert difference["ahead"] == int(difference["values"][0] > 0) and difference["splits"] == [0]
    table = (out / "results.md").read_text()
    assert "## paired differences" in table and "| osdn - plain | " in table
    assert f"| osdn | 0 | {osdn_pgd['closed_set_accuracy']['mean']:.4f} |" in table
    assert "## pgd: PGD linf eps 32/255, step 8/255, 1 steps" in table
    assert "PARTIAL" not in table
    assert [r["actions"] for r in _log(out)] == [["trained", "evaluated"]] * 2
    compute = summary["compute"]
    assert compute["steps"] == 2 and set(compute["per_method"]) == {"plain", "osdn"}
    assert compute["seconds"] == pytest.approx(sum(r["seconds"] for r in _log(out)), abs=0.1)
    assert "| osdn | 1 |" in table.split("## compute")[1]


@pytest.mark.slow
def test_figures_and_the_budget_curve_agree_with_the_runs(finished_sweep):
    out = finished_sweep[1]
    figures = out / "figures"
    for name in ("roc-openmax-split0.png", "eps-openmax-split0.png"):
        assert (figures / name).read_bytes().startswith(b"\x89PNG")
    summary = json.loads((out / "summary.json").read_text())
    for label in ("plain", "osdn"):
        curve = json.loads((figures / f"eps-{label}-split0.json").read_text())
        assert curve["attacks"][0] == "PGD linf eps 16/255, step 4/255, 1 steps"
        conditions = summary["methods"][label]["conditions"]
        # eps 0 is the clean condition and eps 32 the sweep's own PGD: same seed, same numbers.
        for eps_index, name in ((0, "clean"), (2, "pgd")):
            accuracy, auroc = conditions[name]["closed_set_accuracy"], conditions[name]["auroc"]
            assert curve["closed_set_accuracy"][eps_index] == accuracy["mean"]
            assert curve["auroc"][eps_index] == auroc["openmax"]["mean"]


@pytest.mark.slow
def test_finished_runs_are_skipped(finished_sweep, capsys):
    preset, out = finished_sweep
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert _sweep(preset, out) == 0
    stdout = capsys.readouterr().out
    assert "| plain | 0 |" in stdout
    for path, mtime in before.items():  # tables and figures are drawn again, nothing else
        if path.name not in ("summary.json", "results.md") and path.suffix != ".png":
            assert path.stat().st_mtime_ns == mtime, path


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_and_matches_the_uninterrupted_one(
    finished_sweep, tmp_path, monkeypatch, capsys
):
    original = TrainObjective.__call__
    calls = {"n": 0}

    def interrupt_on_call_8(self, model, x, y):  # plain takes calls 1-6; this is osdn's 2nd step
        calls["n"] += 1
        if calls["n"] == 8:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, model, x, y)

    monkeypatch.setattr(TrainObjective, "__call__", interrupt_on_call_8)
    preset, out = _write(tmp_path), tmp_path / "out"
    assert _sweep(preset, out) == 130
    err = capsys.readouterr().err
    assert err.startswith("osad: sweep interrupted in osdn split 0 (interrupted by SIGINT")
    assert err.rstrip().endswith("run the same osad sweep command again to continue")
    osdn = out / "osdn" / "split0"
    assert (out / "plain" / "split0" / "eval" / "results.md").is_file()
    assert (osdn / "checkpoints" / "latest").is_file() and not (osdn / "model.safetensors").exists()

    assert _sweep(preset, out, "--summary-only") == 0
    partial = capsys.readouterr().out
    assert "1 of 2 runs finished" in partial
    assert "**PARTIAL**: not finished: osdn split 0." in partial

    monkeypatch.undo()
    plain_metrics = out / "plain" / "split0" / "eval" / "metrics.json"
    mtime = plain_metrics.stat().st_mtime_ns
    assert _sweep(preset, out) == 0
    assert plain_metrics.stat().st_mtime_ns == mtime  # skipped, not redone
    assert [r["actions"] for r in _log(out)] == [["trained", "evaluated"], ["resumed", "evaluated"]]
    resumed = json.loads((out / "summary.json").read_text())["methods"]
    reference = json.loads((finished_sweep[1] / "summary.json").read_text())["methods"]
    assert resumed == reference  # bit-identical resume gives the same numbers


@pytest.mark.slow
def test_a_run_made_with_another_config_is_refused(finished_sweep, tmp_path, capsys):
    out = finished_sweep[1]
    changed = _write(tmp_path, MINIATURE.replace("train.epochs=1", "train.epochs=2"))
    assert _sweep(changed, out) == 2
    err = capsys.readouterr().err
    assert err.startswith("osad: error: ") and err.count("\n") == 1
    assert "was made with train.epochs=1, the sweep now gives 2" in err


@pytest.mark.slow
def test_a_changed_evaluation_re_evaluates_without_training(finished_sweep, tmp_path):
    reference = finished_sweep[1]
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    weights = out / "osdn" / "split0" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    changed = _write(tmp_path, MINIATURE.replace("[msp,openmax]", "[msp,openmax,energy]"))
    assert _sweep(changed, out) == 0
    assert weights.stat().st_mtime_ns == mtime
    new_steps = [r["actions"] for r in _log(out)][-2:]
    assert new_steps == [["eval changed", "evaluated"]] * 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scores"] == ["msp", "openmax", "energy"]
    before = json.loads((reference / "summary.json").read_text())["methods"]["osdn"]
    for name, condition in before["conditions"].items():  # same weights, same numbers
        now = summary["methods"]["osdn"]["conditions"][name]
        assert now["closed_set_accuracy"] == condition["closed_set_accuracy"]
        assert now["auroc"]["openmax"] == condition["auroc"]["openmax"]


@pytest.mark.slow
def test_stale_runs_are_named_left_out_of_the_summary_and_re_evaluated(
    finished_sweep, tmp_path, capsys
):
    out = tmp_path / "out"
    shutil.copytree(finished_sweep[1], out)
    weights = {
        m: (out / m / "split0" / "model.safetensors").stat().st_mtime_ns for m in ("plain", "osdn")
    }
    # The preset's PGD changes; only plain is re-run, so osdn's results are stale.
    changed = _write(tmp_path, MINIATURE.replace("pgd.steps=1", "pgd.steps=2"))
    assert _sweep(changed, out, "--methods", "plain") == 0
    capsys.readouterr()
    assert _sweep(changed, out, "--summary-only") == 0
    table = capsys.readouterr().out
    assert "1 of 2 runs finished" in table and "figure " not in table  # osdn's is stale
    assert (
        "**STALE**, left out: evaluated under other settings than the preset: osdn split 0 "
        "(pgd: attack.steps 1 vs 2, the run's vs the preset's)" in table
    )
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == ["plain"]
    assert summary["stale"] == [
        {
            "method": "osdn",
            "split": 0,
            "conditions": {
                "pgd": {
                    "found": "PGD linf eps 32/255, step 8/255, 1 steps",
                    "preset": "PGD linf eps 32/255, step 8/255, 2 steps",
                    "differs": "attack.steps 1 vs 2",
                }
            },
        }
    ]
    # Results recorded under other settings than config.yaml says (hand-edited, or an
    # evaluation with other settings) are stale too.
    metrics_path = out / "plain" / "split0" / "eval" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["conditions"]["pgd"]["attack"]["steps"] = 5
    metrics_path.write_text(json.dumps(metrics))
    assert _sweep(changed, out, "--summary-only") == 0
    assert "0 of 2 runs finished" in capsys.readouterr().out
    # Running the sweep again re-evaluates both, without training.
    assert _sweep(changed, out) == 0
    assert [r["actions"] for r in _log(out)][-2:] == [
        ["stale results", "evaluated"],
        ["eval changed", "evaluated"],
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] == 2 and summary["stale"] == []
    for method, mtime in weights.items():
        assert (out / method / "split0" / "model.safetensors").stat().st_mtime_ns == mtime
        recorded = json.loads((out / method / "split0" / "eval" / "metrics.json").read_text())
        assert recorded["conditions"]["pgd"]["attack"]["steps"] == 2
    assert "STALE" not in (out / "results.md").read_text()
    # A condition beyond the preset's (an attack added by hand) is neither stale nor tabulated.
    metrics = json.loads(metrics_path.read_text())
    metrics["conditions"]["extra"] = {**metrics["conditions"]["pgd"], "closed_set_accuracy": 0.0}
    metrics_path.write_text(json.dumps(metrics))
    assert _sweep(changed, out, "--summary-only") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] == 2 and "extra" not in summary["conditions"]


def _numbers(metrics_path: Path) -> dict:
    """metrics.json without the weights' sha256: a safetensors header lists its metadata
    in an order that changes from process to process, so equal weights may hash apart."""

    def without_hashes(tree):
        if isinstance(tree, dict):
            return {k: without_hashes(v) for k, v in tree.items() if not k.endswith("sha256")}
        return tree

    return without_hashes(json.loads(metrics_path.read_text()))


@pytest.mark.slow
def test_two_jobs_give_the_runs_and_tables_of_one_job(finished_sweep, tmp_path, monkeypatch):
    # The reference ran in this process on 1 thread (one_thread); each job takes its
    # thread count from OMP_NUM_THREADS.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    preset, reference = finished_sweep
    out = tmp_path / "out"
    assert _sweep(preset, out, "--jobs", "2") == 0
    for label in ("plain", "osdn"):
        run, ref = out / label / "split0" / "eval", reference / label / "split0" / "eval"
        assert _numbers(run / "metrics.json") == _numbers(ref / "metrics.json")
        assert json.loads((run / "metrics.json").read_text())["torch_threads"] == 1
    log = _log(out)  # in the order the runs finished, by the parent alone
    assert sorted(r["method"] for r in log) == ["osdn", "plain"]
    assert all(r["actions"] == ["trained", "evaluated"] for r in log)
    summary = json.loads((out / "summary.json").read_text())
    expected = json.loads((reference / "summary.json").read_text())
    assert summary["methods"] == expected["methods"] and summary["paired"] == expected["paired"]
    assert list(summary["compute"]["per_method"]) == ["plain", "osdn"]  # preset order
    tables, expected_tables = ((o / "results.md").read_text() for o in (out, reference))
    assert tables.split("## compute")[0] == expected_tables.split("## compute")[0]
    # A second call skips both without starting a process.
    before = (out / "sweep.jsonl").read_text()
    assert _sweep(preset, out, "--jobs", "2") == 0
    assert (out / "sweep.jsonl").read_text() == before


@pytest.mark.slow
def test_a_run_failing_in_its_job_is_named_and_the_others_finish(
    finished_sweep, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    preset, out = finished_sweep[0], tmp_path / "out"
    shutil.copytree(finished_sweep[1], out)
    (out / "sweep.jsonl").unlink()
    shutil.rmtree(out / "plain")
    (out / "osdn" / "split0" / "eval" / "results.md").unlink()  # to evaluate again
    # Another process (this one) holds plain's run directory, as a second sweep on the
    # same --out would: plain's job is refused, osdn's goes on.
    with run_lock(out / "plain" / "split0"):
        assert _sweep(preset, out, "--jobs", "2") == 2
    captured = capsys.readouterr()
    (line,) = [line for line in captured.out.splitlines() if line.startswith("[")][:1]
    assert line.startswith("[1/2] plain split 0: failed: ")  # osdn is still evaluating
    assert f"is in use by process {os.getpid()}" in line
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("osad: error: 1 of 2 runs failed (plain split 0: see")
    assert [(r["method"], r["actions"]) for r in _log(out)] == [("osdn", ["evaluated"])]
    assert not (out / "plain" / "split0").exists()  # nothing written for it
    summary = json.loads((out / "summary.json").read_text())  # the others are tabulated
    assert summary["finished"] == 1 and summary["missing"] == [{"method": "plain", "split": 0}]


@pytest.mark.slow
def test_a_sweep_stopped_by_sigterm_stops_its_jobs_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # osdn trains 10 epochs: it is still training when plain has finished its evaluation.
    preset = _write(tmp_path, MINIATURE.replace("osdn: {}", "osdn: {overrides: [train.epochs=10]}"))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "osad.cli", "sweep", str(preset), "--out", str(out)]
    parent = subprocess.Popen(
        [*command, "--jobs", "2", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600
    while not (out / "sweep.jsonl").is_file() and parent.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    parent.send_signal(signal.SIGTERM)
    stdout, stderr = parent.communicate(timeout=300)
    assert parent.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines()[-1] == (
        "osad: sweep interrupted in osdn split 0 (by SIGTERM); run the same osad sweep "
        "command again to continue"
    )
    assert "\nosdn split 0: interrupted (" in stdout and "[1/2] plain split 0: trained" in stdout
    assert [r["method"] for r in _log(out)] == ["plain"]
    osdn = out / "osdn" / "split0"
    # osdn's job saved a checkpoint, wrote no weights or results, and has ended (its lock
    # is released).
    assert (osdn / "checkpoints" / "latest").is_file()
    assert not (osdn / "model.safetensors").exists() and not (osdn / "eval").exists()
    assert not (osdn / ".lock").exists()

    assert _sweep(preset, out, "--jobs", "2") == 0
    assert [r["actions"] for r in _log(out)] == [["trained", "evaluated"], ["resumed", "evaluated"]]
    assert json.loads((out / "summary.json").read_text())["finished"] == 2


def test_the_compute_table_lists_methods_in_preset_order_whatever_order_they_finished(tmp_path):
    # --jobs N logs runs as they finish: osdn's before plain's here.
    log = [("osdn", 0, 30.0), ("plain", 1, 10.0), ("plain", 0, 20.0), ("extra", 0, 5.0)]
    (tmp_path / "sweep.jsonl").write_text(
        "".join(
            json.dumps({"method": m, "split": k, "seconds": t, "finished": f"t{i}"}) + "\n"
            for i, (m, k, t) in enumerate(log)
        )
    )
    compute = compute_time(tmp_path, ["plain", "osdn", "fd"])
    assert compute["per_method"] == {  # fd logged nothing; extra (not in the preset) last
        "plain": {"steps": 2, "seconds": 30.0},
        "osdn": {"steps": 1, "seconds": 30.0},
        "extra": {"steps": 1, "seconds": 5.0},
    }
    assert list(compute["per_method"]) == ["plain", "osdn", "extra"]
    assert compute["steps"] == 4 and compute["seconds"] == 65.0 and compute["last_finished"] == "t3"


def test_jobs_must_be_one_or_more(tmp_path, capsys):
    out = tmp_path / "out"
    for jobs in ("0", "-2", "two"):
        assert _sweep(_write(tmp_path), out, "--jobs", jobs) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "argument --jobs: must be a whole number" in err
    assert not out.exists()


def test_threads_per_job_come_from_omp_num_threads_or_the_cpus(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_run(2) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "3,1")
    with pytest.raises(ConfigError, match="OMP_NUM_THREADS must be a positive integer"):
        threads_per_run(2)
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert [threads_per_run(jobs) for jobs in (1, 2, 3, 16, 32)] == [16, 8, 5, 1, 1]


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        (MINIATURE.replace("splits:", "splitz:"), (), "unknown key 'splitz'"),
        (MINIATURE.replace("osdn: {}", "osdn: {overrides: [method=osdm]}"), (), "osdn: unknown"),
        (MINIATURE, ("--methods", "plain,osnd"), "no method 'osnd' (did you mean 'osdn'?)"),
        (MINIATURE, ("--splits", "3"), "no split 3"),
        (MINIATURE.replace("[[osdn, plain]]", "[[osdn, plian]]"), (), "no method 'plian'"),
        (MINIATURE.replace("[[osdn, plain]]", "[osdn, plain]"), (), "[method, other method]"),
        (MINIATURE, ("--splits", "a"), "argument --splits: must be a comma list of integers"),
        (  # an anti-spoofing preset got "unknown config key 'data.sources'"
            f"config: {ROOT / 'configs' / 'fas-faces.yaml'}\n{MINIATURE}",
            (),
            "is a 'task: fas' config; sweeps run open-set methods only",
        ),
    ],
)
def test_bad_sweeps_stop_with_one_line_before_any_run(tmp_path, capsys, text, args, message):
    out = tmp_path / "out"
    assert _sweep(_write(tmp_path, text), out, *args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "sweeps").glob("*.yaml")))
def test_committed_sweep_presets_load(path):
    sweep = load_sweep(path)
    assert len(sweep.methods) >= 2 and sweep.splits
    configs = [sweep.run_config(m, sweep.splits[0]) for m in sweep.methods]
    assert len({json.dumps(c.to_dict(), sort_keys=True) for c in configs}) == len(configs)
    assert configs[0] == make_config(configs[0].to_dict())


def test_the_worst_case_takes_each_score_from_its_own_strongest_attack():
    fgsm = {"closed_set_accuracy": 0.9, "auroc": {"msp": 0.8, "openmax": 0.5}}
    adaptive = {"closed_set_accuracy": 0.7, "auroc": {"msp": 0.2, "openmax": 0.6}}
    reconstruction_only = {"closed_set_accuracy": 0.95, "auroc": {"reconstruction": 0.4}}
    worst = worst_case([fgsm, adaptive, reconstruction_only])
    assert worst == {
        "closed_set_accuracy": 0.7,
        "auroc": {"msp": 0.2, "openmax": 0.5, "reconstruction": 0.4},
    }


def test_paired_differences_use_only_the_splits_both_methods_finished():
    def run(acc, msp, **more):
        return {"pgd": {"closed_set_accuracy": acc, "auroc": {"msp": msp, **more}}}

    per_run = {
        ("a", 0): run(0.8, 0.6, openmax=0.7),
        ("b", 0): run(0.7, 0.5),
        ("a", 1): run(0.6, 0.3),
        ("b", 1): run(0.7, 0.4),
        ("a", 2): run(0.9, 0.9),  # b did not finish split 2
    }
    pair = paired_differences(per_run, "a", "b", (0, 1, 2))
    pgd = pair["conditions"]["pgd"]
    assert pgd["closed_set_accuracy"]["values"] == pytest.approx([0.1, -0.1])
    assert pgd["closed_set_accuracy"]["splits"] == [0, 1]
    assert pgd["closed_set_accuracy"]["ahead"] == 1
    assert pgd["auroc"]["msp"]["mean"] == pytest.approx(0.0)
    assert set(pgd["auroc"]) == {"msp"}  # openmax only in a's run of split 0


@pytest.mark.parametrize(
    "text,message",
    [
        ("? [a, b]\n: 1\n", "a key must be a plain name"),
        ("splits: [0]\nmethods: {plain: {}}\nsettings: {train: {lr: 1e-3}}\n", None),
        ("splits: [0]\nmethods: {plain: {}}\nsettings: {train: {lr: .inf}}\n", "finite number"),
        ("splits: [0]\nmethods: {plain: {overrides: [" + "x" * 10**5 + "]}}\n", "malformed"),
        ("splits: [0]\nmethods:\n  ? " + "m" * 10**5 + "\n  : 3\n", "must be a mapping"),
        ("splits: [0]\n? " + "x" * 10**5 + "\n: 1\n", "unknown key"),
    ],
)
def test_sweep_files_go_through_the_strict_loader(tmp_path, text, message):
    from osad.errors import ConfigError

    path = tmp_path / "s.yaml"
    path.write_text(text)
    if message is None:
        assert load_sweep(path).run_config(load_sweep(path).methods[0], 0).train.lr == 1e-3
        return
    with pytest.raises(ConfigError, match=message) as info:
        load_sweep(path)
    assert len(str(info.value)) < 300, str(info.value)[:400]


def test_a_run_process_killed_without_reporting_is_a_failure_not_a_traceback():
    # SIGKILL (e.g. for memory) closes the run's pipe unsent: it reads as ready, and
    # recv() raised EOFError, which crashed the sweep with a traceback
    import multiprocessing

    from osad.sweep.runner import _failure, _outcome

    receive, send = multiprocessing.Pipe(duplex=False)
    send.close()
    assert _outcome(receive, -9) == ("died", -9)
    assert "exit code -9" in _failure(("died", -9))
    receive, send = multiprocessing.Pipe(duplex=False)
    send.send(("failed", "bad config"))
    assert _outcome(receive, 0) == ("failed", "bad config")


def test_a_run_interrupted_alone_fails_the_sweep():
    # a signal to one run's process (not to the sweep) left a partial sweep exiting 0
    from osad.sweep.runner import _failure

    assert "interrupted" in _failure(("interrupted",))


def test_the_budget_curve_evaluates_only_the_budgets_even_with_an_ensemble_configured():
    # A sweep whose runs evaluate the ensemble (eval.version) drew a budget curve with one
    # point more than its budgets (the ensemble at the largest eps) and crashed drawing it.
    config = make_config(overrides=["eval.version=fast"])
    spec = FigureSpec(split=0, methods=("osdn",), score="openmax", attack="pgd", eps=(0, 8, 32))
    curve = budget_config(config, spec)
    assert curve.eval.version is None
    assert list(curve.eval.attacks) == ["eps8", "eps32"]
