"""LIMA (Zhou et al. 2023) in its two public forms, told apart per row.

- Hub form (``GAIR/lima``): ``{"conversations": [str, str, ...], "source"}``, turns alternating
  user/assistant from a user turn; ``source`` goes into ``meta["task"]``. A trailing user turn
  (no reply) is removed and counted (``dropped: trailing_user_turn``).
- LLaMA-Factory form (``lima.json``): ``{"instruction", "input", "output", "history": [[user,
  assistant], ...]}``: ``history`` holds the earlier turns, ``instruction`` (+ ``input``) and
  ``output`` the last exchange.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pydantic import BaseModel, ConfigDict

from harness.data.records import Example
from harness.data.sources.base import (
    ReadContext,
    RowError,
    instruction_example,
    json_type,
    make_example,
    require_object,
    required_list,
    row_id,
)
from harness.data.sources.io import Row


class LimaOptions(BaseModel):
    """The ``lima`` reader has no options of its own."""

    model_config = ConfigDict(extra="forbid")


def _history(record: dict) -> list[tuple[str, str]]:
    turns = []
    for k, pair in enumerate(required_list(record, "history") if record.get("history") is not None else []):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise RowError("wrong_type", f"history[{k}] must be a [user, assistant] pair, got {json_type(pair)}")
        for role, text in zip(("user", "assistant"), pair, strict=True):
            if not isinstance(text, str):
                raise RowError("wrong_type", f"history[{k}] {role} turn must be a string, got {json_type(text)}")
            turns.append((role, text))
    return turns


def read(rows: Iterable[Row], options: LimaOptions, ctx: ReadContext, kind: str = "lima") -> Iterator[Example]:
    """Examples of a LIMA file or hub dataset."""

    def convert(row: Row) -> list[Example]:
        record = require_object(row.data)
        if "conversations" in record:
            texts = required_list(record, "conversations")
            turns = []
            for k, text in enumerate(texts):
                if not isinstance(text, str):
                    raise RowError("wrong_type", f"conversations[{k}] must be a string, got {json_type(text)}")
                turns.append(("user" if k % 2 == 0 else "assistant", text))
            if len(turns) % 2 == 1:
                ctx.report.dropped["trailing_user_turn"] += 1
                turns = turns[:-1]
            if not turns:
                ctx.report.dropped["no_assistant_turn"] += 1
                return []
            source = record.get("source")
            return [make_example(kind, row_id(record, row), turns, {"task": source} if isinstance(source, str) else {})]
        return instruction_example(kind, row, record, instruction_key="instruction", input_key="input",
                                   output_key="output", report=ctx.report, meta={}, history=_history(record))

    return ctx.each(rows, convert)
