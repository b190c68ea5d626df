"""Grouped bar charts of a result table, ours beside the published figures (PNG and SVG).

One figure per metric: a group per table row (model x mixture), a bar for our number and one for
the survey's where it has one. A cell with no number (missing, failed, the baseline ``/*``) gets
no bar but its word written where the bar would be, so an absent result never looks like zero.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

SURVEY_SUFFIX = " (published)"


def _number(text: object) -> float | None:
    try:
        value = float(str(text))
    except ValueError:
        return None
    return None if pd.isna(value) else value


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower().split(" [")[0]).strip("_")


def metric_columns(table: pd.DataFrame) -> list[str]:
    """Columns of ours that have a published twin ``<column> (survey)``, or every numeric column."""
    paired = [c for c in table.columns if f"{c}{SURVEY_SUFFIX}" in table.columns and not c.startswith("#")]
    if paired:
        return paired
    skip = {"Run", "Status", "run_id", "id"}
    return [c for c in table.columns if c not in skip and any(_number(v) is not None for v in table[c])]


def _row_names(table: pd.DataFrame, metric_cols: list[str]) -> list[str]:
    label_cols = [c for c in table.columns if c not in metric_cols and not c.endswith(SURVEY_SUFFIX)
                  and not c.startswith("Δ") and c not in {"Run", "Status", "#Instances"}]
    return [" ".join(str(row[c]) for c in label_cols if str(row[c])) for _, row in table.iterrows()]


def bar_charts(table: pd.DataFrame, out_dir: Path, title: str = "") -> list[Path]:
    """Write ``<metric>.png`` and ``<metric>.svg`` for every metric of ``table``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = metric_columns(table)
    names = _row_names(table, metrics)
    written = []
    for metric in metrics:
        ours = [_number(v) for v in table[metric]]
        words = ["" if n is not None else str(v) for n, v in zip(ours, table[metric])]
        published_col = f"{metric}{SURVEY_SUFFIX}"
        published = [_number(v) for v in table[published_col]] if published_col in table.columns else None
        width = 0.4 if published else 0.7
        figure, axis = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2), 4.0))
        positions = list(range(len(names)))
        shift = -width / 2 if published else 0.0
        axis.bar([p + shift for p, v in zip(positions, ours) if v is not None], [v for v in ours if v is not None],
                 width, label="ours", color="#1f77b4")
        if published:
            axis.bar([p + width / 2 for p, v in zip(positions, published) if v is not None],
                     [v for v in published if v is not None], width, label="survey (published)", color="#bbbbbb")
        for position, word in zip(positions, words):
            if word:
                axis.text(position + shift, 0, word, rotation=90, ha="center", va="bottom", fontsize=8, color="#b22222")
        axis.set_xticks(positions)
        axis.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        axis.set_ylabel(metric)
        axis.set_title(f"{title}: {metric}" if title else metric)
        axis.legend(fontsize=8)
        figure.tight_layout()
        for suffix in ("png", "svg"):
            path = out_dir / f"{_slug(metric)}.{suffix}"
            figure.savefig(path, dpi=120)
            written.append(path)
        plt.close(figure)
    return written
