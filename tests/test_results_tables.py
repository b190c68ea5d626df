"""The survey table beside the published numbers, the pivot, formats and plots."""

from __future__ import annotations

import io
import json
from html.parser import HTMLParser

import pandas as pd
import pytest

from test_results_store import make_run, runs  # noqa: F401 (fixture)
from harness.cli import main
from harness.errors import ConfigError
from harness.results.plots import bar_charts
from harness.results.store import load_runs
from harness.results.tables import load_reference, pivot_table, render, survey_table


def test_survey_table_beside_published(runs):
    table = survey_table(load_runs(runs), mixture_axis="data", model_axis="model")
    reference = load_reference()
    assert len(reference) == 18 and reference["is_baseline"].sum() == 2
    rows = {(r["Model"], r["Mixture"]): r for _, r in table.iterrows()}
    assert list(rows) == [("7B", "FLAN-T5"), ("7B", "ShareGPT"), ("7B", "Self-Instruct-52K"),
                          ("7B", "ShareGPT + Self-Instruct"), ("13B", "Self-Instruct-52K")]
    flan = rows[("7B", "FLAN-T5")]
    assert flan["MMLU [standard, survey]"] == "40.00" and flan["MMLU [standard, survey] (published)"] == "38.58"
    assert flan["Δ MMLU"] == "+1.42"
    assert flan["AlpacaFarm win % [survey] (published)"] == "23.77" and flan["Δ AlpacaFarm win %"] == "+1.23"
    assert flan["#Instances"] == "80000" and flan["#Instances (published)"] == "80000"
    base = rows[("7B", "Self-Instruct-52K")]
    assert base["AlpacaFarm win % [survey]"] == "/*" and base["AlpacaFarm win % [survey] (published)"] == "/*"
    assert base["Lexical diversity"] == "26.50" and base["Lexical diversity (published)"] == "25.92"
    # absent numbers say why, never 0
    assert rows[("7B", "ShareGPT")]["MMLU [standard, survey]"] == "failed"
    assert rows[("7B", "ShareGPT + Self-Instruct")]["BBH [survey]"] == "running"
    assert rows[("13B", "Self-Instruct-52K")]["BBH [survey]"] == "not run"
    assert rows[("7B", "ShareGPT")]["Δ MMLU"] == ""


def test_fixed_model_without_model_axis(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "a", {"data": "flan"}, scores={"mmlu": 30.0})
    make_run(root, "b", {"data": "sharegpt"}, scores={"mmlu": 31.0},
             config={"model": {"init": "smollm2-135m"}, "train": {"lr": 2e-5, "steps": 10}})
    table = survey_table(load_runs(root), mixture_axis="data", model="7b").set_index("Run")
    assert table.loc["a", "MMLU [survey] (published)"] == "38.58"
    assert table.loc["b", "MMLU [survey] (published)"] == "38.11"
    # the cell's own model is named beside the published rows it is set against
    assert table.loc["a", "Model"] == "7B" and table.loc["b", "Model"] == "smollm2-135m (vs 7B)"
    make_run(root, "c", {"data": "flan"}, scores={"mmlu": 32.0},
             config={"model": {"init": "hf:/models/llama-7b/"}, "train": {"lr": 2e-5, "steps": 10}})
    table = survey_table(load_runs(root), mixture_axis="data", model="7b").set_index("Run")
    assert table.loc["c", "Model"] == "llama-7b (vs 7B)"  # a weights path shows as its folder name
    with pytest.raises(ConfigError, match="no cell has a label for the mixture axis 'mixture'"):
        survey_table(load_runs(root), mixture_axis="mixture")


def test_generic_pivot(runs):
    frame = load_runs(runs)
    wide = pivot_table(frame, rows=["data"], cols=["model"], metric="mmlu")
    wide = wide.set_index("data")
    assert wide.loc["self_instruct", "7b"] == "36.00" and wide.loc["self_instruct", "13b"] == "37.00"
    assert wide.loc["sharegpt", "7b"] == "failed" and wide.loc["flan", "13b"] == "missing"
    losses = pivot_table(frame, rows=["model", "data"], metric="final_loss")
    assert set(losses["final_loss"]) == {"1.50"}
    with pytest.raises(ConfigError, match="do not tell runs apart"):
        pivot_table(frame, rows=["model"], metric="mmlu")
    with pytest.raises(ConfigError, match="unknown row/column 'size'"):
        pivot_table(frame, rows=["size"], metric="mmlu")


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells: list[str] = []
        self._in = False

    def handle_starttag(self, tag, attrs):
        self._in = tag in ("td", "th")

    def handle_data(self, data):
        if self._in:
            self.cells.append(data)

    def handle_endtag(self, tag):
        self._in = False


