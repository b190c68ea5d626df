"""Alpaca-style rows ``{"instruction", "input", "output"}`` (Alpaca-52K, Alpaca-GPT4, ...).

The user turn is the instruction, then the input after a blank line when it is not empty; the
assistant turn is the output. Empty instructions/outputs are dropped and counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pydantic import BaseModel, ConfigDict

from harness.data.records import Example
from harness.data.sources.base import ReadContext, instruction_example, require_object
from harness.data.sources.io import Row


class AlpacaOptions(BaseModel):
    """The ``alpaca`` reader has no options of its own."""

    model_config = ConfigDict(extra="forbid")


def read(rows: Iterable[Row], options: AlpacaOptions, ctx: ReadContext, kind: str = "alpaca") -> Iterator[Example]:
    """Examples of an Alpaca-format file or hub dataset."""
    return ctx.each(rows, lambda row: instruction_example(
        kind, row, require_object(row.data), instruction_key="instruction", input_key="input",
        output_key="output", report=ctx.report, meta={}))
