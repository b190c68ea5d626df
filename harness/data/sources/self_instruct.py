"""Self-Instruct (Wang et al. 2022) in its three public forms.

- ``instruction``: the 82K generation file ``all_instances_82K.jsonl``, rows
  ``{"instruction", "input", "output"}``.
- ``prompt_completion``: the hub form (``yizhongw/self_instruct``), rows ``{"prompt", "completion"}``;
  the completion's ``<|endoftext|>`` end marker and the prompt's trailing ``Output:`` cue are
  removed (the chat template supplies its own turn markers).
- ``instances``: seed tasks / user-oriented tasks, rows ``{"id", "name"?, "instruction",
  "instances": [{"input", "output"}], ...}``: one example per instance, id ``<id>#<k>``, with the task
  name in ``meta["task"]`` (so ``per_task_cap`` applies) and ``is_classification`` kept.

``form="auto"`` (default) picks the form from the first row's keys and then requires that form's
fields in every row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from harness.data.records import Example
from harness.data.sources.base import (
    ReadContext,
    RowError,
    instruction_example,
    make_example,
    require_object,
    required_list,
    required_str,
    row_id,
)
from harness.data.sources.io import Row

Form = Literal["auto", "instruction", "prompt_completion", "instances"]
END_OF_TEXT = "<|endoftext|>"
OUTPUT_CUE = "Output:"


class SelfInstructOptions(BaseModel):
    """Options of the ``self_instruct`` reader."""

    model_config = ConfigDict(extra="forbid")
    form: Form = "auto"


def detect_form(record: dict[str, Any]) -> Form:
    """The form a row's keys announce; a ``RowError`` when they match none."""
    if "instances" in record:
        return "instances"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    if "instruction" in record:
        return "instruction"
    raise RowError("missing_field", "cannot tell the Self-Instruct form: expected 'instruction' (+ 'output'), "
                                    f"'prompt' + 'completion', or 'instances'; found keys {sorted(record)}")


def clean_prompt_completion(prompt: str, completion: str) -> tuple[str, str]:
    """Strip the fine-tuning file's ``Output:`` cue and ``<|endoftext|>`` end marker."""
    prompt = prompt.rstrip()
    if prompt.endswith(OUTPUT_CUE):
        prompt = prompt[: -len(OUTPUT_CUE)].rstrip()
    completion = completion.strip()
    if completion.endswith(END_OF_TEXT):
        completion = completion[: -len(END_OF_TEXT)].rstrip()
    return prompt, completion


def _instances(row: Row, record: dict[str, Any], ctx: ReadContext, kind: str) -> list[Example]:
    instruction = required_str(record, "instruction")
    task_id = row_id(record, row)
    meta = {"task": record.get("name") or task_id}
    if "is_classification" in record:
        meta["is_classification"] = bool(record["is_classification"])
    examples = []
    for k, instance in enumerate(required_list(record, "instances")):
        if not isinstance(instance, dict):
            raise RowError("wrong_type", f"instances[{k}] must be an object with 'input' and 'output'")
        fake = {"instruction": instruction, **instance}
        try:
            examples += instruction_example(kind, row, fake, instruction_key="instruction", input_key="input",
                                            output_key="output", report=ctx.report, meta=dict(meta),
                                            example_id=f"{task_id}#{k}")
        except RowError as error:
            raise RowError(error.reason, f"instances[{k}]: {error.message}") from None
    return examples


def read(rows: Iterable[Row], options: SelfInstructOptions, ctx: ReadContext, kind: str = "self_instruct") -> Iterator[Example]:
    """Examples of a Self-Instruct file or hub dataset in any of its forms."""
    form: list[Form] = [options.form]

    def convert(row: Row) -> list[Example]:
        record = require_object(row.data)
        if form[0] == "auto":
            form[0] = detect_form(record)
        if form[0] == "instances":
            return _instances(row, record, ctx, kind)
        if form[0] == "prompt_completion":
            prompt, completion = clean_prompt_completion(required_str(record, "prompt"), required_str(record, "completion"))
            if not prompt:
                ctx.report.dropped["empty_instruction"] += 1
                return []
            if not completion:
                ctx.report.dropped["empty_output"] += 1
                return []
            return [make_example(kind, row_id(record, row), [("user", prompt), ("assistant", completion)], {})]
        return instruction_example(kind, row, record, instruction_key="instruction", input_key="input",
                                   output_key="output", report=ctx.report, meta={})

    return ctx.each(rows, convert)
