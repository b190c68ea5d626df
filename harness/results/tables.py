"""Result tables: the survey's Table 10 layout beside the published numbers, and a generic pivot.

Values come from the tidy frame of ``harness.results.store``. A value that does not exist is
shown as what it is (``missing``, ``failed``, ``running``, ``not run``, ``/*`` for the win-rate
baseline itself), never as a zero. Tables render as Markdown, CSV, LaTeX and HTML.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import ConfigError
from harness.results.store import label_columns, runs_frame

REFERENCE_CSV = Path(__file__).resolve().parents[2] / "results" / "reference" / "survey_table10.csv"
FORMATS = ("md", "csv", "tex", "html")
BASELINE_MARK = "/*"
# the Model column of cells set beside one fixed published model: "smollm2-135m (vs 7B)"
_MODEL_VS = re.compile(r"(.+) \(vs (.+)\)")
# Survey column -> (metric name in eval/<task>.json or train figure, header).
SURVEY_METRICS = (("lexical_diversity", "Lexical diversity"), ("winrate", "AlpacaFarm win %"),
                  ("mmlu", "MMLU"), ("bbh", "BBH"))
PUBLISHED_COLUMN = {"lexical_diversity": "lexical_diversity", "winrate": "alpacafarm_win",
                    "mmlu": "mmlu", "bbh": "bbh"}
_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "Δ": r"$\Delta$"}
TRAIN_FIGURES = ("steps", "final_loss", "instances", "lexical_diversity", "train_seconds", "tokens_per_s")


def load_reference(path: str | Path | None = None) -> pd.DataFrame:
    """The published survey numbers (``results/reference/survey_table10.csv``)."""
    path = Path(path) if path else REFERENCE_CSV
    if not path.is_file():
        raise ConfigError(f"reference table not found: {path}")
    frame = pd.read_csv(path, dtype={"model": str, "mixture_key": str})
    frame["is_baseline"] = frame["is_baseline"].astype(str).str.lower() == "true"
    return frame


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or pd.isna(value):
        return ""
    if digits == 0:
        return f"{int(round(value))}"
    return f"{value:.{digits}f}"


def _absence(run: pd.Series, metric: str) -> str:
    """What to print where a run has no value for ``metric``."""
    status = run.get("status")
    if status == "done":
        failed = run.get("failed_stage")
        return "failed" if isinstance(failed, str) and failed else "not run"
    return str(status) if isinstance(status, str) and status else "missing"


def metric_values(frame: pd.DataFrame) -> dict[tuple[str, str], tuple[float, Any]]:
    """(run_id, metric) -> (score, protocol) for every metric row of the tidy frame."""
    values = {}
    for row in frame[frame["metric"].notna()].itertuples(index=False):
        values[(row.run_id, row.metric)] = (row.score, row.protocol)
    return values


def _run_value(run: pd.Series, metric: str, values: dict) -> tuple[float | None, str]:
    """(number or None, display text) of one run's metric or train figure."""
    if metric in TRAIN_FIGURES:
        number = run.get(metric)
        if number is not None and not pd.isna(number):
            return float(number), ""
        return None, "n/a" if run.get("status") == "done" else _absence(run, metric)
    if metric == "winrate" and bool(run.get("is_baseline")):
        return None, BASELINE_MARK
    found = values.get((run["run_id"], metric))
    if found is None:
        return None, _absence(run, metric)
    return float(found[0]), ""


def _protocols(frame: pd.DataFrame, metric: str) -> str:
    seen = sorted({str(p) for p in frame.loc[frame["metric"] == metric, "protocol"].dropna()})
    return f" [{', '.join(seen)}]" if seen else ""


