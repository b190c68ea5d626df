"""A cell's stages, each a ``harness`` subprocess with its own log file.

``train`` runs ``harness train runs/<id>/cell.yaml --run-dir runs/<id>`` (which resumes from the
latest checkpoint by itself), ``eval`` runs ``harness eval runs/<id> --tasks ...`` for the tasks
whose result is missing, and ``winrate`` runs ``harness eval winrate`` of the cells against
their baseline cell (one process per baseline, so the judge is loaded once). Subprocesses
isolate crashes: a failing cell leaves a log and a ``failed`` stage in grid.json, and the grid
goes on with the others. A finished stage is never run again.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.atomic import write_json_atomic, write_text_atomic
from harness.grid import rundir
from harness.grid.spec import CompareSpec, EvalSpec

# The command the stages run; HARNESS_GRID_CLI overrides it (e.g. a wrapper that loads modules
# on a cluster node, or a container entry point), split like a shell would.
CLI_ENV = "HARNESS_GRID_CLI"


def harness_command() -> list[str]:
    """The ``harness`` command prefix for stage subprocesses."""
    override = os.environ.get(CLI_ENV)
    return shlex.split(override) if override else [sys.executable, "-m", "harness.cli"]


@dataclass
class CellOutcome:
    """What running a cell's stages did (``failed`` names the stage; ``log`` its log file)."""

    cell_id: str
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: str | None = None
    log: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed is None


def _run_logged(command: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Run ``command``, appending its stdout and stderr to ``log``; returns the exit status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"\n==> {time.strftime('%Y-%m-%d %H:%M:%S')} $ {' '.join(command)}\n")
        handle.flush()
        process = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False)
    return process.returncode


def _tail(log: Path, lines: int = 5) -> str:
    try:
        text = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def missing_evals(run_dir: Path, eval_spec: EvalSpec) -> list[str]:
    """Tasks of ``eval_spec`` without a result (or with a result of another protocol)."""
    missing = []
    for task in eval_spec.tasks:
        result = rundir.eval_result(run_dir, task)
        # generation-only results (AlpacaFarm outputs: protocol "generate") serve every protocol
        stale = (eval_spec.protocol and result is not None and result.get("protocol") in SCORING_PROTOCOLS
                 and result.get("protocol") != eval_spec.protocol)
        if result is None or stale:
            missing.append(task)
    return missing


