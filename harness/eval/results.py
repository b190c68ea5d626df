"""The on-disk result of one evaluation: ``eval/<task>.json`` in a run directory.

Layout (the run-directory contract): ``{"task", "protocol", "score" (headline number in
percent), "metrics": {...}, "n", "records": [...]}`` plus optional extra top-level keys (for the
win rate: ``baseline`` and ``judge``). Writes are atomic: a temporary file, then ``os.replace``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.atomic import write_json_atomic
from harness.errors import EvalError

REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "task": str,
    "protocol": str,
    "score": (int, float),
    "metrics": dict,
    "n": int,
    "records": list,
}


@dataclass
class EvalResult:
    """Summary and per-item records of one task evaluated under one protocol."""

    task: str
    protocol: str
    score: float
    metrics: dict[str, Any]
    n: int
    records: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the contract (extra keys after the required ones)."""
        out = {
            "task": self.task,
            "protocol": self.protocol,
            "score": self.score,
            "metrics": self.metrics,
            "n": self.n,
            "records": self.records,
        }
        for key, value in self.extra.items():
            if key in out:
                raise ValueError(f"extra key {key!r} would overwrite a required field")
            out[key] = value
        return out


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (NaN is refused: it is not JSON)."""
    write_json_atomic(path, obj, ensure_ascii=False, allow_nan=False)


def write_eval_result(result: EvalResult, out_dir: Path, name: str | None = None) -> Path:
    """Write ``<out_dir>/<name or task>.json`` atomically and return its path."""
    path = Path(out_dir) / f"{name or result.task}.json"
    atomic_write_json(path, result.to_dict())
    return path


def validate_eval_dict(data: Any, source: str) -> dict[str, Any]:
    """Check an eval JSON object against the contract; EvalError names the file and field."""
    if not isinstance(data, dict):
        raise EvalError(f"{source}: expected a JSON object, got {type(data).__name__}")
    for key, kind in REQUIRED_FIELDS.items():
        if key not in data:
            raise EvalError(f"{source}: missing field {key!r}")
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise EvalError(f"{source}: field {key!r} must be {names}, got {type(value).__name__}")
    if isinstance(data["score"], float) and not math.isfinite(data["score"]):
        raise EvalError(f"{source}: field 'score' is not a finite number")
    if data["n"] < 0:
        raise EvalError(f"{source}: field 'n' is negative")
    for index, record in enumerate(data["records"]):
        if not isinstance(record, dict):
            raise EvalError(f"{source}: records[{index}] is not a JSON object")
    return data


def read_eval_result(path: Path) -> EvalResult:
    """Read and validate an ``eval/<task>.json`` file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EvalError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    validate_eval_dict(data, str(path))
    extra = {k: v for k, v in data.items() if k not in REQUIRED_FIELDS}
    return EvalResult(
        task=data["task"], protocol=data["protocol"], score=float(data["score"]),
        metrics=data["metrics"], n=data["n"], records=data["records"], extra=extra,
    )
