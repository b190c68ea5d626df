"""The harness tokenizer against transformers' own GGUF tokenizer, and save/load round trips."""

from __future__ import annotations

import unicodedata

import pytest

from harness.data.records import Message
from harness.data.templates import render_prompt, render_conversation
from harness.errors import CheckpointError, ConfigError
from harness.model.assets import smollm2_gguf_path
from harness.model.tokenizer import load_tokenizer, tiny_tokenizer

TEXTS = [
    "Hello, world!",
    "  leading spaces and trailing   ",
    "héllo wörld — naïve café, Größe; 日本語のテキスト; Ελληνικά; русский; 한국어; emoji 🎉🧪👩‍💻",
    "def f(x):\n    return x ** 2  # square\n\n\n\tindented\twith\ttabs\r\nwindows line",
    "multiple\n\n\n\nnewlines and     five spaces",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|endoftext|>",
    "special tokens glued:<|im_end|>x<|im_start|>y <repo_name>z",
    "numbers: 12345, 3.14159, 1e-10, 2024-06-01, $1,000,000 and v2.0.1",
    "spaces before digits:  7 and   42\n 9",
    "punctuation!!! ??? ... --- *** ``` ''' \"\"\" <<< >>> [[ ]] {{ }}",
    "a" * 300,
    "",
    " ",
    "\u00a0non-breaking\u2009thin\u200bzero-width",
    "mixed 中文 and English, with numbers ３４５ (full-width) and ² ½",
]

CONVERSATIONS = [
    [Message("user", "What is 2+2?"), Message("assistant", "4")],
    [Message("system", "Be terse."), Message("user", "Hi"), Message("assistant", "Hello."),
     Message("user", "Bye")],
    [Message("user", "Write code"), Message("assistant", "```python\nprint('x')\n```"),
     Message("user", "Thanks! 🎉")],
]


@pytest.fixture(scope="module")
def harness_tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def hf_tok():
    transformers = pytest.importorskip("transformers")
    path = smollm2_gguf_path()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def digit_isolated_reference(hf_tok, text: str) -> list[int]:
    """Independent reference for SmolLM2's split: every Unicode digit on its own, then GPT-2 BPE.

    transformers' GGUF loader does not know llama.cpp's "smollm" pre-tokenizer type (individual
    digits, as SmolLM2's original tokenizer.json has) and applies only the GPT-2 regex; encoding
    the digit-separated pieces one by one with it gives exactly the digit-isolating result.
    """
    pieces, current = [], ""
    for char in text:
        if unicodedata.category(char) in ("Nd", "Nl", "No"):
            pieces += [current, char] if current else [char]
            current = ""
        else:
            current += char
    if current:
        pieces.append(current)
    return [i for piece in pieces for i in hf_tok.encode(piece, add_special_tokens=False)]


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_transformers_gguf_tokenizer(harness_tok, hf_tok, text):
    ids = harness_tok.encode(text)
    assert ids == digit_isolated_reference(hf_tok, text)
    if not any(unicodedata.category(c).startswith("N") for c in text):
        assert ids == hf_tok.encode(text, add_special_tokens=False)
    assert harness_tok.decode(ids) == hf_tok.decode(ids) == text


def test_offsets_cover_the_text(harness_tok):
    for text in TEXTS:
        ids, offsets = harness_tok.encode_with_offsets(text)
        assert len(ids) == len(offsets)
        assert all(0 <= s <= e <= len(text) for s, e in offsets)
        if text:
            assert offsets[0][0] == 0 and offsets[-1][1] == len(text)


def test_special_tokens_match(harness_tok, hf_tok):
    assert harness_tok.bos_token == hf_tok.bos_token == "<|im_start|>"
    assert harness_tok.eos_token == hf_tok.eos_token == "<|im_end|>"
    assert harness_tok.pad_id == hf_tok.pad_token_id
    assert harness_tok.eos_id in harness_tok.eot_ids
    assert harness_tok.vocab_size == len(hf_tok) == 49152
    assert harness_tok.chat_template == hf_tok.chat_template


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_template_rendering_matches_transformers(harness_tok, hf_tok, messages):
    payload = [{"role": m.role, "content": m.content} for m in messages]
    if messages[-1].role == "user":
        expected = hf_tok.apply_chat_template(payload, tokenize=False, add_generation_prompt=True)
        assert render_prompt("tokenizer", messages, harness_tok) == expected
    else:
        expected = hf_tok.apply_chat_template(payload, tokenize=False)
        assert render_conversation("tokenizer", messages, harness_tok).text == expected
    assert harness_tok.encode(expected) == digit_isolated_reference(hf_tok, expected)


def test_save_round_trip_through_autotokenizer(harness_tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    harness_tok.save(tmp_path)
    loaded = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in TEXTS:
        assert loaded.encode(text, add_special_tokens=False) == harness_tok.encode(text)
    assert loaded.eos_token == "<|im_end|>" and loaded.bos_token == "<|im_start|>"
    payload = [{"role": m.role, "content": m.content} for m in CONVERSATIONS[1]]
    assert loaded.apply_chat_template(payload, tokenize=False, add_generation_prompt=True) == render_prompt(
        "tokenizer", CONVERSATIONS[1], harness_tok
    )
    again = load_tokenizer(f"hf:{tmp_path}")
    assert again.encode(TEXTS[7]) == harness_tok.encode(TEXTS[7])
    assert (again.bos_id, again.eos_id, again.pad_id, again.eot_ids) == (
        harness_tok.bos_id, harness_tok.eos_id, harness_tok.pad_id, harness_tok.eot_ids)
    assert again.chat_template == harness_tok.chat_template


def test_tiny_tokenizer_round_trip(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = tiny_tokenizer()
    tok.save(tmp_path)
    loaded = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert load_tokenizer(tmp_path).encode("Hello </s> 42") == tok.encode("Hello </s> 42")
    assert loaded.encode("Hello </s> 42", add_special_tokens=False) == tok.encode("Hello </s> 42")
    assert tok.decode(tok.encode(TEXTS[2])) == TEXTS[2]
    assert tok.eot_ids == (tok.eos_id, tok.token_id("<|im_end|>"))


def test_gguf_spec_forms_and_errors(tmp_path):
    path = smollm2_gguf_path()
    assert load_tokenizer(f"gguf:{path}") is load_tokenizer(str(path))
    with pytest.raises(ConfigError, match="tokenizer spec"):
        load_tokenizer("no-such-model")
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(CheckpointError, match="bad.gguf"):
        load_tokenizer(f"gguf:{tmp_path / 'bad.gguf'}")
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        load_tokenizer(f"hf:{tmp_path}")
