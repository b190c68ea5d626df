"""Launching a grid: stages as subprocesses, crash isolation, idempotent re-runs, status, tables.

The stages are driven through ``HARNESS_GRID_CLI`` by a small scripted CLI written by the test,
which follows the run-directory contract (run.json, metrics.jsonl, eval/<task>.json) and logs
every invocation, so the orchestration is tested on its own: what runs, what is skipped, what a
crash leaves behind. ``test_slurm.py`` runs a real tiny cell through the real train and eval.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.grid.launch import run_grid
from harness.grid.spec import expand, load_grid_spec
from harness.grid.status import grid_status

SCRIPTED_CLI = r'''
import hashlib, json, os, sys, time
from pathlib import Path
import yaml
args = sys.argv[1:]
with open(os.environ["GRID_TEST_CALLS"], "a") as handle:
    handle.write(json.dumps(args) + "\n")
with open(os.environ["GRID_TEST_CALLS"] + ".env", "a") as handle:
    handle.write(json.dumps([os.environ.get(k) for k in ("JAX_COMPILATION_CACHE_DIR",
                                                         "JAX_COMPILATION_CACHE_MAX_SIZE")]) + "\n")
def put(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp"); tmp.write_text(json.dumps(value)); os.replace(tmp, path)
if args[0] == "train":
    config = yaml.safe_load(Path(args[1]).read_text()); run = Path(args[3])
    if str(config["train"]["lr"]) == os.environ.get("GRID_TEST_CRASH_LR"):
        print("Traceback: simulated crash in the train step", file=sys.stderr); sys.exit(3)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 2, "loss": config["train"]["lr"] * 100}) + "\n")
    put(run / "run.json", {"status": "done", "data": {"instances": 40}})
elif args[:2] == ["eval", "winrate"]:
    runs, baseline = args[2:args.index("--baseline")], Path(args[args.index("--baseline") + 1])
    for run in map(Path, runs):
        if run.name == os.environ.get("GRID_TEST_WINRATE_FAIL"):
            print(f"error: {run}: simulated judge failure", file=sys.stderr); continue
        put(run / "eval" / "winrate.json", {"task": "winrate", "protocol": "pairwise", "score": 60.0, "metrics": {},
            "n": 5, "records": [], "baseline": str(baseline), "judge": {"name": args[args.index("--judge") + 1]}})
    sys.exit(1 if os.environ.get("GRID_TEST_WINRATE_FAIL") in [Path(r).name for r in runs] else 0)
else:
    run = Path(args[1]); tasks = args[args.index("--tasks") + 1].split(",")
    protocol = args[args.index("--protocol") + 1]
    for task in tasks:
        score = int(hashlib.sha256((run.name + task).encode()).hexdigest(), 16) % 100
        put(run / "eval" / f"{task}.json", {"task": task, "protocol": protocol, "score": float(score),
            "metrics": {}, "n": 5, "records": []})
'''

SPEC = """
name: launchdemo
base:
  model: {init: tiny}
  mixture: {sources: ["sharegpt:conversations.json"]}
  train: {steps: 2, global_batch: 2, lr: 1.0e-3}
axes:
  data:
    flan: {train.lr: 2.0e-3}
    sharegpt: {train.lr: 3.0e-3}
    self_instruct: {train.lr: 4.0e-3}
