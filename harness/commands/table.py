"""``harness table SPEC_OR_RUNS_DIR``: regenerate tables and plots from run directories."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from harness.errors import ConfigError


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def register(app: typer.Typer) -> None:
    """Add ``harness table``."""

    @app.command("table", help="Tables (md/csv/tex/html) and plots of a grid spec's cells or a folder of runs")
    def table(
        source: Path = typer.Argument(..., metavar="SPEC_OR_RUNS_DIR"),
        fmt: str = typer.Option("md", "--format", help="what to print: md | csv | tex | html"),
        out: Optional[Path] = typer.Option(None, "--out", help="write every format and the plots here "
                                           "(default for a spec: results/<grid>; a runs folder: print only)"),
        rows: list[str] = typer.Option([], "--rows", help="pivot rows: axes or config.<key> (comma-separated)"),
        cols: list[str] = typer.Option([], "--cols", help="pivot columns: axes or config.<key>"),
        metric: Optional[str] = typer.Option(None, "--metric", help="pivot value: mmlu, bbh, winrate, final_loss ..."),
        runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="with a spec: where its runs are"),
        param: list[str] = typer.Option([], "--param", help="with a spec: NAME=VALUE for a spec parameter"),
        plots: bool = typer.Option(True, "--plots/--no-plots", help="also write plots/<metric>.png/.svg"),
    ) -> None:
        from harness.grid.spec import TableSpec, expand, load_grid_spec, parse_params
        from harness.results.report import build_table, frame_for_cells, write_tables
        from harness.results.store import load_runs
        from harness.results.tables import FORMATS, render

        if fmt not in FORMATS:
            raise ConfigError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
        row_names, col_names = _split(rows), _split(cols)
        if source.is_dir():
            frame = load_runs(source)
            if frame.empty:
                raise ConfigError(f"{source}: no run directories found")
            table_spec, title, out_dir = TableSpec(), source.name, out
        elif source.is_file():
            loaded = load_grid_spec(source, parse_params(param))
            frame = frame_for_cells(expand(loaded), loaded.runs_dir(runs_dir))
            table_spec, title, out_dir = loaded.spec.table, loaded.name, loaded.out_dir(out)
        else:
            raise ConfigError(f"{source}: neither a grid spec nor a folder of runs")
        result = build_table(frame, table_spec, rows=row_names, cols=col_names, metric=metric)
        sys.stdout.write(render(result, fmt, title=title))
        if out_dir is not None:
            written = write_tables(frame, result, out_dir, title, plots=plots)
            print(f"wrote {len(written)} files to {out_dir}", file=sys.stderr)
