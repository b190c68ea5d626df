"""Examples -> ``TokenizedExample(input_ids, loss_mask)`` with an exact, offset-based loss mask.

The rendered conversation is tokenized ONCE, with character offsets; a token is trained when its
character span overlaps a trained span of the template (assistant lead + content + end-of-turn
text). Nothing is re-tokenized piecewise, so the ids are exactly those of the whole string.

When the tokenizer merges characters across a span boundary into one token (e.g. ``:*`` where
the prompt ends in ``:`` and the answer starts with ``*``), that token is trained (the model must
emit it after the prompt) and counted in ``boundary_merges``; with the shipped templates and a
byte-level BPE this only happens for answers starting with punctuation or whitespace runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from harness.data.options import DataConfig
from harness.data.records import Example, Message
from harness.data.templates import Identity, Rendered, resolve, special_strings, split_system


@dataclass(frozen=True)
class TokenizedExample:
    """``input_ids int32[n]`` and ``loss_mask bool[n]`` (True on tokens the model learns to produce)."""

    input_ids: np.ndarray
    loss_mask: np.ndarray
    id: str = ""
    source: str = ""
    boundary_merges: int = 0

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class TokenizeCounts:
    """What tokenization did to a stream of examples (goes into the data manifest)."""

    examples: int = 0
    produced: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_trainable: int = 0
    split_parts: int = 0
    boundary_merges: int = 0

    def add(self, other: "TokenizeCounts") -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def mask_from_spans(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> tuple[np.ndarray, int]:
    """Loss mask of tokens overlapping any span, and how many of them also stick out of it."""
    if len(offsets) == 0:
        return np.zeros(0, bool), 0
    bounds = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    starts, ends = bounds[:, 0], bounds[:, 1]
    mask = np.zeros(len(bounds), bool)
    outside = np.zeros(len(bounds), bool)
    for span_start, span_end in spans:
        overlap = (np.maximum(starts, span_start) < np.minimum(ends, span_end)) | (
            (starts == ends) & (starts >= span_start) & (starts < span_end)
        )
        mask |= overlap
        outside |= overlap & ((starts < span_start) | (ends > span_end))
    return mask, int(outside.sum())


def tokenize_rendered(rendered: Rendered, tokenizer) -> tuple[np.ndarray, np.ndarray, int]:
    """Ids, loss mask and boundary-merge count of one rendered conversation (one tokenization)."""
    ids, offsets = tokenizer.encode_with_offsets(rendered.text)
    mask, merges = mask_from_spans(offsets, rendered.spans)
    return np.asarray(ids, dtype=np.int32), mask, merges


def build_messages(
    example: Example, demonstrations: Sequence[Example] = (), system_prompt: str | None = None
) -> tuple[list[Message], list[int]]:
    """Messages to render (system, demonstration turns, the example's turns) and the example's assistant indices."""
    system, turns = split_system(example.messages)
    system = system if system is not None else system_prompt
    messages: list[Message] = [Message("system", system)] if system is not None else []
    for demo in demonstrations:
        messages.extend(split_system(demo.messages)[1])
    first = len(messages)
    messages.extend(turns)
    assistant = [i for i in range(first, len(messages)) if messages[i].role == "assistant"]
    return messages, assistant


def tokenize_example(
    example: Example,
    template,
    tokenizer,
    *,
    demonstrations: Sequence[Example] = (),
    system_prompt: str | None = None,
    identity: Identity | None = None,
    max_length: int | None = None,
) -> TokenizedExample:
    """Tokenize a whole conversation with loss on every assistant turn (truncated to max_length if given)."""
    messages, assistant = build_messages(example, demonstrations, system_prompt)
    template = resolve(template, tokenizer)
    rendered = template.render(messages, special_strings(tokenizer), trained=set(assistant), identity=identity)
    ids, mask, merges = tokenize_rendered(rendered, tokenizer)
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return TokenizedExample(ids, mask, example.id, example.source, merges)


@dataclass
class _Encoder:
    """Applies a DataConfig's too-long policy to one (messages, trained turns) job."""

    template: object
    tokenizer: object
    config: DataConfig
    counts: TokenizeCounts

    def encode(self, messages: list[Message], trained: set[int]) -> tuple[np.ndarray, np.ndarray, int]:
        rendered = self.template.render(
            messages, special_strings(self.tokenizer), trained=trained, identity=self.config.identity
        )
        return tokenize_rendered(rendered, self.tokenizer)

    def encode_units(self, head: list[Message], units: list[list[Message]], last_only: bool):
        """Render ``head`` + the units once; train every assistant turn, or only the last."""
        messages = head + [m for unit in units for m in unit]
        trained = {i for i in range(len(head), len(messages)) if messages[i].role == "assistant"}
        if last_only:
            trained = {max(trained)} if trained else set()
        return self.encode(messages, trained)

    def truncated(self, encoded):
        """Cut an encoding to max_length, counting it when something was cut."""
        ids, mask, merges = encoded
        limit = self.config.max_length
        if len(ids) > limit:
            self.counts.truncated += 1
        return ids[:limit], mask[:limit], merges

    def split_whole(self, head: list[Message], units: list[list[Message]]) -> list[tuple]:
        """Greedy chunks of consecutive whole turn units, each rendered after ``head``, that fit."""
        chunks: list[tuple] = []
        current: list[list[Message]] = []
        best = None
        for unit in units:
            encoded = self.encode_units(head, current + [unit], last_only=False)
            if len(encoded[0]) <= self.config.max_length or not current:
                current, best = current + [unit], encoded
                continue
            chunks.append(best)
            current, best = [unit], self.encode_units(head, [unit], last_only=False)
        if best is not None:
            chunks.append(best)
        self.counts.split_parts += max(len(chunks) - 1, 0)
        return [self.truncated(chunk) for chunk in chunks]

    def split_context(self, head: list[Message], units: list[list[Message]]) -> tuple:
        """Drop the oldest whole turn units of context until the last response fits."""
        encoded = self.encode_units(head, units, last_only=True)
        for drop in range(1, len(units)):
            if len(encoded[0]) <= self.config.max_length:
                break
            encoded = self.encode_units(head, units[drop:], last_only=True)
        return self.truncated(encoded)


def _turn_units(messages: list[Message]) -> list[list[Message]]:
    """Split turns before every user message (a unit = a user turn and the replies to it)."""
    units: list[list[Message]] = []
    for message in messages:
        if message.role == "user" or not units:
            units.append([])
        units[-1].append(message)
    return units


def encode_example(
    example: Example,
    template,
    tokenizer,
    config: DataConfig,
    demonstrations: Sequence[Example] = (),
    counts: TokenizeCounts | None = None,
) -> list[TokenizedExample]:
    """Tokenized training examples from one Example under ``config`` (multi-turn mode, too-long policy).

    ``whole``: one example, loss on every assistant turn. ``split``: one example per assistant turn,
    loss on that turn only, earlier turns as context. Too long: ``truncate`` keeps the first
    max_length tokens, ``drop`` drops, ``split`` cuts at turn boundaries (whole: consecutive chunks,
    each after the system/demonstration head; split: the oldest context turns go). Examples left
    with no trainable token are dropped. Everything is counted in ``counts``.
    """
    template = resolve(template, tokenizer)
    counts = counts if counts is not None else TokenizeCounts()
    encoder = _Encoder(template, tokenizer, config, counts)
    counts.examples += 1
    messages, assistant = build_messages(example, demonstrations, config.system_prompt)
    head_end = len(messages) - len(split_system(example.messages)[1])
    if config.multiturn == "whole":
        jobs = [(messages, set(assistant))]
    else:
        jobs = [(messages[: j + 1], {j}) for j in assistant]
    outputs: list[tuple[np.ndarray, np.ndarray, int]] = []
    for job_messages, trained in jobs:
        encoded = encoder.encode(job_messages, trained)
        if len(encoded[0]) <= config.max_length:
            outputs.append(encoded)
        elif config.too_long == "drop":
            counts.dropped_too_long += 1
        elif config.too_long == "truncate":
            outputs.append(encoder.truncated(encoded))
        else:
            head, units = job_messages[:head_end], _turn_units(job_messages[head_end:])
            if config.multiturn == "whole":
                outputs.extend(encoder.split_whole(head, units))
            else:
                outputs.append(encoder.split_context(head, units))
    results = []
    for index, (ids, mask, merges) in enumerate(outputs):
        if not mask[1:].any():  # the first token is never a target, so it cannot be trained
            counts.dropped_no_trainable += 1
            continue
        suffix = "" if len(outputs) == 1 else f"#{index}"
        results.append(TokenizedExample(ids, mask, example.id + suffix, example.source, merges))
        counts.boundary_merges += merges
    counts.produced += len(results)
    return results
