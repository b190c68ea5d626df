"""Run directories -> one tidy pandas DataFrame.

One row per (run, metric): the run's id, grid and labels (``label.<axis>`` columns), its status,
its training figures, its resolved config flattened into ``config.<dotted.key>`` columns, and one
metric (``metric``, ``protocol``, ``score`` in percent, ``n``). A run with no metric yet still has
one row (metric ``None``), so a table can say it is missing, failed or running.

It reads only the run-directory contract (config.yaml or cell.yaml, run.json, metrics.jsonl,
eval/<task>.json, grid.json) and never writes; an unreadable or half-written file counts as absent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from harness.grid import rundir

STATE_COLUMNS = ["run_id", "grid", "status", "failed_stage", "log", "is_baseline", "baseline_id"]
TRAIN_COLUMNS = ["steps", "final_loss", "instances", "lexical_diversity", "train_seconds", "tokens_per_s"]
METRIC_COLUMNS = ["metric", "protocol", "score", "n", "baseline"]


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), child, out)
    elif isinstance(value, list):
        out[prefix] = json.dumps(value, default=str)
    else:
        out[prefix] = value


def _read_config(run_dir: Path) -> dict[str, Any]:
    for name in ("config.yaml", rundir.CELL_CONFIG):
        path = run_dir / name
        if path.is_file():
            try:
                value = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(value, dict):
                return value
    return {}


def _last_metrics(run_dir: Path) -> dict[str, Any]:
    """The last complete JSON line of metrics.jsonl that carries a loss (train may append eval lines)."""
    path = run_dir / "metrics.jsonl"
    last: dict[str, Any] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return last
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written while we read
        if isinstance(record, dict) and "loss" in record:
            last = record
    return last


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _find(record: dict[str, Any], *paths: str) -> Any:
    """The first of several dotted paths present in a nested record."""
    for path in paths:
        node: Any = record
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                node = None
                break
            node = node[part]
        if node is not None:
            return node
    return None


def _train_figures(run_dir: Path, run: dict[str, Any]) -> dict[str, Any]:
    last = _last_metrics(run_dir)
    instances = _find(run, "data.instances", "data.examples", "data.num_examples", "instances",
                      "manifest.instances", "data.total_examples")
    if instances is None:
        counts = _find(run, "data.counts", "manifest.counts", "data.per_source_counts")
        if isinstance(counts, dict) and counts:
            instances = sum(v for v in counts.values() if isinstance(v, (int, float)))
    diversity = _find(run, "data.lexical_diversity", "lexical_diversity", "manifest.lexical_diversity")
    stats = rundir.read_json(run_dir / "data_stats.json") or {}
    if diversity is None:
        diversity = _find(stats, "lexical_diversity", "mixture.lexical_diversity")
    if instances is None:
        instances = _find(stats, "instances", "examples")
    return {
        "steps": _number(_find(run, "final_step", "step", "steps", "train.steps")) or _number(last.get("step")),
        "final_loss": _number(_find(run, "final_loss", "train.final_loss")) or _number(last.get("loss")),
        "instances": _number(instances),
        "lexical_diversity": _number(diversity),
        "train_seconds": _number(_find(run, "timings.train_seconds", "timings.train_s", "timings.total_s",
                                       "timings.total_seconds", "timings.seconds", "timings.wall_s")),
        "tokens_per_s": _number(last.get("tokens_per_s")),
    }


def _run_state(run_dir: Path, run: dict[str, Any], grid: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """(status, failed stage, its log) from run.json and the grid's stage records."""
    stages = grid.get("stages", {})
    for stage in ("train", "eval", "winrate"):
        entry = stages.get(stage)
        if rundir.stage_state(entry) == "failed":
            if stage == "train" and run.get("status") == "done":
                continue  # a later attempt finished it
            return "failed", stage, entry.get("log")
    status = run.get("status")
    if status in {"pending", "running", "done", "failed"}:
        if status == "running" and rundir.stage_state(stages.get("train")) == "interrupted":
            return "interrupted", None, stages["train"].get("log")
        return str(status), None, None
    train_entry = stages.get("train")
    if train_entry:
        return rundir.stage_state(train_entry), None, train_entry.get("log")
    return "pending", None, None


def read_run(run_dir: Path) -> list[dict[str, Any]]:
    """The tidy rows of one run directory (one per metric, at least one)."""
    run_dir = Path(run_dir)
    run = rundir.read_json(run_dir / rundir.RUN_RECORD) or {}
    grid = rundir.read_grid_record(run_dir)
    labels = grid.get("labels") or run.get("labels") or {}
    status, failed_stage, log = _run_state(run_dir, run, grid)
    base: dict[str, Any] = {
        "run_id": grid.get("id") or run_dir.name,
        "run_dir": str(run_dir),
        "grid": grid.get("grid") or run.get("grid"),
        "status": status,
        "failed_stage": failed_stage,
        "log": log,
        "is_baseline": bool(grid.get("is_baseline", False)),
        "baseline_id": grid.get("baseline"),
        **{f"label.{axis}": str(value) for axis, value in labels.items()},
        **_train_figures(run_dir, run),
    }
    config: dict[str, Any] = {}
    _flatten("", _read_config(run_dir), config)
    base.update({f"config.{key}": value for key, value in config.items()})
    rows = []
    eval_dir = run_dir / "eval"
    for path in sorted(eval_dir.glob("*.json")) if eval_dir.is_dir() else []:
        result = rundir.read_json(path)
        if result is None or _number(result.get("score")) is None:
            continue
        rows.append({**base, "metric": str(result.get("task") or path.stem),
                     "protocol": result.get("protocol"), "score": _number(result.get("score")),
                     "n": _number(result.get("n")), "baseline": result.get("baseline")})
    return rows or [{**base, "metric": None, "protocol": None, "score": None, "n": None, "baseline": None}]


def is_run_dir(path: Path) -> bool:
    """A directory that looks like a run (any of the contract's files)."""
    return path.is_dir() and any((path / name).exists() for name in
                                 (rundir.RUN_RECORD, rundir.GRID_RECORD, "config.yaml", rundir.CELL_CONFIG))


def load_runs(run_dirs: Iterable[Path] | Path, placeholders: Iterable[dict[str, Any]] = ()) -> pd.DataFrame:
    """Read run directories into one tidy DataFrame.

    ``run_dirs`` is a folder of runs or an explicit list. ``placeholders`` are rows for cells that
    have no run directory yet (``run_id``, ``status`` 'missing', labels), so a table names them.
    """
    if isinstance(run_dirs, (str, Path)):
        root = Path(run_dirs)
        run_dirs = sorted(p for p in root.iterdir() if is_run_dir(p)) if root.is_dir() else []
    rows: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if run_dir.is_dir():
            rows.extend(read_run(run_dir))
    seen = {row["run_id"] for row in rows}
    for placeholder in placeholders:
        if placeholder["run_id"] not in seen:
            rows.append({"status": "missing", "metric": None, "score": None, **placeholder})
    frame = pd.DataFrame(rows)
    for column in STATE_COLUMNS + TRAIN_COLUMNS + METRIC_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    return frame


def label_columns(frame: pd.DataFrame) -> list[str]:
    """The ``label.<axis>`` columns, in the order they first appear."""
    return [c for c in frame.columns if c.startswith("label.")]


def runs_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run (metrics dropped), for status and train-figure views."""
    keep = [c for c in frame.columns if c not in METRIC_COLUMNS]
    return frame[keep].drop_duplicates("run_id").reset_index(drop=True)
