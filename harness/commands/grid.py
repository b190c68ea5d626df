"""``harness grid [status] SPEC``: expand, run, or report on an experiment grid.

One command whose first argument may be the word ``status`` (``harness grid status SPEC``);
otherwise it is the spec (``harness grid SPEC [--dry-run] [--json] [--only AXIS=LABEL]``). A
spec file that is literally named ``status`` is reached as ``./status``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from harness.errors import ConfigError


def _expand(spec_path: str, only: list[str], params: list[str]):
    from harness.grid.spec import expand, load_grid_spec, parse_only, parse_params, select_cells

    loaded = load_grid_spec(spec_path, parse_params(params))
    cells = expand(loaded)
    selected = select_cells(cells, parse_only(only, loaded)) if only else cells
    if only and not selected:
        raise ConfigError(f"--only {' '.join(only)}: no cell of {loaded.path} matches")
    return loaded, cells, selected


def _print_table(rows: list[dict]) -> None:
    import pandas as pd

    from harness.results.tables import to_markdown

    sys.stdout.write(to_markdown(pd.DataFrame(rows)))


def _dry_run(loaded, cells, selected, as_json: bool, plan: bool) -> None:
    from harness.grid.preview import cell_instances, cell_steps, plan_memory

    if as_json:
        for cell in selected:
            print(json.dumps({"id": cell.id, "labels": cell.labels, "config": cell.config,
                              "baseline": cell.baseline, "is_baseline": cell.is_baseline,
                              "notes": cell.notes}, sort_keys=False))
        return
    memory = plan_memory(selected, loaded.spec.plan_model) if plan else {c.id: "-" for c in selected}
    labels_of = {c.id: c.label_text() for c in cells}
    rows = []
    for cell in selected:
        instances = cell_instances(cell.config)
        rows.append({**cell.labels, "id": cell.id,
                     "instances": f"{instances:,}" if instances is not None else "-",
                     "steps": cell_steps(cell.config), "mem/device": memory[cell.id],
                     "baseline": "itself" if cell.is_baseline else labels_of.get(cell.baseline, ""),
                     "note": "; ".join(cell.notes)})
    print(f"grid {loaded.name}: {len(selected)} of {len(cells)} cells ({loaded.path})")
    _print_table(rows)


def _status(spec_path: str, only: list[str], params: list[str], runs_dir: Optional[Path], as_json: bool) -> None:
    from harness.grid.status import grid_status

    loaded, _, selected = _expand(spec_path, only, params)
    rows = grid_status(loaded, selected, loaded.runs_dir(runs_dir))
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    print(f"grid {loaded.name}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    _print_table(rows)


def register(app: typer.Typer) -> None:
    """Add ``harness grid``."""

    @app.command("grid", help="Run an experiment grid: harness grid SPEC [--dry-run] | harness grid status SPEC")
    def grid(
        arguments: list[str] = typer.Argument(..., metavar="[status] SPEC",
                                              help="grid spec YAML; 'status SPEC' shows the cells' states"),
        dry_run: bool = typer.Option(False, "--dry-run", help="expand and validate; print the cells"),
        as_json: bool = typer.Option(False, "--json", help="one JSON object per cell"),
        only: list[str] = typer.Option([], "--only", help="AXIS=LABEL (repeatable): run only matching cells"),
        param: list[str] = typer.Option([], "--param", help="NAME=VALUE for a spec parameter (repeatable)"),
        executor: str = typer.Option("local", "--executor", help="local | slurm"),
        runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="run directories (default: spec's runs_dir)"),
        out: Optional[Path] = typer.Option(None, "--out", help="tables and plots (default: results/<grid>)"),
        plan: bool = typer.Option(True, "--plan/--no-plan", help="per-device memory from harness plan in --dry-run"),
        partition: Optional[str] = typer.Option(None, "--partition", help="SLURM partition"),
        time_min: Optional[int] = typer.Option(None, "--time-min", help="SLURM time limit per cell, minutes"),
        nodes: Optional[int] = typer.Option(None, "--nodes", help="SLURM nodes per cell"),
        gpus_per_node: Optional[int] = typer.Option(None, "--gpus-per-node", help="SLURM GPUs per node"),
        cpus_per_task: Optional[int] = typer.Option(None, "--cpus-per-task", help="SLURM CPUs per task"),
        slurm_folder: Optional[Path] = typer.Option(None, "--slurm-folder", help="submitit logs (default RUNS/.slurm)"),
    ) -> None:
        if arguments[0] == "status":
            if len(arguments) != 2:
                raise ConfigError("usage: harness grid status SPEC")
            _status(arguments[1], only, param, runs_dir, as_json)
            return
        if len(arguments) != 1:
            raise ConfigError(f"usage: harness grid SPEC (got {' '.join(arguments)})")
        if executor not in ("local", "slurm"):
            raise ConfigError(f"--executor {executor!r}: choose local or slurm")
        loaded, cells, selected = _expand(arguments[0], only, param)
        if dry_run:
            _dry_run(loaded, cells, selected, as_json, plan)
            return
        from harness.grid.executors import SlurmOptions
        from harness.grid.launch import run_grid, with_baselines

        to_run = with_baselines(selected, cells)
        slurm = SlurmOptions(partition=partition, time_min=time_min, nodes=nodes, gpus_per_node=gpus_per_node,
                             cpus_per_task=cpus_per_task, folder=slurm_folder)
        report = run_grid(loaded, to_run, runs_dir=loaded.runs_dir(runs_dir), out_dir=loaded.out_dir(out),
                          executor=executor, slurm=slurm, progress=lambda m: print(m, flush=True))
        table = next((p for p in report.written if p.name == "table.md"), None)
        if table is not None:
            print(table.read_text(encoding="utf-8"))
            print(f"tables and plots written to {table.parent}")
        if report.failed:
            print(f"{len(report.failed)} failed:", file=sys.stderr)
            for outcome in report.failed:
                print(f"  cell {outcome.cell_id}: {outcome.failed} failed; log {outcome.log}", file=sys.stderr)
            raise SystemExit(1)