eval: {tasks: [mmlu, bbh], protocol: survey}
compare: {baseline: {data: self_instruct}, judge: local}
table: {model: 7b}
"""


@pytest.fixture
def grid(tmp_path, monkeypatch):
    script = tmp_path / "scripted_cli.py"
    script.write_text(SCRIPTED_CLI)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("HARNESS_GRID_CLI", f"{sys.executable} {script}")
    monkeypatch.setenv("GRID_TEST_CALLS", str(calls))
    spec = tmp_path / "grid.yaml"
    spec.write_text(textwrap.dedent(SPEC))
    loaded = load_grid_spec(spec)
    return loaded, expand(loaded), tmp_path / "runs", tmp_path / "results", calls


def _calls(path: Path) -> list[list[str]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_crash_is_isolated_and_rerun_skips_what_is_done(grid, monkeypatch):
    loaded, cells, runs, out, calls = grid
    by_data = {c.labels["data"]: c for c in cells}
    monkeypatch.setenv("GRID_TEST_CRASH_LR", "0.003")  # the sharegpt cell crashes in training
    report = run_grid(loaded, cells, runs_dir=runs, out_dir=out, progress=lambda m: None)
    assert [o.cell_id for o in report.failed] == [by_data["sharegpt"].id]
    failure = report.failed[0]
    assert failure.failed == "train" and Path(failure.log) == runs / by_data["sharegpt"].id / "logs" / "train.log"
    assert "simulated crash" in Path(failure.log).read_text()
    # the others trained, evaluated, and flan was judged against the self_instruct cell
    winrate = json.loads((runs / by_data["flan"].id / "eval" / "winrate.json").read_text())
    assert Path(winrate["baseline"]).name == by_data["self_instruct"].id
    assert not (runs / by_data["sharegpt"].id / "eval" / "winrate.json").exists()
    table = pd.read_csv(out / "table.csv", dtype=str, keep_default_na=False).set_index("Mixture")
    assert table.loc["ShareGPT", "MMLU [survey]"] == "failed" and table.loc["ShareGPT", "Status"] == "failed"
    assert table.loc["FLAN-T5", "AlpacaFarm win % [pairwise]"] == "60.00"
    assert table.loc["Self-Instruct-52K", "AlpacaFarm win % [pairwise]"] == "/*"
    assert {p.name for p in (out / "plots").iterdir()} >= {"mmlu.png", "mmlu.svg"}
    status = {row["data"]: row for row in grid_status(loaded, cells, runs)}
    assert status["sharegpt"]["state"] == "failed" and status["sharegpt"]["log"].endswith("train.log")
    assert status["flan"]["state"] == "done" and status["flan"]["winrate"] == "60.00"
    assert status["self_instruct"]["winrate"] == "baseline"

    first = len(_calls(calls))
    monkeypatch.delenv("GRID_TEST_CRASH_LR")
    report = run_grid(loaded, cells, runs_dir=runs, out_dir=out, progress=lambda m: None)
    assert not report.failed and sorted(report.skipped) == sorted([by_data["flan"].id, by_data["self_instruct"].id])
    again = _calls(calls)[first:]
    # only the crashed cell ran again: its train, its evals, its compare; flan's verdict was cached
    assert [a[0] if a[0] == "train" else " ".join(a[:2]) for a in again] == [
        "train", f"eval {runs / by_data['sharegpt'].id}", "eval winrate"]
    assert by_data["sharegpt"].id in again[2][2]
    third = len(_calls(calls))
    run_grid(loaded, cells, runs_dir=runs, out_dir=out, progress=lambda m: None)
    assert len(_calls(calls)) == third  # a finished grid starts no process at all


def test_compare_judges_a_baseline_group_in_one_process(grid, monkeypatch):
    """Both cells of the self_instruct baseline are judged by one winrate process (one judge load);
    a cell the judge fails on is the only failure and is judged again on the next run."""
    loaded, cells, runs, out, calls = grid
    by_data = {c.labels["data"]: c for c in cells}
    monkeypatch.setenv("GRID_TEST_WINRATE_FAIL", by_data["sharegpt"].id)
    report = run_grid(loaded, cells, runs_dir=runs, out_dir=None, progress=lambda m: None)
    winrate_calls = [a for a in _calls(calls) if a[:2] == ["eval", "winrate"]]
    assert len(winrate_calls) == 1
    assert winrate_calls[0][2:4] == [str(runs / by_data["flan"].id), str(runs / by_data["sharegpt"].id)]
    assert [(o.cell_id, o.failed) for o in report.failed] == [(by_data["sharegpt"].id, "winrate")]
    assert report.failed[0].log == str(runs / by_data["self_instruct"].id / "logs" / "compare.log")
    assert "simulated judge failure" in Path(report.failed[0].log).read_text()
    assert (runs / by_data["flan"].id / "eval" / "winrate.json").exists()
    # every stage process shares one bounded jax compilation cache under the runs folder
    caches = {tuple(json.loads(line)) for line in Path(f"{calls}.env").read_text().splitlines()}
    assert caches == {(str((runs / ".jax_cache").resolve()), str(4 * 1024**3))}
    monkeypatch.delenv("GRID_TEST_WINRATE_FAIL")
    before = len(_calls(calls))
    report = run_grid(loaded, cells, runs_dir=runs, out_dir=None, progress=lambda m: None)
    assert not report.failed
    assert [a[2:3] for a in _calls(calls)[before:]] == [[str(runs / by_data["sharegpt"].id)]]


def test_new_eval_task_reuses_trained_cells(grid):
    loaded, cells, runs, out, calls = grid
    run_grid(loaded, cells, runs_dir=runs, out_dir=None, progress=lambda m: None)
    before = len(_calls(calls))
    spec_path = loaded.path
    spec_path.write_text(spec_path.read_text().replace("tasks: [mmlu, bbh]", "tasks: [mmlu, bbh, alpacafarm]"))
    loaded2 = load_grid_spec(spec_path)
    cells2 = expand(loaded2)
    assert [c.id for c in cells2] == [c.id for c in cells]  # eval tasks are not part of the run config
    run_grid(loaded2, cells2, runs_dir=runs, out_dir=None, progress=lambda m: None)
    new = _calls(calls)[before:]
    assert [a[0] for a in new] == ["eval"] * 3 and all(a[a.index("--tasks") + 1] == "alpacafarm" for a in new)


def test_interrupted_stage_reads_interrupted(grid):
    loaded, cells, runs, _, _ = grid
    from harness.grid.launch import prepare
    from harness.grid.rundir import update_grid_record

    prepare(loaded, cells, runs)
    dead_pid = os.getpid() + 100000  # beyond the default pid range: no such process
    run_dir = runs / cells[0].id
    update_grid_record(run_dir, stages={"train": {"status": "running", "pid": dead_pid, "host": os.uname().nodename,
                                                  "log": str(run_dir / "logs" / "train.log")}})
    (run_dir / "run.json").write_text(json.dumps({"status": "running"}))
    rows = grid_status(loaded, cells, runs)
    assert rows[0]["state"] == "interrupted" and rows[1]["state"] == "pending"


def test_cli_grid_and_status(grid, capsys, monkeypatch):
    loaded, cells, runs, out, _ = grid
    monkeypatch.setenv("GRID_TEST_CRASH_LR", "0.003")
    main(["grid", str(loaded.path), "--runs-dir", str(runs), "--out", str(out), "--only", "data=flan"])
    captured = capsys.readouterr()
    assert "FLAN-T5" in captured.out and f"{out}" in captured.out
    # --only ran flan and the baseline it is judged against, not sharegpt
    assert (runs / cells[0].id / "run.json").exists() and (runs / cells[2].id / "run.json").exists()
    assert not (runs / cells[1].id).exists()
    main(["grid", "status", str(loaded.path), "--runs-dir", str(runs)])
    status = capsys.readouterr().out
    assert "2 done, 1 missing" in status and cells[1].id in status
    main(["grid", "status", str(loaded.path), "--runs-dir", str(runs), "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["state"] for r in rows] == ["done", "missing", "done"]


def test_a_multi_node_cell_fails_when_any_task_fails():
    """A SLURM job of several tasks reports rank 0's outcome, unless another rank failed."""
    from harness.grid.executors import CellTask, _collect
    from harness.grid.spec import EvalSpec
    from harness.grid.stages import CellOutcome

    class FinishedJob:  # submitit's Job.results(): one result per task
        def __init__(self, per_task):
            self.per_task = per_task

        def results(self):
            return self.per_task

    task = CellTask("abc", Path("runs/abc"), EvalSpec())
    rank0 = CellOutcome("abc", ran=["train", "eval"])
    rank1_failed = CellOutcome("abc", failed="train", log="runs/abc/logs/train.rank1.log")
    assert _collect(task, FinishedJob([rank0, CellOutcome("abc", ran=["train"])])) is rank0
    assert _collect(task, FinishedJob([rank0, rank1_failed])) is rank1_failed
