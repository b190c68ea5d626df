"""``harness data stats``: its numbers recomputed independently from the readers and the tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.data.diversity import lexical_diversity
from harness.data.masking import tokenize_example
from harness.data.sources import load_source
from harness.data.templates import get_template
from harness.model.tokenizer import load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_stats_json_matches_independent_computation(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    specs = [f"sharegpt:{FIXTURES / 'sharegpt.json'}", f"self_instruct:{FIXTURES / 'seed_tasks.jsonl'}",
             f"flan:{FIXTURES / 'gsm_toy_train.tsv'}"]
    code, out, err = run_cli(capsys, "data", "stats", *specs, "--json", "--max-length", "64")
    assert code == 0, err
    stats = json.loads(out)
    tokenizer = load_tokenizer()
    template = get_template("survey", tokenizer)
    all_lengths = []
    for spec in specs:
        examples = load_source(spec).examples
        lengths = np.array([len(tokenize_example(e, template, tokenizer).input_ids) for e in examples])
        entry = stats["sources"][spec]
        assert entry["examples"] == len(examples)
        assert entry["tokens"] == int(lengths.sum())
        assert entry["length"]["p50"] == pytest.approx(float(np.percentile(lengths, 50)))
        assert entry["length"]["max"] == int(lengths.max())
        assert entry["length"]["over_max_length"] == int((lengths > 64).sum())
        assert entry["lexical_diversity"] == pytest.approx(lexical_diversity(examples).mtld)
        all_lengths += np.minimum(lengths, 64).tolist()
    # efficiency = real tokens / (rows * row length), and no packing can use fewer rows than the volume needs
    rows = stats["rows"]
    assert stats["packing_efficiency"] == pytest.approx(sum(all_lengths) / (rows * 64))
    assert rows >= -(-sum(all_lengths) // 64)


def test_stats_table_and_bad_input(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    code, out, _ = run_cli(capsys, "data", "stats", f"sharegpt:{FIXTURES / 'sharegpt_unaligned.json'}?policy=merge")
    assert code == 0
    assert "packing efficiency at 2048" in out and "merged consecutive_same_role=2" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": "y"}\n{oops\n')
    code, out, err = run_cli(capsys, "data", "stats", f"alpaca:{bad}")
    assert code == 2 and err.startswith("error: ") and f"{bad}:line 2: malformed JSON" in err
    assert "Traceback" not in err
