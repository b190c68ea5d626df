"""ShareGPT / Vicuna conversations: ``{"id", "conversations": [{"from", "value"}, ...]}``.

Roles: ``human``/``user`` -> user, ``gpt``/``chatgpt``/``assistant``/``bing`` -> assistant,
``system`` -> system; any other ``from`` is an error (``unknown_role``).

A conversation must read system? (user assistant)+. What does not (the *alternation policy*,
option ``policy``):

- ``error`` (default): a ``DataError`` naming the row and the turn.
- ``merge``: repair it -- empty turns are removed (``dropped: empty_turn``), a system turn after
  the start is removed (``dropped: misplaced_system_turn``), assistant turns before the first user
  turn are removed (``dropped: leading_assistant_turn``), and consecutive turns of one role are
  joined with a blank line (``merged: consecutive_same_role``, one per join).
- ``drop``: leave the whole conversation out, counted under its first problem
  (``dropped: empty_turn | misplaced_system | leading_assistant | consecutive_same_role``).

Under every policy a trailing user turn, which has no reply to learn, is removed
(``dropped: trailing_user_turn``) and a conversation with no assistant turn left is dropped
(``dropped: no_assistant_turn``); ``require_reply=false`` keeps both, for prompt-only files such
as ShareGPT first turns used as generation prompts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from harness.data.records import Example
from harness.data.sources.base import (
    ReadContext,
    RowError,
    json_type,
    make_example,
    require_object,
    required_list,
    required_str,
    row_id,
)
from harness.data.sources.io import Row

ROLE_MAP = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "assistant": "assistant",
    "bing": "assistant",
    "system": "system",
}

Policy = Literal["error", "merge", "drop"]


class ShareGPTOptions(BaseModel):
    """Options of the ``sharegpt`` reader."""

    model_config = ConfigDict(extra="forbid")
    policy: Policy = "error"
    require_reply: bool = True
    field: str = "conversations"


def parse_turns(conversation: list[Any], what: str = "") -> list[tuple[str, str]]:
    """``[{from, value}]`` -> ``[(role, content)]``; a wrong turn is a ``RowError`` naming its index."""
    turns = []
    for position, turn in enumerate(conversation):
        label = f"{what}turn {position}: "
        if not isinstance(turn, dict):
            raise RowError("wrong_type", f"{label}must be an object with 'from' and 'value', got {json_type(turn)}")
        speaker = required_str(turn, "from", label)
        value = turn.get("value")
        if value is None:
            raise RowError("missing_field", f"{label}missing required field 'value'")
        if not isinstance(value, str):
            raise RowError("wrong_type", f"{label}field 'value' must be a string, got {json_type(value)}")
        role = ROLE_MAP.get(speaker.strip().lower())
        if role is None:
            raise RowError("unknown_role", f"{label}unknown role {speaker!r}; expected one of {sorted(ROLE_MAP)}")
        turns.append((role, value))
    return turns


def _problems(turns: list[tuple[str, str]]) -> Iterator[tuple[str, int]]:
    """Each alternation problem of ``turns`` as ``(reason, turn index)``, in turn order."""
    seen_non_system = False
    previous = None
    for position, (role, content) in enumerate(turns):
        if not content.strip():
            yield "empty_turn", position
            continue
        if role == "system" and seen_non_system:
            yield "misplaced_system", position
        elif role == "assistant" and not seen_non_system:
            yield "leading_assistant", position
        elif role == previous:
            yield "consecutive_same_role", position
        if role != "system":
            seen_non_system = True
        previous = role


def _repair(turns: list[tuple[str, str]], counts: Counter, merged: Counter) -> list[tuple[str, str]]:
    """The ``merge`` policy: remove empty, misplaced and leading turns; join same-role neighbours."""
    repaired: list[tuple[str, str]] = []
    for role, content in turns:
        if not content.strip():
            counts["empty_turn"] += 1
            continue
        has_user = any(r == "user" for r, _ in repaired)
        if role == "system" and any(r != "system" for r, _ in repaired):
            counts["misplaced_system_turn"] += 1
            continue
        if role == "assistant" and not has_user:
            counts["leading_assistant_turn"] += 1
            continue
        if repaired and repaired[-1][0] == role:
            merged["consecutive_same_role"] += 1
            repaired[-1] = (role, f"{repaired[-1][1]}\n\n{content}")
            continue
        repaired.append((role, content))
    return repaired


def normalise_conversation(turns: list[tuple[str, str]], policy: Policy, require_reply: bool,
                           dropped: Counter, merged: Counter) -> list[tuple[str, str]]:
    """Apply the alternation policy to parsed turns; ``[]`` means the conversation is dropped.

    Counts go into ``dropped`` / ``merged``; under ``policy="error"`` a problem is a ``RowError``.
    """
    problem = next(_problems(turns), None)
    if problem is not None:
        reason, position = problem
        if policy == "error":
            raise RowError(reason, f"turn {position}: conversation does not alternate ({reason.replace('_', ' ')}); "
                                   "choose policy=merge or policy=drop to repair or leave out such conversations")
        if policy == "drop":
            dropped[reason] += 1
            return []
        turns = _repair(turns, dropped, merged)
    if require_reply:
        while turns and turns[-1][0] == "user":
            dropped["trailing_user_turn"] += 1
            turns = turns[:-1]
        if not any(role == "assistant" for role, _ in turns):
            dropped["no_assistant_turn"] += 1
            return []
    elif not turns:
        dropped["no_turns"] += 1
    return turns


def read(rows: Iterable[Row], options: ShareGPTOptions, ctx: ReadContext, kind: str = "sharegpt") -> Iterator[Example]:
    """Examples of a ShareGPT file or hub dataset under ``options.policy``."""

    def convert(row: Row) -> list[Example]:
        record = require_object(row.data)
        turns = parse_turns(required_list(record, options.field))
        dropped: Counter = Counter()
        merged: Counter = Counter()
        turns = normalise_conversation(turns, options.policy, options.require_reply, dropped, merged)
        ctx.report.dropped.update(dropped)
        ctx.report.merged.update(merged)
        if not turns:
            return []
        return [make_example(kind, row_id(record, row), turns, {})]

    return ctx.each(rows, convert)
