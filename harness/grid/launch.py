"""Running a grid: prepare every cell, run the unfinished ones, judge, write the tables.

``run_grid`` is idempotent: a cell whose training is done and whose evaluations exist is skipped
without starting a process (so a re-run of a finished grid takes seconds), an unfinished cell is
handed to ``harness train`` again (which resumes from its latest checkpoint), and a cached win
rate is not judged again. A cell that fails is reported with its log and the others go on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from harness.grid import rundir
from harness.grid.executors import CellTask, SlurmOptions, run_local, run_slurm
from harness.grid.spec import Cell, EvalSpec, LoadedSpec
from harness.grid.stages import CellOutcome, child_env, missing_evals, prepare_cell, run_winrate_group

Progress = Callable[[str], None]


@dataclass
class GridReport:
    """What a grid run did."""

    outcomes: list[CellOutcome] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # cells already finished
    compare: list[CellOutcome] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes + self.compare if not o.ok]


def cell_eval_spec(loaded: LoadedSpec, cell: Cell) -> EvalSpec:
    """The evaluations of a cell: the spec's ``eval`` section, else the run config's ``eval``."""
    if loaded.spec.eval.tasks:
        return loaded.spec.eval
    section = cell.config.get("eval") or {}
    return EvalSpec(tasks=list(section.get("tasks") or []), protocol=section.get("protocol"),
                    limit=section.get("limit"))


def with_baselines(selected: list[Cell], cells: list[Cell]) -> list[Cell]:
    """The selected cells plus the baselines they are judged against, in grid order."""
    wanted = {c.id for c in selected} | {c.baseline for c in selected if c.baseline}
    return [c for c in cells if c.id in wanted]


def cell_finished(run_dir: Path, eval_spec: EvalSpec) -> bool:
    """Training done and every evaluation present: nothing left but (maybe) the compare stage."""
    return rundir.train_done(run_dir) and not missing_evals(run_dir, eval_spec)


def _clear_stale_failures(run_dir: Path) -> None:
    """A finished cell's earlier failed train/eval attempt no longer describes it."""
    stages = rundir.read_grid_record(run_dir).get("stages", {})
    stale = {name: {**entry, "status": "done", "superseded": "results present"}
             for name, entry in stages.items() if name in ("train", "eval") and entry.get("status") == "failed"}
    if stale:
        rundir.update_grid_record(run_dir, stages=stale)


def prepare(loaded: LoadedSpec, cells: list[Cell], runs_dir: Path) -> None:
    """Write every cell's config and grid record into its run directory."""
    for cell in cells:
        prepare_cell(runs_dir / cell.id, cell.id, cell.labels, cell.config, loaded.name,
                     baseline=cell.baseline, is_baseline=cell.is_baseline)


def compare_stage(loaded: LoadedSpec, cells: list[Cell], runs_dir: Path, failed_ids: set[str],
                  progress: Progress = print) -> list[CellOutcome]:
    """Judge every cell against its baseline (both must have finished); cached verdicts are reused.

    The cells of one baseline are judged by one process, which loads the judge once.
    """
    compare = loaded.spec.compare
    if compare is None:
        return []
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        if not cell.baseline:
            continue
        if cell.id in failed_ids or cell.baseline in failed_ids:
            progress(f"compare {cell.label_text()}: skipped (the cell or its baseline failed)")
            continue
        groups.setdefault(cell.baseline, []).append(cell)
    outcomes = []
    for baseline, members in groups.items():
        by_id = {c.id: c for c in members}
        results = run_winrate_group([runs_dir / c.id for c in members], runs_dir / baseline, compare,
                                    env=child_env(runs_dir))
        for outcome in results:
            cell = by_id[outcome.cell_id]
            if outcome.ran:
                progress(f"compare {cell.label_text()} vs baseline {baseline}: judged")
            if not outcome.ok:
                progress(f"compare {cell.label_text()}: FAILED, see {outcome.log}")
        outcomes += results
    return outcomes


def run_grid(loaded: LoadedSpec, cells: list[Cell], *, runs_dir: Path, out_dir: Path | None,
             executor: Literal["local", "slurm"] = "local", slurm: SlurmOptions | None = None,
             progress: Progress = print) -> GridReport:
    """Run ``cells`` (already selected) and their baselines; then compare; then write tables."""
    report = GridReport()
    prepare(loaded, cells, runs_dir)
    tasks = []
    for cell in cells:
        eval_spec = cell_eval_spec(loaded, cell)
        if cell_finished(runs_dir / cell.id, eval_spec):
            _clear_stale_failures(runs_dir / cell.id)
            report.skipped.append(cell.id)
            continue
        tasks.append(CellTask(cell.id, runs_dir / cell.id, eval_spec, cell.label_text()))
    progress(f"grid {loaded.name}: {len(cells)} cells, {len(report.skipped)} finished, {len(tasks)} to run "
             f"({executor})")
    if executor == "slurm":
        report.outcomes = run_slurm(tasks, loaded.spec.slurm, slurm or SlurmOptions(), runs_dir, progress)
    else:
        report.outcomes = run_local(tasks, progress)
    failed_ids = {o.cell_id for o in report.outcomes if not o.ok}
    report.compare = compare_stage(loaded, cells, runs_dir, failed_ids, progress)
    if out_dir is not None:
        from harness.results.report import write_report

        report.written = write_report(loaded, runs_dir, out_dir, cells=cells)
    return report