def test_formats_round_trip(runs):
    table = survey_table(load_runs(runs), model_axis="model")
    csv = pd.read_csv(io.StringIO(render(table, "csv")), dtype=str, keep_default_na=False)
    assert csv.columns.tolist() == table.columns.tolist() and csv.values.tolist() == table.values.tolist()
    md = render(table, "md", title="demo").splitlines()
    assert md[0] == "# demo" and md[2].startswith("| Model | Mixture |") and len(md) == 4 + len(table)
    tex = render(table, "tex")
    assert r"\begin{tabular}" in tex and r"AlpacaFarm win \% [survey]" in tex and r"$\Delta$ MMLU" in tex
    parser = _Cells()
    parser.feed(render(table, "html"))
    assert parser.cells[: len(table.columns)] == table.columns.tolist()
    assert "FLAN-T5" in parser.cells and "failed" in parser.cells
    with pytest.raises(ConfigError, match="unknown table format"):
        render(table, "xlsx")


def test_plots_png_and_svg(runs, tmp_path):
    table = survey_table(load_runs(runs), model_axis="model")
    paths = bar_charts(table, tmp_path / "plots", title="demo")
    names = sorted(p.name for p in paths)
    assert "mmlu.png" in names and "mmlu.svg" in names and "alpacafarm_win.png" in names
    assert (tmp_path / "plots" / "mmlu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (tmp_path / "plots" / "mmlu.svg").read_text()
    assert "<svg" in svg and "failed" in svg  # the failed cell is written, not drawn as a zero bar


def test_table_command_on_runs_dir(runs, tmp_path, capsys):
    out = tmp_path / "out"
    main(["table", str(runs), "--format", "csv", "--out", str(out), "--rows", "data", "--cols", "model",
          "--metric", "mmlu"])
    printed = pd.read_csv(io.StringIO(capsys.readouterr().out), dtype=str)
    assert printed.set_index("data").loc["flan", "7b"] == "40.00"
    assert {p.name for p in out.iterdir()} >= {"table.md", "table.csv", "table.tex", "table.html", "runs.csv", "plots"}
    tidy = pd.read_csv(out / "runs.csv")
    assert set(tidy["run_id"]) == {"base7", "flan7", "share7", "mix7", "base13"}
    assert json.loads(json.dumps(list(tidy.columns)))  # plain column names, no config.* clutter
    assert not any(c.startswith("config.") for c in tidy.columns)


def test_runs_csv_names_run_dirs_relative_to_the_working_directory(runs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.chdir(runs.parent)  # the runs are under the working directory: relative paths
    main(["table", str(runs), "--format", "csv", "--out", str(out)])
    tidy = pd.read_csv(out / "runs.csv")
    assert set(tidy["run_dir"]) == {f"{runs.name}/{r}" for r in tidy["run_id"]}
    monkeypatch.chdir(out)  # elsewhere: left absolute
    main(["table", str(runs), "--format", "csv", "--out", str(out)])
    assert set(pd.read_csv(out / "runs.csv")["run_dir"]) == {str(runs / r) for r in tidy["run_id"]}


def test_plot_legend_names_our_model_and_the_published_one(tmp_path):
    root = tmp_path / "runs"
    config = {"model": {"init": "smollm2-135m"}, "train": {"lr": 2e-5, "steps": 10}}
    for run_id, data in (("a", "flan"), ("b", "sharegpt")):
        make_run(root, run_id, {"data": data}, scores={"mmlu": 30.0}, config=config)
    table = survey_table(load_runs(root), mixture_axis="data", model="7b")
    bar_charts(table, tmp_path / "plots", title="demo")
    svg = (tmp_path / "plots" / "mmlu.svg").read_text()
    assert "ours (smollm2-135m)" in svg and "survey 7B (published)" in svg
