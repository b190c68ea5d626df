"""Tokenizers that belong to a checkpoint: the embedded GGUF's, a GGUF file's, or a HF directory's.

``load_tokenizer(spec)`` returns a :class:`Tokenizer`, a thin wrapper around a
``tokenizers.Tokenizer`` (``.backend``) that knows its special tokens and chat template.

GGUF files carry no ``tokenizer.json``; the byte-level BPE they describe (``tokenizer.ggml.model
== "gpt2"``) is rebuilt here from the metadata with the ``tokenizers`` library and read with the
``gguf`` package, so no torch is needed. The pre-tokenizer follows llama.cpp's
``tokenizer.ggml.pre`` type: SmolLM/StarCoder-family vocabularies ("smollm", "starcoder", ...)
split every digit on its own before the GPT-2 regex, exactly as the original ``tokenizer.json``
of SmolLM2 does (its vocabulary has no multi-digit token). transformers' GGUF loader does not know
the "smollm" type and falls back to the plain GPT-2 split, so the two differ only where whitespace
runs directly precede a digit (see docs/data-templates.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as BackendTokenizer

from harness.atomic import write_json_atomic
from harness.errors import CheckpointError, ConfigError

DEFAULT_TOKENIZER = "smollm2-135m"

# Token strings that end an assistant turn in the common chat formats.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>")

# llama.cpp pre-tokenizer types whose split isolates every digit before the GPT-2 regex.
_DIGIT_SPLIT_PRE_TYPES = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4


@dataclass
class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus the special tokens and chat template of its checkpoint."""

    backend: BackendTokenizer
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    unk_token: str | None = None
    chat_template: str | None = None
    name: str = "tokenizer"
    _offsets_backend: BackendTokenizer = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Offsets come from a copy without post-processor: a ByteLevel post-processor with
        # trim_offsets=True shrinks token spans past their leading space, which would make the
        # character-offset loss mask inexact. Ids are the same (no special tokens are added).
        self._offsets_backend = BackendTokenizer.from_str(self.backend.to_str())
        self._offsets_backend.post_processor = None
        for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
            token = getattr(self, attr)
            if token is not None and self.backend.token_to_id(token) is None:
                raise CheckpointError(f"tokenizer {self.name}: {attr} {token!r} is not in the vocabulary")

    # -- encoding ---------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special-token strings in it are matched, none are added."""
        return self._offsets_backend.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and, for each, the ``(start, end)`` character span it covers in ``text``."""
        encoding = self._offsets_backend.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def encode_batch(self, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """``encode_with_offsets`` for many texts in one call."""
        return [(e.ids, e.offsets) for e in self._offsets_backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (byte-level pieces are joined before decoding, so partial characters join)."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # -- special tokens ---------------------------------------------------------------------
    def token_id(self, token: str | None) -> int | None:
        """Id of one token string, or None when absent."""
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        return self.token_id(self.bos_token)

    @property
    def eos_id(self) -> int | None:
        return self.token_id(self.eos_token)

    @property
    def pad_id(self) -> int:
        """Padding id: the pad token, else EOS, else 0 (padding is never trained or attended)."""
        for token in (self.pad_token, self.eos_token):
            if self.token_id(token) is not None:
                return self.token_id(token)
        return 0

    @property
    def eot_ids(self) -> tuple[int, ...]:
        """Ids that end an assistant turn: EOS and the chat formats' end-of-turn tokens present."""
        ids: list[int] = []
        for token in (self.eos_token, *END_OF_TURN_TOKENS):
            token_id = self.token_id(token)
            if token_id is not None and token_id not in ids and token in self.special_tokens:
                ids.append(token_id)
        return tuple(ids)

    @property
    def special_tokens(self) -> set[str]:
        """Strings of the added special tokens (always matched whole, never split)."""
        return {t.content for t in self.backend.get_added_tokens_decoder().values() if t.special}

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    # -- saving -----------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (AutoTokenizer loads them)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        special = {
            k: v
            for k, v in (("bos_token", self.bos_token), ("eos_token", self.eos_token),
                         ("pad_token", self.pad_token), ("unk_token", self.unk_token))
            if v is not None
        }
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000_000,
            **special,
        }
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        write_json_atomic(directory / "tokenizer_config.json", config, ensure_ascii=False)
        write_json_atomic(directory / "special_tokens_map.json", special, ensure_ascii=False)
        return directory


