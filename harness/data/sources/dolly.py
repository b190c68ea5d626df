"""Dolly-15K rows ``{"instruction", "context", "response", "category"}``.

The user turn is the instruction, then the context after a blank line; the category goes into
``meta["task"]`` (so ``per_task_cap`` caps per category).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pydantic import BaseModel, ConfigDict

from harness.data.records import Example
from harness.data.sources.base import ReadContext, instruction_example, optional_str, require_object
from harness.data.sources.io import Row


class DollyOptions(BaseModel):
    """The ``dolly`` reader has no options of its own."""

    model_config = ConfigDict(extra="forbid")


def read(rows: Iterable[Row], options: DollyOptions, ctx: ReadContext, kind: str = "dolly") -> Iterator[Example]:
    """Examples of a Dolly file or hub dataset (``databricks/databricks-dolly-15k``)."""

    def convert(row: Row) -> list[Example]:
        record = require_object(row.data)
        category = optional_str(record, "category")
        return instruction_example(kind, row, record, instruction_key="instruction", input_key="context",
                                   output_key="response", report=ctx.report,
                                   meta={"task": category} if category else {})

    return ctx.each(rows, convert)
