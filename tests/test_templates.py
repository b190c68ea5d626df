"""Templates and the offset-based loss mask: exactness (hypothesis), policies, prompts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.data.masking import TokenizeCounts, encode_example, mask_from_spans, tokenize_example
from harness.data.options import DataConfig
from harness.data.records import Example, Message
from harness.data.templates import (
    SURVEY_SYSTEM,
    TEMPLATE_NAMES,
    Identity,
    get_template,
    render_conversation,
    render_prompt,
    special_strings,
)
from harness.errors import ConfigError, DataError
from harness.model.tokenizer import TINY_SPECIAL_TOKENS, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def trained_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True in a mask as (start, end) token indices."""
    runs, start = [], None
    for i, value in enumerate([*mask.tolist(), False]):
        if value and start is None:
            start = i
        elif not value and start is not None:
            runs.append((start, i))
            start = None
    return runs


def expected_trained(template_name, tok, content: str) -> str:
    """What one trained turn must decode to: the template's lead + content + end-of-turn text."""
    template = get_template(template_name, tok)
    if template_name == "tokenizer":
        return content + "<|im_end|>"
    return template.trained_text(content, special_strings(tok))


# Content: any unicode text except the special-token strings (which the tokenizer matches whole).
content_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=40
).filter(lambda s: not any(t in s for t in TINY_SPECIAL_TOKENS))
letters_first = st.tuples(st.sampled_from("abcXYZéж日"), content_text).map("".join)
conversation = st.lists(st.tuples(content_text, letters_first), min_size=1, max_size=3)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=conversation, system=st.none() | content_text)
def test_mask_decodes_to_exactly_the_assistant_contents(name, tok, turns, system):
    messages = [Message("system", system)] if system is not None else []
    for user, assistant in turns:
        messages += [Message("user", user), Message("assistant", assistant)]
    example = Example("x", "test", tuple(messages))
    tokenized = tokenize_example(example, name, tok)
    rendered = render_conversation(name, messages, tok)
    # One tokenization of the whole rendered string: the ids are exactly that string's.
    assert tokenized.input_ids.tolist() == tok.encode(rendered.text)
    assert tokenized.boundary_merges == 0
    runs = trained_runs(tokenized.loss_mask)
    assert len(runs) == len(turns)
    for (start, end), (_, assistant) in zip(runs, turns):
        assert tok.decode(tokenized.input_ids[start:end]) == expected_trained(name, tok, assistant)
    # The untrained tokens decode to everything else.
    assert tok.decode(tokenized.input_ids) == rendered.text


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=st.lists(st.tuples(content_text, content_text), min_size=1, max_size=3))
def test_any_content_is_covered_and_merges_are_counted(name, tok, turns):
    """Content starting with anything: every trained turn's text lies inside its trained tokens."""
    messages = [m for u, a in turns for m in (Message("user", u), Message("assistant", a))]
    tokenized = tokenize_example(Example("x", "t", tuple(messages)), name, tok)
    runs = trained_runs(tokenized.loss_mask)
    assert len(runs) == len(turns)
    merged = 0
    for (start, end), (_, assistant) in zip(runs, turns):
        decoded = tok.decode(tokenized.input_ids[start:end])
        expected = expected_trained(name, tok, assistant)
        assert expected in decoded
        merged += decoded != expected
    assert (tokenized.boundary_merges > 0) == (merged > 0)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_render_prompt_is_the_text_before_the_last_trained_span(name, tok):
    messages = [Message("user", "Name a fruit."), Message("assistant", "Apples."),
                Message("user", "Another?"), Message("assistant", "Pears.")]
    rendered = render_conversation(name, messages, tok)
    prompt = render_prompt(name, messages[:3], tok)
    assert rendered.text.startswith(prompt)
    assert rendered.spans[-1][0] == len(prompt)


def test_survey_prompt_is_verbatim(tok):
    messages = [Message("user", "What is 2+2?"), Message("assistant", "4")]
    rendered = render_conversation("survey", messages, tok)
    assert rendered.text == SURVEY_SYSTEM + "\n[|Human|]:What is 2+2?\n[|AI|]:4</s>"
    assert render_prompt("survey", messages[:1], tok) == (
        "The following is a conversation between a human and an AI assistant. The AI assistant gives "
        "helpful, detailed, and polite answers to the user's questions.\n[|Human|]:What is 2+2?\n[|AI|]:"
    )


def test_identity_prefix(tok):
    messages = [Message("user", "Who are you?")]
    prompt = render_prompt("survey", messages, tok, identity=Identity("Harnessy", "the Lab"))
    assert prompt.startswith(
        "The following is a conversation between a human and an AI assistant called Harnessy, developed by "
        "the Lab. The AI assistant gives"
    )
    chatml = render_prompt("chatml", messages, tok, identity=Identity("Harnessy", "the Lab"))
    assert chatml.startswith("<|im_start|>system\nThe following is a conversation between a human and an AI "
                             "assistant called Harnessy, developed by the Lab.<|im_end|>\n")
    jinja = render_prompt("tokenizer", messages, tok, identity=Identity("Harnessy", "the Lab"))
    assert jinja == chatml


def test_vicuna_matches_fastchat_layout(tok):
    messages = [Message("system", "SYS"), Message("user", "hi"), Message("assistant", "hello"),
                Message("user", "q2")]
    assert render_prompt("vicuna_v1.1", messages, tok) == "SYS USER: hi ASSISTANT: hello</s>USER: q2 ASSISTANT:"
    llama2 = render_prompt("llama2_chat", messages, tok)
    assert llama2 == "<s>[INST] <<SYS>>\nSYS\n<</SYS>>\n\nhi [/INST] hello </s><s>[INST] q2 [/INST]"


