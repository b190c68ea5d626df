"""Regenerate a grid's tables and plots from its run directories (``harness table``, end of ``harness grid``).

Writes ``table.{md,csv,tex,html}`` (the survey layout when the grid's mixture labels are the
survey's, else the generic pivot), ``runs.csv`` (the tidy frame: every run x metric) and
``plots/<metric>.{png,svg}`` into the output folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harness.atomic import write_text_atomic
from harness.grid.spec import Cell, LoadedSpec, TableSpec
from harness.results.plots import bar_charts
from harness.results.store import load_runs
from harness.results.tables import FORMATS, load_reference, pivot_table, render, survey_table


def frame_for_cells(cells: Sequence[Cell], runs_dir: Path) -> pd.DataFrame:
    """The tidy frame of a grid's cells; cells never started appear as 'missing'."""
    placeholders = [{"run_id": c.id, "is_baseline": c.is_baseline, "baseline_id": c.baseline,
                     **{f"label.{k}": v for k, v in c.labels.items()}} for c in cells]
    frame = load_runs([runs_dir / c.id for c in cells], placeholders=placeholders)
    order = {c.id: i for i, c in enumerate(cells)}
    frame["_order"] = frame["run_id"].map(order)
    return frame.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


def _uses_survey_keys(frame: pd.DataFrame, table_spec: TableSpec) -> bool:
    column = f"label.{table_spec.mixture_axis}"
    if column not in frame.columns:
        return False
    keys = set(load_reference()["mixture_key"])
    return any(str(v) in keys for v in frame[column].dropna())


def build_table(frame: pd.DataFrame, table_spec: TableSpec, *, rows: Sequence[str] = (),
                cols: Sequence[str] = (), metric: str | None = None) -> pd.DataFrame:
    """The table a grid asks for; explicit ``rows`` / ``cols`` / ``metric`` select the pivot."""
    if rows or cols or metric or table_spec.layout == "pivot" or not _uses_survey_keys(frame, table_spec):
        return pivot_table(frame, rows or table_spec.rows, cols or table_spec.cols, metric or table_spec.metric)
    return survey_table(frame, mixture_axis=table_spec.mixture_axis, model_axis=table_spec.model_axis,
                        model=table_spec.model)


def _shown_path(value):
    """A path under the working directory as a relative one (so a committed runs.csv names no
    machine's folders); anything else unchanged."""
    if not isinstance(value, str) or not value:
        return value
    try:
        return str(Path(value).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return value


def write_tables(frame: pd.DataFrame, table: pd.DataFrame, out_dir: Path, title: str,
                 formats: Sequence[str] = FORMATS, plots: bool = True) -> list[Path]:
    """Write the table in every format, the tidy frame and the plots; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = out_dir / f"table.{fmt}"
        write_text_atomic(path, render(table, fmt, title=title))
        written.append(path)
    tidy = frame[[c for c in frame.columns if not c.startswith("config.")]].copy()
    for column in ("run_dir", "log"):
        if column in tidy.columns:
            tidy[column] = tidy[column].map(_shown_path)
    path = out_dir / "runs.csv"
    write_text_atomic(path, tidy.to_csv(index=False))
    written.append(path)
    if plots and len(table):
        written += bar_charts(table, out_dir / "plots", title=title)
    return written


def write_report(loaded: LoadedSpec, runs_dir: Path, out_dir: Path, *, cells: Sequence[Cell],
                 formats: Sequence[str] = FORMATS, rows: Sequence[str] = (), cols: Sequence[str] = (),
                 metric: str | None = None, plots: bool = True) -> list[Path]:
    """Tables and plots of a grid spec's cells."""
    frame = frame_for_cells(cells, runs_dir)
    table = build_table(frame, loaded.spec.table, rows=rows, cols=cols, metric=metric)
    return write_tables(frame, table, out_dir, loaded.name, formats, plots)