# -- loading -------------------------------------------------------------------------------------
def load_tokenizer(spec: str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer named by ``spec``.

    ``None`` or ``"smollm2-135m"``: the embedded SmolLM2 GGUF's; ``"gguf:FILE"`` or a ``.gguf``
    path: that file's metadata; ``"hf:DIR"`` or a directory holding tokenizer.json: that directory.
    A loaded :class:`Tokenizer` is passed through unchanged.
    """
    if isinstance(spec, Tokenizer):
        return spec
    if spec is None or str(spec) == DEFAULT_TOKENIZER:
        from harness.model.assets import smollm2_gguf_path

        return _load_gguf_cached(str(smollm2_gguf_path()))
    text = str(spec)
    if text.startswith("gguf:"):
        return _load_gguf_cached(str(Path(text[5:]).expanduser().resolve()))
    if text.startswith("hf:"):
        return load_hf_tokenizer(Path(text[3:]).expanduser())
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _load_gguf_cached(str(path.resolve()))
    if path.is_dir():
        return load_hf_tokenizer(path)
    raise ConfigError(
        f"tokenizer spec {text!r}: expected 'smollm2-135m', 'gguf:FILE', 'hf:DIR' or a directory "
        "containing tokenizer.json"
    )


@lru_cache(maxsize=4)
def _load_gguf_cached(path: str) -> Tokenizer:
    return load_gguf_tokenizer(path)


def _token_content(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and "content" in value:
        return value["content"]
    raise CheckpointError(f"unexpected special-token entry {value!r}")


def load_hf_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """A tokenizer from a HF directory: tokenizer.json + tokenizer_config.json (+ chat_template.jinja)."""
    directory = Path(directory)
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise CheckpointError(f"{directory}: no tokenizer.json (only fast tokenizers are supported)")
    backend = BackendTokenizer.from_file(str(tokenizer_file))
    config: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        file = directory / name
        if file.is_file():
            try:
                config.update(json.loads(file.read_text(encoding="utf-8")))
            except json.JSONDecodeError as err:
                raise CheckpointError(f"{file}: invalid JSON ({err})") from err
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {entry.get("name"): entry.get("template") for entry in template}
        template = named.get("default", next(iter(named.values()), None))
    jinja_file = directory / "chat_template.jinja"
    if template is None and jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")
    return Tokenizer(
        backend=backend,
        bos_token=_token_content(config.get("bos_token")),
        eos_token=_token_content(config.get("eos_token")),
        pad_token=_token_content(config.get("pad_token")),
        unk_token=_token_content(config.get("unk_token")),
        chat_template=template,
        name=str(directory),
    )


def _gguf_field(reader, key: str):
    """Value of one GGUF metadata key: str, int, bool, or list thereof; None when absent."""
    import gguf

    fld = reader.fields.get(key)
    if fld is None:
        return None
    types = fld.types
    if types[0] == gguf.GGUFValueType.ARRAY:
        if types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(fld.parts[i]).decode("utf-8") for i in fld.data]
        return [fld.parts[i][0].item() for i in fld.data]
    if types[0] == gguf.GGUFValueType.STRING:
        return bytes(fld.parts[fld.data[0]]).decode("utf-8")
    return fld.parts[fld.data[0]][0].item()


def load_gguf_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Rebuild the byte-level BPE tokenizer a GGUF file describes, with its special tokens and template."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"GGUF file not found: {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # the gguf package raises bare ValueErrors on malformed files
        raise CheckpointError(f"{path}: not a readable GGUF file ({err})") from err
    model = _gguf_field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise CheckpointError(
            f"{path}: tokenizer.ggml.model is {model!r}; only byte-level BPE ('gpt2') GGUF tokenizers are "
            "supported (use an HF directory with tokenizer.json for others)"
        )
    tokens = _gguf_field(reader, "tokenizer.ggml.tokens")
    merges = _gguf_field(reader, "tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise CheckpointError(f"{path}: tokenizer.ggml.tokens or tokenizer.ggml.merges is missing")
    token_types = _gguf_field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    vocab = {token: index for index, token in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False)
    backend = BackendTokenizer(bpe)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if _gguf_field(reader, "tokenizer.ggml.pre") in _DIGIT_SPLIT_PRE_TYPES:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    # Control tokens are special (matched whole); a "control" token spelled outside the byte
    # alphabet is a llama.cpp mislabel and stays an ordinary vocabulary entry.
    backend.add_special_tokens([
        AddedToken(t, special=True, normalized=False)
        for t, kind in zip(tokens, token_types)
        if kind == _GGUF_CONTROL and set(t) <= alphabet
    ])
    backend.add_tokens([
        AddedToken(t, special=False, normalized=False)
        for t, kind in zip(tokens, token_types)
        if kind == _GGUF_USER_DEFINED
    ])

    def special(key: str) -> str | None:
        index = _gguf_field(reader, f"tokenizer.ggml.{key}")
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    return Tokenizer(
        backend=backend,
        bos_token=special("bos_token_id"),
        eos_token=special("eos_token_id"),
        pad_token=special("padding_token_id"),
        unk_token=special("unknown_token_id"),
        chat_template=_gguf_field(reader, "tokenizer.chat_template"),
        name=str(path),
    )


# -- a tiny tokenizer of the project's own, for fast tests ----------------------------------------
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")
_TINY_CORPUS = (
    "The following is a conversation between a human and an AI assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request. ### Instruction: ### Response: USER: "
    "ASSISTANT: [INST] [/INST] <<SYS>> <</SYS>> <|user|> <|assistant|> <|system|> [|Human|]: [|AI|]: "
    "def main():\n    return 42\n\nfor i in range(10):\n\tprint(i, i ** 2)\n"
    "Hello! How can I help you today? Sure, here is a list: 1. apples, 2. pears, 3. plums.\n"
    "Translate to French: the cat sat on the mat. Le chat s'est assis sur le tapis. "
    "Größe, naïve café, 日本語のテキスト, emoji 🎉 and math: x^2 + y^2 = z^2.\n"
)


def train_bpe_tokenizer(
    texts: list[str],
    vocab_size: int = 512,
    special_tokens: tuple[str, ...] = TINY_SPECIAL_TOKENS,
    bos_token: str | None = "<s>",
    eos_token: str | None = "</s>",
    pad_token: str | None = "<|endoftext|>",
    chat_template: str | None = CHATML_TEMPLATE,
) -> Tokenizer:
    """Train a small byte-level BPE on ``texts`` (deterministic); for tests and toy runs."""
    from tokenizers import trainers

    backend = BackendTokenizer(models.BPE(fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(backend, bos_token=bos_token, eos_token=eos_token, pad_token=pad_token,
                     chat_template=chat_template, name="tiny-bpe")


@lru_cache(maxsize=1)
def tiny_tokenizer() -> Tokenizer:
    """A ~512-token byte-level BPE trained on a built-in paragraph, with ChatML special tokens."""
    return train_bpe_tokenizer([_TINY_CORPUS] * 4)
