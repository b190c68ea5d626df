"""What the grid keeps in a run directory beside what ``harness train`` / ``harness eval`` write.

``runs/<id>/cell.yaml`` is the resolved run config the cell is trained with, and
``runs/<id>/grid.json`` records the grid, the cell's labels and the state of each stage the grid
ran (train, eval, winrate) with the path of its log. ``run.json`` (status, timings) and
``eval/<task>.json`` belong to train and eval. Every write is atomic (temporary name, then
``os.replace``), so a killed launcher never leaves half a file behind.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from harness.atomic import write_json_atomic

CELL_CONFIG = "cell.yaml"
GRID_RECORD = "grid.json"
RUN_RECORD = "run.json"


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when the file is absent or unreadable (half-written)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_grid_record(run_dir: Path) -> dict[str, Any]:
    """The grid's record of a cell (empty when the grid never touched it)."""
    return read_json(run_dir / GRID_RECORD) or {}


def update_grid_record(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into grid.json (``stages`` merges per stage) and write it atomically."""
    record = read_grid_record(run_dir)
    stages = fields.pop("stages", None)
    record.update(fields)
    if stages:
        record.setdefault("stages", {}).update(stages)
    write_json_atomic(run_dir / GRID_RECORD, record, default=str)
    return record


def stage_started(stage: str, log: Path) -> dict[str, Any]:
    """The grid.json entry of a stage that has just started in this process."""
    return {stage: {"status": "running", "log": str(log), "pid": os.getpid(),
                    "host": socket.gethostname(), "started": time.time()}}


def stage_finished(stage: str, log: Path, returncode: int, started: float, **extra: Any) -> dict[str, Any]:
    """The grid.json entry of a finished stage (``returncode`` 0 = done)."""
    return {stage: {"status": "done" if returncode == 0 else "failed", "log": str(log),
                    "returncode": returncode, "started": started,
                    "seconds": round(time.time() - started, 3), **extra}}


def stage_state(entry: dict[str, Any] | None) -> str:
    """The state of a stage entry; a 'running' entry whose process is gone reads 'interrupted'."""
    if not entry:
        return "missing"
    status = str(entry.get("status", "missing"))
    if status == "running" and entry.get("host") == socket.gethostname():
        pid = entry.get("pid")
        if isinstance(pid, int) and not _alive(pid):
            return "interrupted"
    return status


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def train_done(run_dir: Path) -> bool:
    """Whether ``harness train`` finished this run (run.json status ``done``)."""
    record = read_json(run_dir / RUN_RECORD)
    return bool(record) and record.get("status") == "done"


def eval_result(run_dir: Path, task: str) -> dict[str, Any] | None:
    """The summary of ``eval/<task>.json``, or None when it is absent or unreadable."""
    return read_json(run_dir / "eval" / f"{task}.json")