def prepare_cell(run_dir: Path, cell_id: str, labels: dict[str, str], config: dict[str, Any], grid: str,
                 baseline: str | None = None, is_baseline: bool = False) -> None:
    """Write the cell's config and grid record (idempotent; never touches train's files)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / rundir.CELL_CONFIG
    text = yaml.safe_dump(config, sort_keys=False)
    if not config_path.is_file() or config_path.read_text(encoding="utf-8") != text:
        write_text_atomic(config_path, text)
    record = rundir.read_grid_record(run_dir)
    wanted = {"id": cell_id, "grid": grid, "labels": labels, "baseline": baseline, "is_baseline": is_baseline}
    if any(record.get(key) != value for key, value in wanted.items()):
        rundir.update_grid_record(run_dir, **wanted)


DATA_STATS = "data_stats.json"
SCORING_PROTOCOLS = ("survey", "standard")


def write_data_stats(run_dir: Path) -> None:
    """``data_stats.json``: the realised mixture's instance count and lexical diversity (MTLD).

    The survey's #Instances and lexical-diversity columns describe the training mixture, so they
    are measured on exactly the examples the cell's mixture config yields (``build_mixture``).
    """
    from harness.config import run_config_from_dict
    from harness.data.diversity import lexical_diversity
    from harness.data.mixture import build_mixture

    config = yaml.safe_load((run_dir / rundir.CELL_CONFIG).read_text(encoding="utf-8"))
    mixture = build_mixture(run_config_from_dict(config, str(run_dir / rundir.CELL_CONFIG)).mixture)
    diversity = lexical_diversity(mixture.examples)
    write_json_atomic(run_dir / DATA_STATS, {
        "instances": len(mixture.examples), "counts": mixture.counts,
        "lexical_diversity": diversity.mtld, "lexical_diversity_measure": diversity.to_dict()["measure"],
        "words": diversity.words,
    })


def _data_stats_stage(run_dir: Path, outcome: CellOutcome) -> None:
    """Measure the mixture once (after training, so a cell that cannot read its data fails in train)."""
    if rundir.read_json(run_dir / DATA_STATS) is not None:
        return
    from harness.errors import HarnessError

    log = run_dir / "logs" / "data_stats.log"
    started = time.time()
    try:
        write_data_stats(run_dir)
    except (HarnessError, OSError, ValueError) as exc:  # logged and recorded; the cell goes on
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"data stats failed: {exc}\n", encoding="utf-8")
        rundir.update_grid_record(run_dir, stages=rundir.stage_finished("data_stats", log, 1, started))
        return
    outcome.ran.append("data_stats")


def run_cell(run_dir: Path, cell_id: str, eval_spec: EvalSpec, *, rank: int = 0,
             env: dict[str, str] | None = None) -> CellOutcome:
    """Train (unless done) then evaluate (the missing tasks) one prepared cell.

    In a multi-process job every rank trains; only rank 0 evaluates and writes grid.json.
    """
    run_dir = Path(run_dir)
    outcome = CellOutcome(cell_id)
    logs = run_dir / "logs"
    if rundir.train_done(run_dir):
        outcome.skipped.append("train")
    else:
        log = logs / ("train.log" if rank == 0 else f"train.rank{rank}.log")
        command = [*harness_command(), "train", str(run_dir / rundir.CELL_CONFIG), "--run-dir", str(run_dir)]
        if rank == 0:
            rundir.update_grid_record(run_dir, stages=rundir.stage_started("train", log))
        started = time.time()
        code = _run_logged(command, log, env)
        if code == 0 and not rundir.train_done(run_dir) and rank == 0:
            code = 1
            with open(log, "a", encoding="utf-8") as handle:
                handle.write("harness grid: train exited 0 but run.json does not say status=done\n")
        if rank == 0:
            rundir.update_grid_record(run_dir, stages=rundir.stage_finished("train", log, code, started))
        if code != 0:
            outcome.failed, outcome.log, outcome.message = "train", str(log), _tail(log)
            return outcome
        outcome.ran.append("train")
    if rank != 0:
        return outcome
    _data_stats_stage(run_dir, outcome)
    tasks = missing_evals(run_dir, eval_spec)
    if not tasks:
        if eval_spec.tasks:
            outcome.skipped.append("eval")
        return outcome
    log = logs / "eval.log"
    command = [*harness_command(), "eval", str(run_dir), "--tasks", ",".join(tasks)]
    if eval_spec.protocol:
        command += ["--protocol", eval_spec.protocol]
    if eval_spec.limit is not None:
        command += ["--limit", str(eval_spec.limit)]
    command += list(eval_spec.args)
    rundir.update_grid_record(run_dir, stages=rundir.stage_started("eval", log))
    started = time.time()
    code = _run_logged(command, log, env)
    still_missing = missing_evals(run_dir, eval_spec)
    if code == 0 and still_missing:
        code = 1
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"harness grid: eval exited 0 but wrote no result for {', '.join(still_missing)}\n")
    rundir.update_grid_record(run_dir, stages=rundir.stage_finished("eval", log, code, started, tasks=tasks))
    if code != 0:
        outcome.failed, outcome.log, outcome.message = "eval", str(log), _tail(log)
        return outcome
    outcome.ran.append("eval")
    return outcome


def winrate_current(run_dir: Path, baseline_id: str, compare: CompareSpec) -> bool:
    """Whether eval/winrate.json already judges this cell against ``baseline_id`` with this judge."""
    result = rundir.eval_result(run_dir, "winrate")
    if not result:
        return False
    baseline = str(result.get("baseline", ""))
    same_baseline = baseline == baseline_id or Path(baseline).name == baseline_id
    judge = result.get("judge")
    judge_name = judge.get("name") if isinstance(judge, dict) else judge
    return same_baseline and (judge_name is None or str(judge_name) == compare.judge or compare.judge in str(judge_name))


def winrate_command(run_dirs: list[Path], baseline_dir: Path, compare: CompareSpec) -> list[str]:
    """The ``harness eval winrate`` command judging cells against their (common) baseline cell.

    Several runs go to one process, so a local judge model is loaded (and compiled) once for all.
    """
    return [*harness_command(), "eval", "winrate", *map(str, run_dirs), "--baseline", str(baseline_dir),
            "--judge", compare.judge, *compare.args]


def run_winrate_group(run_dirs: list[Path], baseline_dir: Path, compare: CompareSpec,
                      env: dict[str, str] | None = None) -> list[CellOutcome]:
    """The compare stage of the cells judged against one baseline, in one ``harness eval winrate``.

    Cells whose verdict against this baseline is cached are skipped; the others share one
    process and one log (``<baseline>/logs/compare.log``). A cell without its winrate.json
    afterwards failed, whatever the exit status; the others keep their results.
    """
    outcomes = {run_dir.name: CellOutcome(run_dir.name) for run_dir in run_dirs}
    todo = []
    for run_dir in run_dirs:
        if winrate_current(run_dir, baseline_dir.name, compare):
            outcomes[run_dir.name].skipped.append("winrate")
        else:
            todo.append(run_dir)
    if not todo:
        return list(outcomes.values())
    log = baseline_dir / "logs" / "compare.log"
    for run_dir in todo:
        rundir.update_grid_record(run_dir, stages=rundir.stage_started("winrate", log))
    started = time.time()
    code = _run_logged(winrate_command(todo, baseline_dir, compare), log, env)
    for run_dir in todo:
        judged = winrate_current(run_dir, baseline_dir.name, compare)
        cell_code = 0 if judged else (code or 1)
        rundir.update_grid_record(run_dir, stages=rundir.stage_finished(
            "winrate", log, cell_code, started, baseline=baseline_dir.name, judged_with=len(todo)))
        outcome = outcomes[run_dir.name]
        if judged:
            outcome.ran.append("winrate")
        else:
            outcome.failed, outcome.log, outcome.message = "winrate", str(log), _tail(log)
    return list(outcomes.values())


COMPILATION_CACHE = ".jax_cache"
COMPILATION_CACHE_MAX_BYTES = 4 * 1024**3


def child_env(runs_dir: Path | None = None) -> dict[str, str]:
    """The environment for stage subprocesses: unbuffered output (live logs), and a shared
    jax compilation cache under ``runs_dir`` (unless one is configured already).

    Every cell of a grid compiles the same train step, eval and judge programs; with the
    persistent cache only the first process compiles them (the quickstart's train stage drops
    from ~23 to ~8 CPU seconds per cell). Entries are keyed by program and jax/XLA version, so
    a stale one is never used; the cache is capped at 4 GiB (``JAX_COMPILATION_CACHE_MAX_SIZE``
    overrides it).
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if runs_dir is not None and not env.get("JAX_COMPILATION_CACHE_DIR"):
        env["JAX_COMPILATION_CACHE_DIR"] = str(Path(runs_dir).resolve() / COMPILATION_CACHE)
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
        # bounded: jax evicts the least recently used entries past this size
        env.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(COMPILATION_CACHE_MAX_BYTES))
    return env
