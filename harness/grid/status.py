"""``harness grid status SPEC``: every cell of a grid and the state of its stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.grid import rundir
from harness.grid.launch import cell_eval_spec
from harness.grid.spec import Cell, LoadedSpec
from harness.grid.stages import missing_evals


def _train_progress(run_dir: Path) -> str:
    from harness.results.store import _last_metrics

    last = _last_metrics(run_dir)
    if not last:
        return ""
    loss = last.get("loss")
    loss_text = f" loss {loss:.4f}" if isinstance(loss, (int, float)) else ""
    return f"step {last.get('step', '?')}{loss_text}"


def cell_status(loaded: LoadedSpec, cell: Cell, runs_dir: Path) -> dict[str, Any]:
    """One status row: labels, id, overall state, train / eval / winrate states, the log to read."""
    run_dir = runs_dir / cell.id
    row: dict[str, Any] = dict(cell.labels)
    row["id"] = cell.id
    if not run_dir.is_dir():
        return {**row, "state": "missing", "train": "", "evals": "", "winrate": "", "log": ""}
    record = rundir.read_grid_record(run_dir)
    stages = record.get("stages", {})
    run = rundir.read_json(run_dir / rundir.RUN_RECORD) or {}
    train_state = "done" if rundir.train_done(run_dir) else rundir.stage_state(stages.get("train"))
    if train_state == "missing" and run.get("status"):
        train_state = str(run["status"])
    eval_spec = cell_eval_spec(loaded, cell)
    missing = missing_evals(run_dir, eval_spec)
    evals = f"{len(eval_spec.tasks) - len(missing)}/{len(eval_spec.tasks)}"
    if cell.is_baseline:
        winrate = "baseline"
    elif cell.baseline:
        result = rundir.eval_result(run_dir, "winrate")
        score = result.get("score") if result else None
        winrate = f"{score:.2f}" if isinstance(score, (int, float)) else rundir.stage_state(stages.get("winrate"))
    else:
        winrate = ""
    failed = [s for s in ("train", "eval", "winrate") if rundir.stage_state(stages.get(s)) == "failed"
              and not (s == "train" and train_state == "done")
              and not (s == "eval" and not missing)]
    if failed:
        state, log = "failed", stages[failed[0]].get("log", "")
    elif train_state == "done" and not missing:
        state, log = "done", ""
    elif train_state in {"running", "interrupted"}:
        state, log = train_state, stages.get("train", {}).get("log", "")
    elif train_state == "done":
        state, log = "evaluating" if rundir.stage_state(stages.get("eval")) == "running" else "trained", ""
    else:
        state, log = "pending", ""
    detail = _train_progress(run_dir)
    job = record.get("slurm", {}).get("job_id")
    return {**row, "state": state, "train": f"{train_state} {detail}".strip(), "evals": evals,
            "winrate": winrate, "slurm_job": job or "", "log": log}


def grid_status(loaded: LoadedSpec, cells: list[Cell], runs_dir: Path) -> list[dict[str, Any]]:
    """Status rows of every cell, in grid order."""
    return [cell_status(loaded, cell, runs_dir) for cell in cells]
