"""The one record type every data source produces.

``Example(id, source, messages, meta)``: a conversation of ``Message(role, content)`` with
roles ``system``, ``user`` and ``assistant``. Readers produce these and nothing else; templates
turn them into token ids and a loss mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One turn of a conversation."""

    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; expected one of {ROLES}")
        if not isinstance(self.content, str):
            raise ValueError(f"message content must be a string, got {type(self.content).__name__}")


@dataclass(frozen=True)
class Example:
    """One training/eval instance: a stable id, the source it came from, its turns and metadata."""

    id: str
    source: str
    messages: tuple[Message, ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def assistant_turns(self) -> tuple[Message, ...]:
        return tuple(m for m in self.messages if m.role == "assistant")