def _model_name(run: pd.Series, model_key: str, *, from_axis: bool) -> str:
    """The Model column: the axis label (7B, 13B) or, when every cell is set beside one fixed
    published model, the cell's own model and that reference ("smollm2-135m (vs 7B)")."""
    ours = run.get("config.model.init")
    if from_axis or not isinstance(ours, str) or not ours or ours.lower() == model_key:
        return model_key.upper()
    if ":" in ours:  # hf:/models/llama-7b, gguf:/x/model.gguf: the folder or file name
        ours = Path(ours.split(":", 1)[1].rstrip("/")).name.removesuffix(".gguf") or ours
    return f"{ours} (vs {model_key.upper()})" if model_key else ours


def split_model_name(name: str) -> tuple[str | None, str]:
    """(our model, published model) of a Model column value: ``"smollm2-135m (vs 7B)"`` gives
    ``("smollm2-135m", "7B")``; a plain ``"7B"`` (ours is the published model) gives ``(None, "7B")``."""
    match = _MODEL_VS.fullmatch(name)
    return (match.group(1), match.group(2)) if match else (None, name)


def survey_table(frame: pd.DataFrame, *, mixture_axis: str = "data", model_axis: str | None = None,
                 model: str | None = None, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """The survey's layout: one row per cell (model x mixture), ours beside the published figure.

    ``model_axis`` names the axis whose labels are the reference's model keys (7b, 13b); without
    one, ``model`` says which published rows to set beside every cell, and the Model column names
    the cell's own model (``model.init``) beside it.
    """
    reference = load_reference() if reference is None else reference
    runs = runs_frame(frame)
    values = metric_values(frame)
    if model_axis is None and model is None and "label.model" in runs.columns:
        model_axis = "model"  # the conventional axis name
    mixture_col, model_col = f"label.{mixture_axis}", f"label.{model_axis}" if model_axis else None
    if mixture_col not in runs.columns:
        raise ConfigError(f"survey table: no cell has a label for the mixture axis {mixture_axis!r} "
                          f"(labels: {', '.join(c[6:] for c in label_columns(runs)) or 'none'})")
    order = {(r.model, r.mixture_key): i for i, r in enumerate(reference.itertuples())}
    published = {(r.model, r.mixture_key): r for r in reference.itertuples()}
    records = []
    for position, run in runs.iterrows():
        model_key = str(run[model_col]).lower() if model_col and model_col in runs.columns else (model or "")
        mixture_key = str(run[mixture_col])
        pub = published.get((model_key, mixture_key))
        record: dict[str, Any] = {
            "Model": _model_name(run, model_key, from_axis=model_col is not None),
            "Mixture": pub.mixture if pub is not None else mixture_key,
        }
        number, text = _run_value(run, "instances", values)
        record["#Instances"] = _fmt(number, 0) or text
        record["#Instances (published)"] = _fmt(pub.instances, 0) if pub is not None else ""
        for metric, header in SURVEY_METRICS:
            header = header + _protocols(frame, metric)
            number, text = _run_value(run, metric, values)
            pub_value = getattr(pub, PUBLISHED_COLUMN[metric]) if pub is not None else None
            pub_text = _fmt(pub_value)
            if metric == "winrate" and pub is not None and pub.is_baseline:
                pub_text = BASELINE_MARK
            record[header] = _fmt(number) or text
            record[f"{header} (published)"] = pub_text
            both = number is not None and pub_value is not None and not pd.isna(pub_value)
            record[f"Δ {header.split(' [')[0]}"] = f"{number - pub_value:+.2f}" if both else ""
        record["Status"] = run["status"]
        record["Run"] = run["run_id"]
        records.append((order.get((model_key, mixture_key), len(order) + position), record))
    records.sort(key=lambda item: item[0])
    return pd.DataFrame([record for _, record in records])


def _resolve_column(runs: pd.DataFrame, name: str) -> str:
    for candidate in (name, f"label.{name}", f"config.{name}"):
        if candidate in runs.columns:
            return candidate
    raise ConfigError(f"table: unknown row/column {name!r} (axes: "
                      f"{', '.join(c[6:] for c in label_columns(runs)) or 'none'}; or a config.<key>)")


def pivot_table(frame: pd.DataFrame, rows: Sequence[str] = (), cols: Sequence[str] = (),
                metric: str | None = None) -> pd.DataFrame:
    """A generic pivot: ``rows`` x ``cols`` (axes or config keys) of one metric, or of every metric.

    Without ``cols`` the columns are the metrics (or the one ``metric``); with ``cols`` a
    ``metric`` is required. Every (rows, cols) cell must identify a single run.
    """
    runs = runs_frame(frame)
    values = metric_values(frame)
    metrics = [metric] if metric else sorted({m for (_, m) in values}) or ["final_loss"]
    row_cols = [_resolve_column(runs, r) for r in rows] or label_columns(runs) or ["run_id"]
    col_cols = [_resolve_column(runs, c) for c in cols]
    if col_cols and not metric:
        raise ConfigError("table: --cols needs --metric (which number fills the cells)")
    key_cols = row_cols + col_cols
    duplicated = runs.duplicated(subset=key_cols, keep=False)
    if duplicated.any():
        ids = ", ".join(runs.loc[duplicated, "run_id"].astype(str).head(4))
        raise ConfigError(f"table: rows {rows or row_cols} and cols {list(cols)} do not tell runs apart "
                          f"({ids} share a cell); add an axis")
    records = []
    for _, run in runs.iterrows():
        record = {c.split(".", 1)[-1]: run[c] for c in key_cols}
        for name in metrics:
            number, text = _run_value(run, name, values)
            header = name + _protocols(frame, name)
            record[header] = _fmt(number) or text
        records.append(record)
    table = pd.DataFrame(records)
    if not col_cols:
        return table
    header = metrics[0] + _protocols(frame, metrics[0])
    index = [c.split(".", 1)[-1] for c in row_cols]
    columns = [c.split(".", 1)[-1] for c in col_cols]
    wide = table.pivot(index=index, columns=columns, values=header).fillna("missing")
    wide.columns = [c if isinstance(c, str) else "/".join(map(str, c)) for c in wide.columns]
    wide.columns.name = None
    return wide.reset_index()


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned)."""
    headers = [str(c) for c in table.columns]
    rows = [["" if pd.isna(v) else str(v) for v in row] for row in table.itertuples(index=False)]

    def numeric(column: int) -> bool:
        cells = [r[column] for r in rows if r[column] not in ("",)]
        return bool(cells) and all(_is_number(c) for c in cells)

    align = ["---:" if numeric(i) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def to_latex(table: pd.DataFrame, caption: str | None = None) -> str:
    """A LaTeX tabular (booktabs) with special characters escaped."""
    def escape(text: Any) -> str:
        text = "" if pd.isna(text) else str(text)
        return re.sub(r"[\\&%$#_{}~^Δ]", lambda m: _LATEX_ESCAPES[m.group(0)], text)

    columns = "l" * len(table.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{" + columns + "}", r"\toprule",
             " & ".join(escape(c) for c in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(escape(v) for v in row) + r" \\" for row in table.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(r"\caption{" + escape(caption) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_html(table: pd.DataFrame, title: str | None = None) -> str:
    """A standalone HTML table."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if pd.isna(v) else str(v))}</td>" for v in row)
                   + "</tr>\n" for row in table.itertuples(index=False))
    caption = f"<caption>{html.escape(title)}</caption>" if title else ""
    return f"<table>{caption}\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"


def render(table: pd.DataFrame, fmt: str, title: str | None = None) -> str:
    """Render a table as md, csv, tex or html."""
    if fmt == "md":
        return (f"# {title}\n\n" if title else "") + to_markdown(table)
    if fmt == "csv":
        buffer = io.StringIO()
        table.to_csv(buffer, index=False)
        return buffer.getvalue()
    if fmt == "tex":
        return to_latex(table, caption=title)
    if fmt == "html":
        return to_html(table, title=title)
    raise ConfigError(f"unknown table format {fmt!r} (choose from {', '.join(FORMATS)})")