def conversation_example(n_turns: int, words: int = 30) -> Example:
    messages = []
    for i in range(n_turns):
        messages += [Message("user", f"question {i} " + "word " * words),
                     Message("assistant", f"answer {i} " + "reply " * words)]
    return Example("conv", "test", tuple(messages))


def test_demonstrations_are_context_only(tok):
    demo = Example("d", "t", (Message("user", "2+2?"), Message("assistant", "4")))
    example = Example("e", "t", (Message("user", "3+3?"), Message("assistant", "6")))
    config = DataConfig(template="chatml")
    (tokenized,) = encode_example(example, "chatml", tok, config, demonstrations=[demo])
    text = tok.decode(tokenized.input_ids)
    assert "2+2?" in text and text.index("2+2?") < text.index("3+3?")
    assert tok.decode(tokenized.input_ids[tokenized.loss_mask]) == "6<|im_end|>"


def test_split_mode_trains_only_the_last_response(tok):
    example = conversation_example(3, words=2)
    counts = TokenizeCounts()
    outputs = encode_example(example, "survey", tok, DataConfig(multiturn="split"), counts=counts)
    assert len(outputs) == 3 and counts.produced == 3
    for i, out in enumerate(outputs):
        trained = tok.decode(out.input_ids[out.loss_mask])
        assert trained == f"answer {i} reply reply </s>"
        assert f"answer {i}" in tok.decode(out.input_ids)  # context includes earlier answers
    assert [o.id for o in outputs] == ["conv#0", "conv#1", "conv#2"]


def test_too_long_policies_are_counted(tok):
    example = conversation_example(4)
    full = tokenize_example(example, "survey", tok)
    limit = len(full) // 2
    for policy in ("truncate", "drop", "split"):
        counts = TokenizeCounts()
        config = DataConfig(max_length=limit, too_long=policy)
        outputs = encode_example(example, "survey", tok, config, counts=counts)
        assert all(len(o) <= limit for o in outputs)
        if policy == "truncate":
            assert counts.truncated == 1 and len(outputs) == 1
            assert outputs[0].input_ids.tolist() == full.input_ids[:limit].tolist()
        elif policy == "drop":
            assert counts.dropped_too_long == 1 and outputs == []
        else:
            assert len(outputs) >= 2 and counts.split_parts == len(outputs) - 1
            trained = "".join(tok.decode(o.input_ids[o.loss_mask]) for o in outputs)
            assert trained == "".join(f"answer {i} " + "reply " * 30 + "</s>" for i in range(4))
            for out in outputs:  # every chunk starts with the system prompt
                assert tok.decode(out.input_ids).startswith(SURVEY_SYSTEM)


def test_split_context_drops_oldest_turns(tok):
    example = conversation_example(4)
    limit = len(tokenize_example(example, "survey", tok)) // 2
    counts = TokenizeCounts()
    outputs = encode_example(example, "survey", tok,
                             DataConfig(max_length=limit, multiturn="split", too_long="split"), counts=counts)
    assert len(outputs) == 4 and counts.truncated == 0
    last = tok.decode(outputs[-1].input_ids)
    assert "question 3" in last and "question 0" not in last


def test_no_trainable_token_is_dropped_and_counted(tok):
    example = Example("u", "t", (Message("user", "only a question"),))
    counts = TokenizeCounts()
    assert encode_example(example, "survey", tok, DataConfig(), counts=counts) == []
    assert counts.dropped_no_trainable == 1
    long_prompt = Example("p", "t", (Message("user", "word " * 200), Message("assistant", "ok")))
    counts = TokenizeCounts()
    assert encode_example(long_prompt, "survey", tok, DataConfig(max_length=32), counts=counts) == []
    assert counts.truncated == 1 and counts.dropped_no_trainable == 1


def test_mask_from_spans_overlap_rule():
    offsets = [(0, 2), (2, 5), (5, 5), (5, 8), (8, 9)]
    mask, merges = mask_from_spans(offsets, [(3, 8)])
    assert mask.tolist() == [False, True, True, True, False]
    assert merges == 1  # token (2, 5) starts before the span


def test_bad_inputs(tok):
    with pytest.raises(ConfigError, match="unknown template"):
        get_template("nope")
    with pytest.raises(DataError, match="system message"):
        render_conversation("chatml", [Message("user", "a"), Message("system", "b")], tok)
    with pytest.raises(DataError, match="already ends"):
        render_prompt("chatml", [Message("user", "a"), Message("assistant", "b")], tok)
    with pytest.raises(ValueError, match="identity_name and identity_org"):
        DataConfig(identity_name="X")
    from dataclasses import replace

    no_template = replace(tok)
    no_template.chat_template = None
    with pytest.raises(ConfigError, match="no chat_template"):
        get_template("tokenizer", no_template)


def test_inspect_json_lines(tok, tmp_path):
    import io
    import json

    from harness.data.inspect_cmd import inspect

    data = tmp_path / "si.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {w}", "input": "", "output": w}) + "\n"
                            for w in ("hello", "world", "again")))
    tok.save(tmp_path / "tok")
    out = io.StringIO()
    records = inspect(f"self_instruct:{data}", "survey", str(tmp_path / "tok"), n=2, json=True, out=out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines == records and len(lines) == 2
    assert lines[0]["trained_text"] == "hello</s>" and lines[1]["trained_text"] == "world</s>"
    assert set(lines[0]) >= {"id", "source", "text", "input_ids", "loss_mask", "trained_text"}
    assert tok.decode(lines[0]["input_ids"]) == lines[0]["text"]
    pretty = io.StringIO()
    inspect(f"self_instruct:{data}", "chatml", str(tmp_path / "tok"), n=1, out=pretty)
    assert "tokens" in pretty.getvalue() and "trained" in pretty.getvalue()
