"""Lexical diversity of a dataset: MTLD (McCarthy & Jarvis 2010), bidirectional, threshold 0.72.

The survey's table has a "lexical diversity" column it never defines; the harness uses MTLD, the
measure of textual lexical diversity, because it is far less sensitive to text length than a
type-token ratio (the samples compared here differ in size by orders of magnitude).

What is measured: the words of every message of every example (system, instruction and response
text alike, by default), lower-cased, letters only (``[a-z]+`` with inner apostrophes; digits,
punctuation and markup are not words), concatenated in source order into one stream: the
diversity of the dataset as a whole, so phrasing repeated across examples counts against it.

MTLD: walk the stream keeping the type-token ratio (TTR) of the current segment; when it falls to
``threshold`` (0.72) or below, count one factor and start a new segment. The leftover segment
counts the fraction ``(1 - TTR) / (1 - threshold)`` of a factor. MTLD = words / factors,
computed forwards and backwards and averaged. A stream whose TTR never falls and whose leftover is
all distinct words counts one factor (MTLD = its length), as in ``lexicalrichness``; an empty stream
has MTLD ``nan``. Higher = more diverse.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from harness.data.records import Example

MTLD_THRESHOLD = 0.72
WORD_PATTERN = re.compile(r"[a-z]+(?:'[a-z]+)*")
ALL_ROLES = ("system", "user", "assistant")


def words(text: str) -> list[str]:
    """The words MTLD counts: lower-cased alphabetic runs (inner apostrophes kept)."""
    return WORD_PATTERN.findall(text.lower())


def _factors(tokens: Iterable[str], threshold: float) -> float:
    types: set[str] = set()
    count = 0
    factors = 0.0
    ttr = 1.0
    for token in tokens:
        count += 1
        types.add(token)
        ttr = len(types) / count
        if ttr <= threshold:
            factors += 1.0
            types, count, ttr = set(), 0, 1.0
    if count > 0:
        factors += (1.0 - ttr) / (1.0 - threshold)
    return factors


def _one_way(tokens: Sequence[str], threshold: float, forward: bool) -> float:
    factors = _factors(tokens if forward else reversed(tokens), threshold)
    if factors == 0:
        whole = len(set(tokens)) / len(tokens)
        factors = 1.0 if whole == 1 else (1.0 - whole) / (1.0 - threshold)
    return len(tokens) / factors


def mtld(tokens: Sequence[str], threshold: float = MTLD_THRESHOLD) -> float:
    """Bidirectional MTLD of a token sequence (mean of the forward and backward passes)."""
    if not 0 < threshold < 1:
        raise ValueError(f"MTLD threshold must lie in (0, 1), got {threshold}")
    if not tokens:
        return math.nan
    return (_one_way(tokens, threshold, True) + _one_way(tokens, threshold, False)) / 2


def example_words(example: Example, roles: Sequence[str] = ALL_ROLES) -> list[str]:
    """The words of an example's messages whose role is in ``roles``, in turn order."""
    return [w for message in example.messages if message.role in roles for w in words(message.content)]


@dataclass(frozen=True)
class Diversity:
    """MTLD of a set of examples and the size of the word stream it was computed on."""

    mtld: float
    words: int
    examples: int
    roles: tuple[str, ...]

    def to_dict(self) -> dict[str, float | int | str]:
        return {"measure": f"MTLD (bidirectional, threshold {MTLD_THRESHOLD})", "mtld": self.mtld,
                "words": self.words, "examples": self.examples, "text": "+".join(self.roles)}


def lexical_diversity(examples: Sequence[Example], roles: Sequence[str] = ALL_ROLES,
                      threshold: float = MTLD_THRESHOLD) -> Diversity:
    """Dataset-level MTLD over the concatenated words of ``examples`` (see the module docstring)."""
    stream = [w for example in examples for w in example_words(example, roles)]
    return Diversity(mtld(stream, threshold), len(stream), len(examples), tuple(roles))
