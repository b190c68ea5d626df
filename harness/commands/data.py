"""``harness data``: look at data sources before training on them.

- ``harness data stats SOURCE... [--template NAME] [--tokenizer MODEL] [--max-length N] [--json]``:
  per source the examples kept (and what reading dropped, merged or skipped), tokens after the
  template, token-length percentiles, how many exceed ``--max-length``, and lexical diversity
  (MTLD); for all sources together the packing efficiency at ``--max-length``.
- ``harness data inspect SOURCE --template NAME [--tokenizer MODEL] -n 3 [--json]``: rendered
  examples with the trained spans highlighted (registered from ``harness.data.inspect_cmd``).

Token lengths are those of the whole conversation rendered by the template, untruncated; the
packing efficiency packs them as training would with ``too_long=truncate`` (each length clipped to
``--max-length``, windowed best-fit-decreasing of ``harness.data.packing``).
"""

from __future__ import annotations

import importlib
import json
import math
from typing import Any, Optional

import numpy as np
import typer

from harness.errors import ConfigError

PERCENTILES = (50, 90, 95, 99)
UNTRUNCATED = 1 << 30


def length_summary(lengths: np.ndarray, max_length: int) -> dict[str, Any]:
    """Mean, percentiles, max and the count over ``max_length`` of a list of token lengths."""
    if len(lengths) == 0:
        return {"mean": 0.0, **{f"p{p}": 0 for p in PERCENTILES}, "max": 0, "over_max_length": 0}
    return {
        "mean": float(np.mean(lengths)),
        **{f"p{p}": float(np.percentile(lengths, p)) for p in PERCENTILES},
        "max": int(np.max(lengths)),
        "over_max_length": int(np.sum(lengths > max_length)),
    }


def compute_stats(specs: list[str], *, template: str = "survey", tokenizer: str | None = None,
                  max_length: int = 2048, limit: int | None = None, skip_bad_rows: bool = False,
                  use_cache: bool = True, pack_window: int = 2048) -> dict[str, Any]:
    """The object ``harness data stats --json`` prints (see the module docstring)."""
    from harness.data.diversity import lexical_diversity
    from harness.data.options import DataConfig
    from harness.data.packing import packing_efficiency, plan_rows
    from harness.data.pipeline import tokenize_source
    from harness.data.sources import load_source
    from harness.model.tokenizer import load_tokenizer

    if len(set(specs)) != len(specs):
        raise ConfigError(f"a source is named twice: {sorted({s for s in specs if specs.count(s) > 1})}")
    tok = load_tokenizer(tokenizer)
    config = DataConfig(template=template, max_length=UNTRUNCATED, too_long="truncate", packing=False)
    sources: dict[str, Any] = {}
    all_lengths: list[np.ndarray] = []
    for spec in specs:
        result = load_source(spec, skip_bad_rows=skip_bad_rows, limit=limit)
        tokenized = tokenize_source(spec, result.examples, tok, config, use_cache=use_cache)
        lengths = tokenized.lengths()
        clipped = np.minimum(lengths, max_length)
        all_lengths.append(clipped)
        rows = plan_rows(clipped.tolist(), max_length, packing=True, window=pack_window)
        diversity = lexical_diversity(result.examples)
        sources[spec] = {
            "kind": result.report.kind,
            "examples": result.report.examples,
            "tokenized": len(tokenized),
            "tokens": int(lengths.sum()),
            "trained_tokens": int(tokenized.mask.sum()),
            "length": length_summary(lengths, max_length),
            "packing_efficiency": packing_efficiency(clipped.tolist(), rows, max_length),
            "lexical_diversity": diversity.mtld if math.isfinite(diversity.mtld) else None,
            "lexical_diversity_words": diversity.words,
            "tokenize": tokenized.counts.as_dict(),
            "read": result.report.to_dict(),
        }
    lengths = np.concatenate(all_lengths) if all_lengths else np.zeros(0, np.int64)
    rows = plan_rows(lengths.tolist(), max_length, packing=True, window=pack_window)
    return {
        "template": template,
        "tokenizer": tokenizer or "smollm2-135m",
        "max_length": max_length,
        "lexical_diversity_measure": "MTLD, bidirectional, threshold 0.72, over all message words",
        "sources": sources,
        "rows": len(rows),
        "packing_efficiency": packing_efficiency(lengths.tolist(), rows, max_length),
    }


def _format_count(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items())


