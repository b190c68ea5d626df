"""``harness data inspect SOURCE --template NAME [--tokenizer MODEL] -n 3 [--json]``.

Shows the first ``n`` examples of a source rendered by a template, with the trained spans (the
tokens under the loss mask) highlighted and the token counts; with ``--json`` prints one JSON
object per example and line: ``id``, ``source``, ``text`` (the rendered string), ``input_ids``,
``loss_mask`` (0/1 per token), ``trained_text`` (the decoded tokens under the mask) plus
``tokens``, ``trained_tokens`` and ``boundary_merges``.
"""

from __future__ import annotations

import json as _json
import sys
from typing import Any, TextIO

from harness.data.masking import TokenizedExample, tokenize_example
from harness.data.records import Example
from harness.data.templates import Identity, get_template, render_conversation
from harness.model.tokenizer import load_tokenizer


def inspect_records(
    source: str,
    template: str = "survey",
    tokenizer: str | None = None,
    n: int = 3,
    *,
    max_length: int | None = None,
    identity: Identity | None = None,
) -> list[dict[str, Any]]:
    """The JSON records ``inspect --json`` prints, for the first ``n`` examples of ``source``."""
    from harness.data.sources import load_source

    tok = load_tokenizer(tokenizer)
    chat_template = get_template(template, tok)
    result = load_source(source, limit=n)
    records = []
    for example in result.examples[:n]:
        tokenized = tokenize_example(example, chat_template, tok, identity=identity, max_length=max_length)
        text = render_conversation(chat_template, example.messages, tok, identity=identity).text
        records.append(_record(example, tokenized, text, tok))
    return records


def _record(example: Example, tokenized: TokenizedExample, text: str, tok) -> dict[str, Any]:
    ids, mask = tokenized.input_ids, tokenized.loss_mask
    return {
        "id": example.id,
        "source": example.source,
        "text": text,
        "input_ids": ids.tolist(),
        "loss_mask": mask.astype(int).tolist(),
        "trained_text": tok.decode(ids[mask]),
        "tokens": int(len(ids)),
        "trained_tokens": int(mask.sum()),
        "boundary_merges": tokenized.boundary_merges,
    }


def inspect(
    source: str,
    template: str = "survey",
    tokenizer: str | None = None,
    n: int = 3,
    json: bool = False,
    *,
    max_length: int | None = None,
    identity: Identity | None = None,
    out: TextIO | None = None,
) -> list[dict[str, Any]]:
    """Print the first ``n`` examples of ``source`` (rich, trained spans highlighted; or JSON lines)."""
    records = inspect_records(source, template, tokenizer, n, max_length=max_length, identity=identity)
    out = out or sys.stdout
    if json:
        for record in records:
            out.write(_json.dumps(record, ensure_ascii=False) + "\n")
        return records
    from rich.console import Console
    from rich.panel import Panel
    from rich.text import Text

    console = Console(file=out, highlight=False)
    tok = load_tokenizer(tokenizer)
    for record in records:
        console.print(Panel(_highlight(record, tok, Text), title=f"{record['id']}  ({record['source']})",
                            subtitle=f"{record['tokens']} tokens, {record['trained_tokens']} trained "
                                     f"(template {template})", title_align="left", subtitle_align="left"))
    console.print("[reverse green]highlighted[/] = tokens under the loss mask (trained)")
    return records


def _highlight(record: dict[str, Any], tok, text_cls):
    """The rendered text with every trained token's characters styled (from one tokenization)."""
    text = record["text"]
    _, offsets = tok.encode_with_offsets(text)
    trained = [False] * len(text)
    for (start, end), masked in zip(offsets, record["loss_mask"]):
        if masked:
            trained[start:end] = [True] * (end - start)
    styled = text_cls()
    begin = 0
    for position in range(1, len(text) + 1):
        if position == len(text) or trained[position] != trained[begin]:
            styled.append(text[begin:position], style="reverse green" if trained[begin] else "")
            begin = position
    return styled
