"""The AlpacaFarm evaluation set and alpaca_eval's ``model_outputs.json`` format.

Eval set sources: the AlpacaFarm JSON (list of ``{"instruction", "input", ...}``), the
alpaca_eval JSON/JSONL (``{"instruction", ...}``, input already folded into the instruction), or
``hf:tatsu-lab/alpaca_farm`` (config ``alpaca_farm_evaluation``, split ``eval``). In alpaca_eval
the instruction is AlpacaFarm's ``instruction + "\\n\\n" + input`` (for a non-empty input): the
harness uses that text both as the prompt and as the key that lines outputs up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import EvalError

EVAL_SET_SIZE = 805


@dataclass(frozen=True)
class AlpacaItem:
    """One evaluation instruction (input folded in) and the sub-dataset it came from."""

    index: int
    instruction: str
    dataset: str = ""


def fold_input(instruction: str, input_text: str) -> str:
    """alpaca_eval's instruction text: the instruction, a blank line, then the input if any."""
    return f"{instruction}\n\n{input_text}" if input_text else instruction


def _load_json_or_jsonl(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise EvalError(f"{path}: line {line_number} is not valid JSON ({exc.msg})") from None
        return rows
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvalError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


def _items_from_rows(rows: Any, source: str) -> list[AlpacaItem]:
    if not isinstance(rows, list):
        raise EvalError(f"{source}: expected a list of records")
    items = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise EvalError(f"{source}: record {index} is not an object")
        if not isinstance(row.get("instruction"), str):
            raise EvalError(f"{source}: record {index} is missing the string field 'instruction'")
        input_text = row.get("input") or ""
        if not isinstance(input_text, str):
            raise EvalError(f"{source}: record {index}: field 'input' must be a string")
        items.append(AlpacaItem(index, fold_input(row["instruction"], input_text), str(row.get("dataset", ""))))
    return items


def read_eval_set(source: str | Path) -> list[AlpacaItem]:
    """The evaluation instructions from a JSON/JSONL file, a folder holding one, or ``hf:NAME``."""
    text = str(source)
    if text.startswith("hf:"):
        import datasets

        try:
            table = datasets.load_dataset(text[3:], "alpaca_farm_evaluation", split="eval")
        except Exception as exc:  # offline or not cached
            raise EvalError(f"cannot load {text[3:]!r} alpaca_farm_evaluation: {exc}") from None
        return _items_from_rows([dict(r) for r in table], text)
    path = Path(source)
    if path.is_dir():
        candidates = sorted(path.glob("eval*.json")) + sorted(path.glob("alpaca_eval.json*"))
        if not candidates:
            raise EvalError(f"{path}: no AlpacaFarm eval file (eval*.json or alpaca_eval.json[l]) in it")
        path = candidates[0]
    if not path.is_file():
        raise EvalError(f"AlpacaFarm eval file {path} does not exist")
    return _items_from_rows(_load_json_or_jsonl(path), str(path))


def read_model_outputs(path: Path) -> list[dict[str, Any]]:
    """An alpaca_eval ``model_outputs.json``: a list of ``{"instruction", "output", ...}``."""
    path = Path(path)
    if path.is_dir():
        path = path / "model_outputs.json"
    if not path.is_file():
        raise EvalError(f"model outputs file {path} does not exist")
    rows = _load_json_or_jsonl(path)
    if not isinstance(rows, list):
        raise EvalError(f"{path}: expected a JSON list of outputs")
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise EvalError(f"{path}: output {index} is not an object")
        for key in ("instruction", "output"):
            if not isinstance(row.get(key), str):
                raise EvalError(f"{path}: output {index} is missing the string field {key!r}")
    return rows


def _snippet(text: str, width: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def align_outputs(model: list[dict], baseline: list[dict], *, model_name: str = "model outputs",
                  baseline_name: str = "baseline outputs") -> list[tuple[dict, dict]]:
    """Pair each model output with the baseline output of the same instruction.

    The two files may list the instructions in different orders, but the instruction sets must
    be equal (alpaca_eval silently returns NaN otherwise): the first instruction of one file
    missing from the other raises EvalError naming it and its position.
    """
    if [r["instruction"] for r in model] == [r["instruction"] for r in baseline]:
        return list(zip(model, baseline))
    by_instruction: dict[str, dict] = {}
    for index, row in enumerate(baseline):
        if row["instruction"] in by_instruction:
            raise EvalError(f"{baseline_name}: instruction {index} appears twice: {_snippet(row['instruction'])!r}")
        by_instruction[row["instruction"]] = row
    seen = set()
    pairs = []
    for index, row in enumerate(model):
        other = by_instruction.get(row["instruction"])
        if other is None:
            raise EvalError(
                f"{model_name}: instruction {index} does not line up with {baseline_name} "
                f"(not found there): {_snippet(row['instruction'])!r}"
            )
        if row["instruction"] in seen:
            raise EvalError(f"{model_name}: instruction {index} appears twice: {_snippet(row['instruction'])!r}")
        seen.add(row["instruction"])
        pairs.append((row, other))
    for index, row in enumerate(baseline):
        if row["instruction"] not in seen:
            raise EvalError(
                f"{baseline_name}: instruction {index} has no counterpart in {model_name}: "
                f"{_snippet(row['instruction'])!r}"
            )
    return pairs


def check_against_reference(outputs: list[dict], reference: list[AlpacaItem], name: str) -> None:
    """The outputs must answer exactly the reference instructions, in order; name the first mismatch."""
    for index, (row, item) in enumerate(zip(outputs, reference)):
        if row["instruction"] != item.instruction:
            raise EvalError(
                f"{name}: instruction {index} does not line up with the reference eval set: "
                f"got {_snippet(row['instruction'])!r}, expected {_snippet(item.instruction)!r}"
            )
    if len(outputs) != len(reference):
        raise EvalError(f"{name}: {len(outputs)} outputs for {len(reference)} reference instructions")
