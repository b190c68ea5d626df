"""The ``tokenizer`` template: a checkpoint's own Jinja ``chat_template``, with exact trained spans.

Rendering uses the same Jinja environment as transformers' ``apply_chat_template`` (sandboxed,
``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``, ``tojson``, ``raise_exception``,
``strftime_now``; the ``{% generation %}`` tag renders its body).

How the spans are found (prefix differencing, exact): for each trained assistant message ``i``
the template renders ``messages[:i]`` with ``add_generation_prompt=True`` (the opener the model
continues at inference) and ``messages[:i+1]``. The latter must start with the former and continue
with the content verbatim (or with the content stripped, for templates that ``trim`` it); the span
is that content plus, if it comes next, the end-of-turn token text (EOS or ``<|im_end|>``...). The
whole conversation's rendering must start with every such prefix rendering, so the spans index
into the one string that is tokenized. A template that breaks either condition (reorders turns,
rewrites content) raises a ``DataError`` instead of producing a wrong mask.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from functools import lru_cache

from harness.data.records import Message
from harness.data.templates import GENERIC_IDENTITY, Identity, Rendered, split_system
from harness.errors import ConfigError, DataError


@lru_cache(maxsize=16)
def _compile(source: str):
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):
        """``{% generation %}...{% endgeneration %}`` (transformers' assistant mask tag): renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        import json

        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as err:
        raise ConfigError(f"chat_template line {err.lineno}: {err.message}") from err


class JinjaTemplate:
    """A Jinja chat template (the tokenizer's), rendered with exact trained spans."""

    name = "tokenizer"

    def __init__(self, source: str, end_of_turn: Sequence[str] = ()):
        self.source = source
        self.end_of_turn = tuple(end_of_turn)
        self._template = _compile(source)

    def _render(self, messages: Sequence[Message], special: dict[str, str], add_generation_prompt: bool) -> str:
        import jinja2

        payload = [{"role": m.role, "content": m.content} for m in messages]
        try:
            return self._template.render(
                messages=payload, add_generation_prompt=add_generation_prompt,
                bos_token=special["bos"], eos_token=special["eos"], tools=None, documents=None,
            )
        except jinja2.exceptions.TemplateError as err:
            raise DataError(f"chat_template: {err}") from err

    def render(
        self,
        messages: Sequence[Message],
        special: dict[str, str],
        trained: Collection[int] | None = None,
        add_generation_prompt: bool = False,
        identity: Identity | None = None,
    ) -> Rendered:
        """Render ``messages``; spans cover each trained assistant content plus its end-of-turn text."""
        messages = list(messages)
        if identity is not None:
            system, turns = split_system(messages)
            ident = GENERIC_IDENTITY.format(name=identity.name, org=identity.org)
            content = ident if system is None else f"{ident} {system}"
            shift = 1 if system is None else 0
            messages = [Message("system", content), *turns]
            trained = None if trained is None else {i + shift for i in trained}
        text = self._render(messages, special, add_generation_prompt)
        end_tokens = tuple(t for t in (*self.end_of_turn, special["eos"]) if t)
        spans: list[tuple[int, int]] = []
        for index, message in enumerate(messages):
            if message.role != "assistant" or (trained is not None and index not in trained):
                continue
            opener = self._render(messages[:index], special, add_generation_prompt=True)
            upto = self._render(messages[: index + 1], special, add_generation_prompt=False)
            if not (upto.startswith(opener) and text.startswith(upto)):
                raise DataError(
                    f"chat_template is not prefix-stable at message {index}: rendering the conversation "
                    "turn by turn does not extend the same text, so trained spans cannot be located exactly"
                )
            start = len(opener)
            rest = upto[start:]
            for candidate in (message.content, message.content.strip()):
                if rest.startswith(candidate):
                    end = start + len(candidate)
                    break
            else:
                raise DataError(
                    f"chat_template does not reproduce assistant message {index} verbatim after its opener"
                )
            for token in end_tokens:
                if upto.startswith(token, end):
                    end += len(token)
                    break
            spans.append((start, end))
        return Rendered(text, tuple(spans))
