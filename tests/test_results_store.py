"""The results store on synthetic run directories written to the run-directory contract."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.results.store import load_runs, runs_frame


def make_run(root: Path, run_id: str, labels: dict, *, status: str = "done", scores: dict | None = None,
             protocol: str = "survey", baseline: str | None = None, is_baseline: bool = False,
             loss: float = 1.5, steps: int = 10, data: dict | None = None, failed_stage: str | None = None,
             config: dict | None = None) -> Path:
    """A run directory with config.yaml, run.json, metrics.jsonl, eval/<task>.json and grid.json."""
    run_dir = root / run_id
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config or {"train": {"lr": 2e-5, "steps": steps}}))
    run = {"status": status, "timings": {"train_seconds": 12.5}}
    if data:
        run["data"] = data
    (run_dir / "run.json").write_text(json.dumps(run))
    lines = [{"step": s, "loss": loss + (steps - s) * 0.1, "lr": 1e-3, "tokens_per_s": 100.0}
             for s in range(1, steps + 1)]
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    for task, score in (scores or {}).items():
        result = {"task": task, "protocol": protocol, "score": score, "metrics": {}, "n": 20, "records": []}
        if task == "winrate":
            result.update(baseline=baseline, judge={"name": "local"})
        (run_dir / "eval" / f"{task}.json").write_text(json.dumps(result))
    stages = {}
    if failed_stage:
        stages[failed_stage] = {"status": "failed", "log": str(run_dir / "logs" / f"{failed_stage}.log"),
                                "returncode": 1}
    (run_dir / "grid.json").write_text(json.dumps({"id": run_id, "grid": "demo", "labels": labels,
                                                   "baseline": baseline, "is_baseline": is_baseline,
                                                   "stages": stages}))
    return run_dir


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "base7", {"model": "7b", "data": "self_instruct"}, is_baseline=True,
             scores={"mmlu": 36.0, "bbh": 30.0}, data={"instances": 82439, "lexical_diversity": 26.5})
    make_run(root, "flan7", {"model": "7b", "data": "flan"}, baseline="base7",
             scores={"mmlu": 40.0, "bbh": 31.5, "winrate": 25.0}, data={"instances": 80000})
    make_run(root, "share7", {"model": "7b", "data": "sharegpt"}, status="failed", failed_stage="train")
    make_run(root, "mix7", {"model": "7b", "data": "sharegpt+self_instruct"}, baseline="base7",
             status="running", scores={})
    make_run(root, "base13", {"model": "13b", "data": "self_instruct"}, is_baseline=True,
             scores={"mmlu": 37.0}, protocol="standard")
    return root


def test_store_is_tidy(runs):
    frame = load_runs(runs)
    assert set(frame["run_id"]) == {"base7", "flan7", "share7", "mix7", "base13"}
    flan = frame[frame["run_id"] == "flan7"].set_index("metric")
    assert flan.loc["mmlu", "score"] == 40.0 and flan.loc["winrate", "baseline"] == "base7"
    assert flan.loc["mmlu", "protocol"] == "survey" and flan.loc["mmlu", "label.data"] == "flan"
    assert flan.loc["mmlu", "instances"] == 80000 and flan.loc["mmlu", "final_loss"] == pytest.approx(1.5)
    assert flan.loc["mmlu", "config.train.lr"] == 2e-5
    failed = frame[frame["run_id"] == "share7"].iloc[0]
    assert failed["status"] == "failed" and failed["failed_stage"] == "train" and failed["log"].endswith("train.log")
    assert pd.isna(failed["metric"]) and pd.isna(failed["score"])
    assert len(runs_frame(frame)) == 5


def test_store_ignores_half_written_files(runs):
    (runs / "flan7" / "eval" / "bbh.json").write_text('{"task": "bbh", "sco')  # a write in progress
    (runs / "flan7" / "metrics.jsonl").open("a").write('{"step": 11, "lo')
    frame = load_runs(runs)
    flan = frame[frame["run_id"] == "flan7"]
    assert set(flan["metric"]) == {"mmlu", "winrate"}
    assert flan["steps"].iloc[0] == 10


