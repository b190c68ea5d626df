"""Chat templates: a conversation -> one rendered string + the character spans the model is trained on.

Every template renders the whole conversation once and reports, for each trained assistant turn,
the character span ``[start, end)`` of what the model must produce after the turn's opener: the
template's lead (e.g. the single space after ``ASSISTANT:`` in Vicuna), the assistant content
verbatim, and the end-of-turn text (EOS or ``<|im_end|>``). :mod:`harness.data.masking` tokenizes
that string once with character offsets and marks the tokens inside the spans.

Names: ``survey`` (the survey's exact prompt), ``vicuna_v1.1``, ``tulu``, ``alpaca``,
``llama2_chat``, ``chatml`` and ``tokenizer`` (the checkpoint's own Jinja ``chat_template``,
see :mod:`harness.data.jinja_template`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from harness.data.records import Message
from harness.errors import ConfigError, DataError

SURVEY_SYSTEM = (
    "The following is a conversation between a human and an AI assistant. The AI assistant gives "
    "helpful, detailed, and polite answers to the user's questions."
)
SURVEY_IDENTITY = (
    "The following is a conversation between a human and an AI assistant called {name}, developed by "
    "{org}. The AI assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions."
)
VICUNA_IDENTITY = (
    "A chat between a curious user and an artificial intelligence assistant called {name}, developed by "
    "{org}. The assistant gives helpful, detailed, and polite answers to the user's questions."
)
ALPACA_SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request."
)
GENERIC_IDENTITY = (
    "The following is a conversation between a human and an AI assistant called {name}, developed by {org}."
)


@dataclass(frozen=True)
class Identity:
    """Self-identification: the assistant's name and the organisation that developed it."""

    name: str
    org: str


@dataclass(frozen=True)
class Rendered:
    """A rendered conversation: its text and the trained character spans, in order."""

    text: str
    spans: tuple[tuple[int, int], ...]

    @property
    def trained_texts(self) -> list[str]:
        return [self.text[s:e] for s, e in self.spans]


@dataclass(frozen=True)
class FormatTemplate:
    """A fixed-format chat template.

    Strings may contain ``{bos}`` / ``{eos}`` (the tokenizer's tokens); ``{content}`` marks where the
    message goes. ``assistant_lead`` and ``assistant_close`` are trained with the content;
    ``assistant_open`` ends the generation prompt and ``assistant_after`` follows the turn untrained.
    """

    name: str
    begin: str
    system: str
    user: str
    assistant_open: str
    assistant_lead: str
    assistant_close: str
    assistant_after: str
    default_system: str | None = None
    identity_system: str = GENERIC_IDENTITY
    system_in_first_user: str | None = None  # llama2: the system block goes inside the first [INST]

    def system_text(self, system: str | None, identity: Identity | None) -> str | None:
        """The system text to render: the example's, else identity-derived, else the default."""
        if identity is not None:
            ident = self.identity_system.format(name=identity.name, org=identity.org)
            return ident if system is None else f"{ident} {system}"
        return system if system is not None else self.default_system

    def render(
        self,
        messages: Sequence[Message],
        special: dict[str, str],
        trained: Collection[int] | None = None,
        add_generation_prompt: bool = False,
        identity: Identity | None = None,
    ) -> Rendered:
        """Render ``messages``; ``trained`` = indices of the assistant messages to train (default all)."""
        fill = lambda s: s.replace("{bos}", special["bos"]).replace("{eos}", special["eos"])  # noqa: E731
        system, turns = split_system(messages)
        offset = len(messages) - len(turns)
        system = self.system_text(system, identity)
        parts: list[str] = [fill(self.begin)]
        spans: list[tuple[int, int]] = []
        length = len(parts[0])

        def emit(text: str) -> None:
            nonlocal length
            parts.append(text)
            length += len(text)

        pending_system = None
        if system is not None:
            if self.system_in_first_user is not None:
                pending_system = fill(self.system_in_first_user).replace("{content}", system)
            else:
                head, tail = fill(self.system).split("{content}")
                emit(head + system + tail)
        for index, message in enumerate(turns, start=offset):
            if message.role == "user":
                head, tail = fill(self.user).split("{content}")
                content = message.content
                if pending_system is not None:
                    content, pending_system = pending_system + content, None
                emit(head + content + tail)
            else:
                emit(fill(self.assistant_open))
                start = length
                emit(fill(self.assistant_lead) + message.content + fill(self.assistant_close))
                if trained is None or index in trained:
                    spans.append((start, length))
                emit(fill(self.assistant_after))
        if add_generation_prompt:
            emit(fill(self.assistant_open))
        return Rendered("".join(parts), tuple(spans))

    def trained_text(self, content: str, special: dict[str, str]) -> str:
        """What one trained assistant turn with ``content`` contributes under the mask."""
        fill = lambda s: s.replace("{bos}", special["bos"]).replace("{eos}", special["eos"])  # noqa: E731
        return fill(self.assistant_lead) + content + fill(self.assistant_close)