def short_label(spec: str) -> str:
    """``kind:.../dir/file.json?opts`` -> ``kind:file.json?opts`` for the table (notes keep the full spec)."""
    kind, _, rest = spec.partition(":")
    location, sep, query = rest.partition("?")
    return f"{kind}:{location.rstrip('/').rsplit('/', 1)[-1]}{sep}{query}"


def print_stats(stats: dict[str, Any]) -> None:
    """The human-readable table of :func:`compute_stats`' result."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"template {stats['template']}, tokenizer {stats['tokenizer']}, max length {stats['max_length']}")
    for column in ("source", "examples", "tokens", "trained", "mean", "p50", "p90", "p99", "max",
                   f"> {stats['max_length']}", "MTLD"):
        table.add_column(column, justify="left" if column == "source" else "right",
                         no_wrap=column != "source", overflow="fold")
    notes = []
    for name, s in stats["sources"].items():
        length = s["length"]
        table.add_row(short_label(name), f"{s['examples']:,}", f"{s['tokens']:,}", f"{s['trained_tokens']:,}",
                      f"{length['mean']:.0f}", f"{length['p50']:.0f}", f"{length['p90']:.0f}", f"{length['p99']:.0f}",
                      f"{length['max']:,}", f"{length['over_max_length']:,}",
                      "n/a" if s["lexical_diversity"] is None else f"{s['lexical_diversity']:.1f}")
        read = s["read"]
        changed = [f"{label} {_format_count(read[label])}" for label in ("dropped", "merged", "skipped") if read[label]]
        changed += [f"{k}={v}" for k, v in s["tokenize"].items() if v and k not in ("examples", "produced")]
        if changed:
            notes.append(f"{name}: " + "; ".join(changed))
    console = Console(width=max(Console().width, 150))
    console.print(table)
    for note in notes:
        console.print(note, markup=False)
    console.print(f"packing efficiency at {stats['max_length']}: {100 * stats['packing_efficiency']:.2f}% "
                  f"({stats['rows']:,} rows); lexical diversity = {stats['lexical_diversity_measure']}", markup=False)


def _register_inspect(data_app: typer.Typer) -> None:
    """Add ``inspect`` from the data-templates engineer's ``harness.data.inspect_cmd``, when present."""
    try:
        module = importlib.import_module("harness.data.inspect_cmd")
    except ModuleNotFoundError as exc:
        if exc.name != "harness.data.inspect_cmd":
            raise
        return

    @data_app.command("inspect")
    def inspect_command(
        source: str = typer.Argument(..., help="KIND:PATH_OR_HUB_NAME, e.g. sharegpt:conversations.json"),
        template: str = typer.Option("survey", "--template", "-t", help="chat template name"),
        tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="tokenizer (default: embedded SmolLM2)"),
        n: int = typer.Option(3, "-n", help="number of examples"),
        as_json: bool = typer.Option(False, "--json", help="one JSON object per example and line"),
        max_length: Optional[int] = typer.Option(None, "--max-length", help="truncate to this many tokens"),
    ) -> None:
        """Show rendered examples with the trained spans highlighted and their token counts."""
        module.inspect(source, template, tokenizer, n, as_json, max_length=max_length)


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group (``stats``, and ``inspect`` when its module exists)."""
    data_app = typer.Typer(help="Inspect data sources: rendered examples, counts, lengths, diversity.",
                           no_args_is_help=True)

    @data_app.command("stats")
    def stats_command(
        sources: list[str] = typer.Argument(..., help="sources KIND:PATH_OR_HUB_NAME[?option=value...]"),
        template: str = typer.Option("survey", "--template", "-t", help="chat template the lengths are measured in"),
        tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="tokenizer (default: embedded SmolLM2)"),
        max_length: int = typer.Option(2048, "--max-length", min=2, help="row length for packing efficiency"),
        limit: Optional[int] = typer.Option(None, "--limit", min=1, help="read at most this many examples per source"),
        skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows", help="count and skip malformed rows"),
        no_cache: bool = typer.Option(False, "--no-cache", help="do not read or write the tokenization cache"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    ) -> None:
        """Per-source counts, token-length percentiles, packing efficiency and lexical diversity."""
        stats = compute_stats(sources, template=template, tokenizer=tokenizer, max_length=max_length, limit=limit,
                              skip_bad_rows=skip_bad_rows, use_cache=not no_cache)
        if as_json:
            typer.echo(json.dumps(stats, ensure_ascii=False))
        else:
            print_stats(stats)

    _register_inspect(data_app)
    app.add_typer(data_app, name="data")
