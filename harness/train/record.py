"""``run.json``: what a training run is doing and did (status, timings, versions, git commit).

The file is rewritten atomically on every change, so a reader (``harness grid status``, the
results store) always sees a whole JSON object. ``status`` is one of pending, running, done,
failed; a failed run records its error message.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.atomic import write_json_atomic

RUN_RECORD = "run.json"
STATUSES = ("pending", "running", "done", "failed")
_PACKAGES = ("harness", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide a run's numerics, and Python's."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """The commit of the checkout the harness runs from (with ``-dirty`` if modified), or None."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def read_run_record(run_dir: Path) -> dict[str, Any]:
    """run.json of ``run_dir`` (empty when absent or unreadable)."""
    try:
        value = json.loads((run_dir / RUN_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


class RunRecord:
    """The run.json of one run directory; ``update`` merges fields and rewrites it atomically."""

    def __init__(self, run_dir: Path, *, enabled: bool = True):
        self.path = run_dir / RUN_RECORD
        self.enabled = enabled
        self.data: dict[str, Any] = read_run_record(run_dir)

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` (``timings`` merges key by key) and write the file."""
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"run status {fields['status']!r} is not one of {STATUSES}")
        timings = fields.pop("timings", None)
        self.data.update(fields)
        if timings:
            self.data.setdefault("timings", {}).update(timings)
        self.data["updated_at"] = time.time()
        if self.enabled:
            write_json_atomic(self.path, self.data, default=str)
