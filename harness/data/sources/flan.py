"""The FLAN collection (Longpre et al. 2023): processed ``inputs``/``targets`` rows and the CoT TSVs.

- Processed rows (hub ``Open-Orca/FLAN``, ``conceptofmind/*_submix_original``, local
  jsonl/parquet exports): ``{"inputs", "targets"}`` plus task metadata under either spelling,
  ``_task_name``/``task_name``, ``_template_type``/``template_type``, ``_task_source``/``task_source``,
  ``_template_idx``/``template_idx``; they become ``meta["task"]``, ``meta["template_type"]``,
  ``meta["task_source"]``, ``meta["template_idx"]``. ``template_type`` (e.g. ``zs_opt``) keeps only
  rows of that template type (others counted as ``dropped: other_template_type``).
- FLAN v2 CoT source files (``flan/v2/cot_data/*_train.tsv``): no header, exactly three
  tab-separated fields ``question, answer, rationale`` with newlines written as a literal ``\\n``.
  The task is ``cot_<file stem without _train>``; the user turn is ``cot_input_template`` and the
  assistant turn ``cot_target_template`` (``{question}``, ``{answer}``, ``{rationale}`` placeholders;
  default: the rationale, then "The answer is ANSWER.").

The seeded "sample N from the collection" (FLAN-T5's 80K) and the per-task cap are the generic
``sample`` / ``per_task_cap`` / ``seed`` options of every source, applied after reading.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from harness.data.records import Example
from harness.data.sources.base import ReadContext, make_example, require_object, required_str, row_id
from harness.data.sources.io import Row

COT_COLUMNS = ("question", "answer", "rationale")
DEFAULT_COT_TARGET = "{rationale}\nThe answer is {answer}."


class FlanOptions(BaseModel):
    """Options of the ``flan`` reader."""

    model_config = ConfigDict(extra="forbid")
    template_type: str | None = None
    cot_input_template: str = "{question}"
    cot_target_template: str = DEFAULT_COT_TARGET

    @field_validator("cot_input_template", "cot_target_template")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        try:
            value.format(question="", answer="", rationale="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"template may use only {{question}}, {{answer}}, {{rationale}}: {exc}") from None
        return value


def _meta_value(record: dict[str, Any], name: str) -> Any:
    for key in (f"_{name}", name):
        if record.get(key) is not None:
            return record[key]
    return None


def cot_task_name(origin: str) -> str:
    """``.../gsm8k_train.tsv`` -> ``cot_gsm8k``."""
    stem = Path(origin).stem
    return "cot_" + (stem[: -len("_train")] if stem.endswith("_train") else stem)


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n").strip()


def _cot_example(kind: str, row: Row, record: dict[str, str], options: FlanOptions, ctx: ReadContext) -> list[Example]:
    fields = {name: _unescape(record[name]) for name in COT_COLUMNS}
    if not fields["question"] or not (fields["answer"] or fields["rationale"]):
        ctx.report.dropped["empty_cot_field"] += 1
        return []
    fields["answer"] = fields["answer"].rstrip(".")
    task = cot_task_name(row.origin)
    turns = [("user", options.cot_input_template.format(**fields)),
             ("assistant", options.cot_target_template.format(**fields).strip())]
    return [make_example(kind, f"{task}-{row.index}", turns, {"task": task, "template_type": "cot"})]


def read(rows: Iterable[Row], options: FlanOptions, ctx: ReadContext, kind: str = "flan") -> Iterator[Example]:
    """Examples of FLAN collection rows or FLAN CoT TSV files."""

    def convert(row: Row) -> list[Example]:
        record = require_object(row.data)
        if "rationale" in record and "inputs" not in record:
            return _cot_example(kind, row, record, options, ctx)
        inputs = required_str(record, "inputs")
        targets = required_str(record, "targets")
        meta = {name: value for name in ("task_name", "template_type", "task_source", "template_idx")
                if (value := _meta_value(record, name)) is not None}
        if "task_name" in meta:
            meta["task"] = meta.pop("task_name")
        if options.template_type is not None and meta.get("template_type") != options.template_type:
            ctx.report.dropped["other_template_type"] += 1
            return []
        if not inputs.strip():
            ctx.report.dropped["empty_instruction"] += 1
            return []
        if not targets.strip():
            ctx.report.dropped["empty_output"] += 1
            return []
        return [make_example(kind, row_id(record, row), [("user", inputs.strip()), ("assistant", targets.strip())], meta)]

    return ctx.each(rows, convert)
