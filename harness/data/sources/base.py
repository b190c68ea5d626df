"""What every reader shares: the per-source report, bad-row handling and field checks.

A reader converts :class:`~harness.data.sources.io.Row` objects into ``Example`` objects. When a
row is wrong it raises :class:`RowError`; :meth:`ReadContext.each` turns that into a
``DataError`` naming the file and line/row, or, where the user asked for ``skip_bad_rows``,
counts it under its reason and keeps going. Rows that are well-formed but unusable under a
documented policy (an empty reply, a conversation that does not alternate under ``policy=drop``)
are counted in ``dropped``; turns joined under ``policy=merge`` are counted in ``merged``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.data.records import Example, Message
from harness.data.sources.io import Row
from harness.errors import DataError

MAX_LISTED_SKIPS = 20


class RowError(Exception):
    """A malformed row: ``reason`` is a short counter key, ``message`` says what is wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class SourceReport:
    """What reading one source did: rows read, examples kept, and every count of what changed.

    ``dropped`` counts examples (or turns) left out under a documented policy, ``merged`` counts
    joined turns, ``skipped`` counts malformed rows skipped under ``skip_bad_rows`` (the first
    ``MAX_LISTED_SKIPS`` are listed with their location in ``skipped_rows``). ``capped_out`` and
    ``sampled_out`` count the examples removed by ``per_task_cap`` and ``sample``.
    """

    spec: str
    kind: str
    location: str
    rows_read: int = 0
    examples: int = 0
    merged: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    skipped_rows: list[str] = field(default_factory=list)
    capped_out: int = 0
    sampled_out: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for ``harness data stats --json`` and run manifests)."""
        return {
            "spec": self.spec,
            "kind": self.kind,
            "location": self.location,
            "rows_read": self.rows_read,
            "examples": self.examples,
            "merged": dict(sorted(self.merged.items())),
            "dropped": dict(sorted(self.dropped.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_rows": list(self.skipped_rows),
            "capped_out": self.capped_out,
            "sampled_out": self.sampled_out,
        }

    def summary(self) -> str:
        """One human line: ``read R rows -> K examples; dropped ...; merged ...; skipped ...``."""
        parts = [f"read {self.rows_read} rows -> {self.examples} examples"]
        for label, counts in (("dropped", self.dropped), ("merged", self.merged), ("skipped", self.skipped)):
            if counts:
                parts.append(f"{label} " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        if self.capped_out:
            parts.append(f"per-task cap removed {self.capped_out}")
        if self.sampled_out:
            parts.append(f"sampling removed {self.sampled_out}")
        return "; ".join(parts)


class ReadContext:
    """Applies the bad-row policy while a reader walks its rows, and stops at ``limit`` examples."""

    def __init__(self, report: SourceReport, *, skip_bad_rows: bool = False, limit: int | None = None) -> None:
        self.report = report
        self.skip_bad_rows = skip_bad_rows
        self.limit = limit
        self._kept = 0

    def bad(self, where: str, error: RowError) -> None:
        """Raise ``DataError`` for a bad row, or count and list it when skipping bad rows."""
        if not self.skip_bad_rows:
            raise DataError(f"{where}: {error.message}")
        self.report.skipped[error.reason] += 1
        if len(self.report.skipped_rows) < MAX_LISTED_SKIPS:
            self.report.skipped_rows.append(f"{where}: {error.message}")

    def each(self, rows: Iterable[Row], convert: Callable[[Row], Sequence[Example]]) -> Iterator[Example]:
        """Yield ``convert(row)`` for every row, applying the bad-row policy and the limit."""
        for row in rows:
            if self.limit is not None and self._kept >= self.limit:
                return
            self.report.rows_read += 1
            try:
                if row.error is not None:
                    raise RowError("malformed_row", row.error)
                examples = convert(row)
            except RowError as error:
                self.bad(row.where, error)
                continue
            for example in examples:
                if self.limit is not None and self._kept >= self.limit:
                    return
                self._kept += 1
                yield example


def json_type(value: Any) -> str:
    """The JSON name of a Python value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def require_object(data: Any, what: str = "row") -> dict[str, Any]:
    """The row as a dict, or a ``RowError`` saying it is not a JSON object."""
    if not isinstance(data, dict):
        raise RowError("wrong_type", f"{what} must be a JSON object, got {json_type(data)}")
    return data


def required_str(record: dict[str, Any], name: str, what: str = "") -> str:
    """``record[name]`` as a string; missing/null -> ``missing_field``, other types -> ``wrong_type``."""
    label = f"{what}field {name!r}"
    if name not in record or record[name] is None:
        raise RowError("missing_field", f"missing required {label}")
    value = record[name]
    if not isinstance(value, str):
        raise RowError("wrong_type", f"{label} must be a string, got {json_type(value)}")
    return value


def optional_str(record: dict[str, Any], name: str, what: str = "") -> str:
    """``record[name]`` as a string, ``""`` when absent or null; other types are a ``RowError``."""
    value = record.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RowError("wrong_type", f"{what}field {name!r} must be a string, got {json_type(value)}")
    return value


def required_list(record: dict[str, Any], name: str, what: str = "") -> list[Any]:
    """``record[name]`` as a list; missing/null -> ``missing_field``, other types -> ``wrong_type``."""
    label = f"{what}field {name!r}"
    if name not in record or record[name] is None:
        raise RowError("missing_field", f"missing required {label}")
    value = record[name]
    if not isinstance(value, (list, tuple)):
        raise RowError("wrong_type", f"{label} must be an array, got {json_type(value)}")
    return list(value)


def row_id(record: dict[str, Any], row: Row, key: str = "id") -> str:
    """The source's own id when it has one, else ``<file stem>-<row index>`` (stable per file)."""
    value = record.get(key)
    if value is not None and not isinstance(value, (dict, list)):
        return str(value)
    stem = row.origin.rsplit("/", 1)[-1].split("[", 1)[0]
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    return f"{stem}-{row.index}"


def join_instruction(instruction: str, extra: str) -> str:
    """The user turn of an instruction row: the instruction, then its input/context after a blank line."""
    instruction, extra = instruction.strip(), extra.strip()
    return f"{instruction}\n\n{extra}" if extra else instruction


def make_example(kind: str, example_id: str, turns: Sequence[tuple[str, str]], meta: dict[str, Any]) -> Example:
    """An ``Example`` from ``(role, content)`` pairs."""
    return Example(id=example_id, source=kind, messages=tuple(Message(r, c) for r, c in turns), meta=meta)


def instruction_example(kind: str, row: Row, record: dict[str, Any], *, instruction_key: str, input_key: str | None,
                        output_key: str, report: SourceReport, meta: dict[str, Any], example_id: str | None = None,
                        history: Sequence[tuple[str, str]] = ()) -> list[Example]:
    """One user/assistant example from an instruction-style row (Alpaca, Self-Instruct, Dolly...).

    An empty instruction or output cannot train anything: the row is dropped and counted
    (``empty_instruction`` / ``empty_output``) rather than raised, since its schema is valid.
    """
    instruction = required_str(record, instruction_key)
    extra = optional_str(record, input_key) if input_key else ""
    output = required_str(record, output_key)
    if not instruction.strip():
        report.dropped["empty_instruction"] += 1
        return []
    if not output.strip():
        report.dropped["empty_output"] += 1
        return []
    turns = [*history, ("user", join_instruction(instruction, extra)), ("assistant", output.strip())]
    return [make_example(kind, example_id or row_id(record, row), turns, meta)]
