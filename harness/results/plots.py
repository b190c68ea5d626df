"""Grouped bar charts of a result table, ours beside the published figures (PNG and SVG).

One figure per metric: a group per table row (model x mixture), a bar for our number and one for
the survey's where it has one. A cell with no number (missing, failed, the baseline ``/*``) gets
no bar but its word written where the bar would be, so an absent result never looks like zero.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from harness.results.tables import BASELINE_MARK, split_model_name

SURVEY_SUFFIX = " (published)"
# no creation dates or library versions in the files, so regenerating unchanged results is a no-op
_METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}


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


def _constant_model(table: pd.DataFrame) -> str | None:
    """The one model of a table whose ``Model`` column never changes (named in the title instead)."""
    if "Model" not in table.columns or len(table) < 2:
        return None
    values = {str(v) for v in table["Model"]}
    return values.pop() if len(values) == 1 else None


def _absence_word(text: str) -> str:
    return "baseline" if text == BASELINE_MARK else text


def bar_charts(table: pd.DataFrame, out_dir: Path, title: str = "") -> list[Path]:
    """Write ``<metric>.png`` and ``<metric>.svg`` for every metric of ``table``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "harness"  # stable element ids in the SVGs
    matplotlib.rcParams["svg.fonttype"] = "none"  # text as text: small, searchable SVGs

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = metric_columns(table)
    model = _constant_model(table)
    names = _row_names(table.drop(columns="Model") if model else table, metrics)
    ours_model, reference = split_model_name(model) if model else (None, None)
    ours_label = f"ours ({ours_model})" if ours_model else "ours"
    written = []
    for metric in metrics:
        ours = [_number(v) for v in table[metric]]
        words = ["" if n is not None else _absence_word(str(v)) for n, v in zip(ours, table[metric])]
        published_col = f"{metric}{SURVEY_SUFFIX}"
        published = [_number(v) for v in table[published_col]] if published_col in table.columns else None
        width = 0.4 if published else 0.7
        figure, axis = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2), 4.0))
        positions = list(range(len(names)))
        shift = -width / 2 if published else 0.0
        axis.bar([p + shift for p, v in zip(positions, ours) if v is not None], [v for v in ours if v is not None],
                 width, label=ours_label, color="#1f77b4")
        if published:
            label = f"survey {reference} (published)" if reference else "survey (published)"
            axis.bar([p + width / 2 for p, v in zip(positions, published) if v is not None],
                     [v for v in published if v is not None], width, label=label, color="#bbbbbb")
        for position, word in zip(positions, words):
            if word:
                axis.text(position + shift, 0, word, rotation=90, ha="center", va="bottom", fontsize=8, color="#b22222")
        axis.set_xticks(positions)
        axis.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        axis.set_ylabel(metric.split(" [")[0])  # the protocol stays in the title
        heading = f"{title}: {metric}" if title else metric
        axis.set_title(heading, fontsize=10)
        # headroom above the tallest bar so the legend never covers one
        top = max([v for v in ours + (published or []) if v is not None] or [1.0])
        axis.set_ylim(0, top * 1.25 if top > 0 else 1.0)
        axis.legend(fontsize=8, loc="upper left", ncol=2, frameon=False)
        for suffix in ("png", "svg"):
            path = out_dir / f"{_slug(metric)}.{suffix}"
            figure.savefig(path, dpi=100, bbox_inches="tight", metadata=_METADATA[suffix])
            written.append(path)
        plt.close(figure)
    return written