def split_system(messages: Sequence[Message]) -> tuple[str | None, Sequence[Message]]:
    """The leading system message's content (None if absent) and the remaining turns.

    A system message anywhere but first is rejected: no template here can place it faithfully.
    """
    system = None
    turns = messages
    if messages and messages[0].role == "system":
        system, turns = messages[0].content, messages[1:]
    for message in turns:
        if message.role == "system":
            raise DataError("a system message is only allowed as the first message of a conversation")
    return system, turns


TEMPLATES: dict[str, FormatTemplate] = {
    t.name: t
    for t in (
        FormatTemplate(
            name="survey", begin="", system="{content}", user="\n[|Human|]:{content}",
            assistant_open="\n[|AI|]:", assistant_lead="", assistant_close="{eos}", assistant_after="",
            default_system=SURVEY_SYSTEM, identity_system=SURVEY_IDENTITY,
        ),
        FormatTemplate(
            name="vicuna_v1.1", begin="", system="{content} ", user="USER: {content} ",
            assistant_open="ASSISTANT:", assistant_lead=" ", assistant_close="{eos}", assistant_after="",
            default_system=VICUNA_SYSTEM, identity_system=VICUNA_IDENTITY,
        ),
        FormatTemplate(
            name="tulu", begin="", system="<|system|>\n{content}\n", user="<|user|>\n{content}\n",
            assistant_open="<|assistant|>\n", assistant_lead="", assistant_close="{eos}",
            assistant_after="\n",
        ),
        FormatTemplate(
            name="alpaca", begin="", system="{content}\n\n", user="### Instruction:\n{content}\n\n",
            assistant_open="### Response:\n", assistant_lead="", assistant_close="{eos}",
            assistant_after="\n\n", default_system=ALPACA_SYSTEM,
        ),
        FormatTemplate(
            name="llama2_chat", begin="", system="", user="{bos}[INST] {content} [/INST]",
            assistant_open="", assistant_lead=" ", assistant_close=" {eos}", assistant_after="",
            system_in_first_user="<<SYS>>\n{content}\n<</SYS>>\n\n",
        ),
        FormatTemplate(
            name="chatml", begin="", system="<|im_start|>system\n{content}<|im_end|>\n",
            user="<|im_start|>user\n{content}<|im_end|>\n", assistant_open="<|im_start|>assistant\n",
            assistant_lead="", assistant_close="<|im_end|>", assistant_after="\n",
        ),
    )
}
TEMPLATE_NAMES = (*TEMPLATES, "tokenizer")


def special_strings(tokenizer) -> dict[str, str]:
    """``{bos}`` / ``{eos}`` fillers from a tokenizer (empty when it has no such token)."""
    return {"bos": tokenizer.bos_token or "", "eos": tokenizer.eos_token or ""}


def get_template(name: str, tokenizer=None):
    """The template called ``name``; ``"tokenizer"`` needs the tokenizer whose chat_template it uses."""
    if name in TEMPLATES:
        return TEMPLATES[name]
    if name == "tokenizer":
        from harness.data.jinja_template import JinjaTemplate

        if tokenizer is None:
            raise ConfigError("template 'tokenizer' needs a tokenizer (its chat_template is used)")
        if not tokenizer.chat_template:
            raise ConfigError(f"template 'tokenizer': tokenizer {tokenizer.name} has no chat_template")
        end_of_turn = [tokenizer.backend.id_to_token(i) for i in tokenizer.eot_ids]
        return JinjaTemplate(tokenizer.chat_template, end_of_turn=end_of_turn)
    raise ConfigError(f"unknown template {name!r}; expected one of {', '.join(TEMPLATE_NAMES)}")


def render_conversation(
    template,
    messages: Sequence[Message],
    tokenizer,
    trained: Collection[int] | None = None,
    identity: Identity | None = None,
) -> Rendered:
    """Render a whole conversation and its trained spans (``trained``: assistant indices, default all)."""
    template = resolve(template, tokenizer)
    return template.render(messages, special_strings(tokenizer), trained=trained, identity=identity)


def render_prompt(template, messages: Sequence[Message], tokenizer, identity: Identity | None = None) -> str:
    """The conversation so far followed by the assistant-turn opener: the text a model continues."""
    template = resolve(template, tokenizer)
    if messages and messages[-1].role == "assistant":
        raise DataError("render_prompt: the conversation already ends with an assistant turn")
    rendered = template.render(
        messages, special_strings(tokenizer), trained=(), add_generation_prompt=True, identity=identity
    )
    return rendered.text


def resolve(template, tokenizer):
    """A template object from a name or a template."""
    return get_template(template, tokenizer) if isinstance(template, str) else template
