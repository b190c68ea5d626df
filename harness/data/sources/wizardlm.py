"""WizardLM Evol-Instruct data (the survey's "w/ complexity" set).

Two public forms, told apart per row: ``WizardLM_evol_instruct_70k`` rows
``{"instruction", "output"}``, and the V2 196K rows in ShareGPT form
``{"idx", "conversations": [{"from", "value"}]}`` (read with the ShareGPT alternation ``policy``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

from pydantic import BaseModel, ConfigDict

from harness.data.records import Example
from harness.data.sources.base import (
    ReadContext,
    instruction_example,
    make_example,
    require_object,
    required_list,
    row_id,
)
from harness.data.sources.io import Row
from harness.data.sources.sharegpt import Policy, normalise_conversation, parse_turns


class WizardLMOptions(BaseModel):
    """Options of the ``wizardlm`` reader (``policy`` applies to the conversation form)."""

    model_config = ConfigDict(extra="forbid")
    policy: Policy = "error"


def read(rows: Iterable[Row], options: WizardLMOptions, ctx: ReadContext, kind: str = "wizardlm") -> Iterator[Example]:
    """Examples of a WizardLM Evol-Instruct file or hub dataset."""

    def convert(row: Row) -> list[Example]:
        record = require_object(row.data)
        if "conversations" in record:
            dropped: Counter = Counter()
            merged: Counter = Counter()
            turns = normalise_conversation(parse_turns(required_list(record, "conversations")), options.policy,
                                           True, dropped, merged)
            ctx.report.dropped.update(dropped)
            ctx.report.merged.update(merged)
            return [make_example(kind, row_id(record, row, "idx"), turns, {})] if turns else []
        return instruction_example(kind, row, record, instruction_key="instruction", input_key=None,
                                   output_key="output", report=ctx.report, meta={},
                                   example_id=row_id(record, row, "idx"))

    return ctx.each(rows, convert)
