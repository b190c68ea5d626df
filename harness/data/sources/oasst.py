"""OpenAssistant conversations: the highest-ranked path of every message tree.

Two public forms:

- Tree export (``*_tree.jsonl``): one tree per row, ``{"message_tree_id", "prompt": message}``
  where a message is ``{"message_id", "text", "role" (prompter|assistant), "rank"?, "lang",
  "deleted", "review_result", "replies": [message, ...]}``.
- Flat messages (hub ``OpenAssistant/oasst1`` / ``oasst2``): one message per row with
  ``message_id``, ``parent_id``, ``message_tree_id``, ``text``, ``role``, ``rank``...; rows are
  grouped into trees first.

The path starts at the prompt and at each assistant choice takes the lowest ``rank`` (0 = best;
an unranked reply comes after ranked ones, ties keep export order); at a user choice it takes the
first follow-up that has an assistant reply. Deleted messages and messages whose
``review_result`` is false are never taken. A path that would end on a user turn is cut after the
last assistant turn; a tree with no usable assistant reply is dropped (``no_assistant_reply``).
``lang`` (e.g. ``en``) keeps only trees whose prompt is in that language (``other_language``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict

from harness.data.records import Example
from harness.data.sources.base import (
    ReadContext,
    RowError,
    json_type,
    make_example,
    require_object,
    required_str,
)
from harness.data.sources.io import Row

ROLES = {"prompter": "user", "assistant": "assistant"}


class OasstOptions(BaseModel):
    """Options of the ``oasst`` reader."""

    model_config = ConfigDict(extra="forbid")
    lang: str | None = None


def _check_message(message: Any, path: str) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise RowError("wrong_type", f"{path}: message must be an object, got {json_type(message)}")
    required_str(message, "text", f"{path}: ")
    role = required_str(message, "role", f"{path}: ")
    if role not in ROLES:
        raise RowError("unknown_role", f"{path}: unknown role {role!r}; expected 'prompter' or 'assistant'")
    replies = message.get("replies") or []
    if not isinstance(replies, list):
        raise RowError("wrong_type", f"{path}: field 'replies' must be an array, got {json_type(replies)}")
    for k, reply in enumerate(replies):
        _check_message(reply, f"{path}.replies[{k}]")
    return message


def _usable(message: dict[str, Any]) -> bool:
    return not message.get("deleted", False) and message.get("review_result") is not False


def _rank_key(indexed: tuple[int, dict[str, Any]]) -> tuple[float, int]:
    position, message = indexed
    rank = message.get("rank")
    return (float(rank) if isinstance(rank, (int, float)) else float("inf"), position)


def best_path(prompt: dict[str, Any]) -> list[tuple[str, str]]:
    """The highest-ranked path from ``prompt`` as ``(role, text)`` turns, ending on an assistant turn."""
    turns: list[tuple[str, str]] = []
    message: dict[str, Any] | None = prompt if _usable(prompt) else None
    while message is not None:
        turns.append((ROLES[message["role"]], message["text"]))
        replies = [r for r in (message.get("replies") or []) if _usable(r)]
        if message["role"] == "prompter":
            ranked = sorted(enumerate(r for r in replies if r["role"] == "assistant"), key=_rank_key)
            message = ranked[0][1] if ranked else None
        else:
            follow_ups = [r for r in replies if r["role"] == "prompter"]
            answered = [r for r in follow_ups if any(_usable(a) and a["role"] == "assistant" for a in r.get("replies") or [])]
            message = answered[0] if answered else None
    while turns and turns[-1][0] == "user":
        turns.pop()
    return turns


def _tree_from_flat(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Nest flat messages of one tree under their root (the message without a parent)."""
    nodes = {m["message_id"]: {**m, "replies": []} for m in messages}
    root = None
    for message in messages:
        node = nodes[message["message_id"]]
        parent = message.get("parent_id")
        if parent is None:
            root = node
        elif parent in nodes:
            nodes[parent]["replies"].append(node)
    return root


def _example(kind: str, tree_id: str, prompt: dict[str, Any], options: OasstOptions, ctx: ReadContext) -> list[Example]:
    if options.lang is not None and prompt.get("lang") != options.lang:
        ctx.report.dropped["other_language"] += 1
        return []
    turns = best_path(prompt)
    if not turns:
        ctx.report.dropped["no_assistant_reply"] += 1
        return []
    return [make_example(kind, tree_id, turns, {"lang": prompt.get("lang")})]


def read(rows: Iterable[Row], options: OasstOptions, ctx: ReadContext, kind: str = "oasst") -> Iterator[Example]:
    """Examples (one per message tree) of an OASST tree export or flat message table."""
    flat: dict[str, list[dict[str, Any]]] = {}

    def convert(row: Row) -> list[Example]:
        record = require_object(row.data)
        if "prompt" in record:
            prompt = _check_message(record["prompt"], "prompt")
            tree_id = str(record.get("message_tree_id") or prompt.get("message_id") or row.index)
            return _example(kind, tree_id, prompt, options, ctx)
        _check_message({**record, "replies": []}, "message")
        for key in ("message_id", "message_tree_id"):
            required_str(record, key)
        flat.setdefault(record["message_tree_id"], []).append(record)
        return []

    yield from ctx.each(rows, convert)
    for tree_id, messages in flat.items():
        root = _tree_from_flat(messages)
        if root is None:
            ctx.report.dropped["tree_without_root"] += 1
            continue
        yield from _example(kind, tree_id, root, options, ctx)
