"""KV-cache generation: batching invariance, sampling, stopping, and parity with transformers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harness.errors import ConfigError
from harness.model.generate import batch_bucket, generate, prompt_bucket, stop_cut
from harness.model.loading import init_model

NEW_TOKENS = 12


@pytest.fixture(scope="module")
def tiny():
    return init_model("tiny", seed=1)


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(0)
    # Mixed lengths over two prompt buckets (16 and 24; few buckets = few compiles), one of a
    # single token.
    return [rng.integers(0, 512, n).tolist() for n in (3, 20, 9, 24, 1, 12)]


def reference_greedy(model, prompt: list[int], steps: int, width: int = 64) -> list[int]:
    """Greedy decoding by re-running the full, cache-free forward on the growing sequence.

    The sequence is right-padded to ``width`` (causal attention: padding after a position never
    changes its logits), so the forward compiles once.
    """
    forward = jax.jit(lambda tokens: model(tokens))
    tokens = list(prompt)
    for _ in range(steps):
        padded = np.zeros((1, width), np.int32)
        padded[0, : len(tokens)] = tokens
        logits = forward(jnp.asarray(padded))
        tokens.append(int(jnp.argmax(logits[0, len(tokens) - 1])))
    return tokens[len(prompt):]


class PieceTokenizer:
    """Decodes id ``i`` to ``[i]``: unambiguous text for stop-string tests."""

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(f"[{int(i)}]" for i in ids)


def test_batched_mixed_lengths_equal_one_by_one_and_the_cache_free_forward(tiny, prompts):
    batched = generate(tiny, prompts, NEW_TOKENS)
    alone = [generate(tiny, [p], NEW_TOKENS)[0] for p in prompts]
    assert batched == alone
    assert all(len(row) == NEW_TOKENS for row in batched)
    for prompt, row in zip(prompts[:3], batched[:3]):
        assert row == reference_greedy(tiny, prompt, NEW_TOKENS)


def test_results_come_back_in_input_order_whatever_the_batch_size(tiny, prompts):
    full = generate(tiny, prompts, NEW_TOKENS)
    for batch_size in (1, 2, 4):
        assert generate(tiny, prompts, NEW_TOKENS, batch_size=batch_size) == full
    reversed_out = generate(tiny, prompts[::-1], NEW_TOKENS, batch_size=4)
    assert reversed_out == full[::-1]


def test_decoding_in_host_driven_chunks_equals_one_on_device_loop(tiny, prompts):
    one_loop = generate(tiny, prompts, NEW_TOKENS)
    assert generate(tiny, prompts, NEW_TOKENS, chunk_size=1) == one_loop
    assert generate(tiny, prompts, NEW_TOKENS, chunk_size=5) == one_loop


def test_seeded_sampling_is_reproducible_and_independent_of_batching(tiny, prompts):
    kwargs = dict(temperature=0.9, top_p=0.95, seed=7)
    full = generate(tiny, prompts, NEW_TOKENS, **kwargs)
    assert generate(tiny, prompts, NEW_TOKENS, **kwargs) == full
    assert generate(tiny, prompts, NEW_TOKENS, batch_size=1, **kwargs) == full
    assert generate(tiny, prompts, NEW_TOKENS, batch_size=4, chunk_size=3, **kwargs) == full
    other_seed = generate(tiny, prompts, NEW_TOKENS, **{**kwargs, "seed": 8})
    assert other_seed != full
    # Sampling at this temperature differs from greedy somewhere.
    assert full != generate(tiny, prompts, NEW_TOKENS)


def test_identical_prompts_get_independent_samples(tiny):
    same = [[5, 6, 7]] * 4
    out = generate(tiny, same, 8, temperature=1.0, seed=0)
    assert len({tuple(row) for row in out}) > 1


def test_tiny_top_p_is_greedy(tiny, prompts):
    assert generate(tiny, prompts, NEW_TOKENS, temperature=1.0, top_p=1e-6, seed=3) == generate(
        tiny, prompts, NEW_TOKENS
    )


def test_first_token_samples_follow_the_tempered_nucleus(tiny):
    """Many samples of one prompt's first token: inside the top-p set, with its frequencies."""
    prompt = [11, 22, 33]
    temperature, top_p = 0.05, 0.8
    logits = np.asarray(tiny(jnp.asarray([prompt]))[0, -1], np.float64) / temperature
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    mass_before = np.cumsum(probs[order]) - probs[order]
    nucleus = order[mass_before < top_p]
    expected = np.zeros_like(probs)
    expected[nucleus] = probs[nucleus] / probs[nucleus].sum()
    draws = 512
    out = generate(tiny, [prompt] * draws, 1, temperature=temperature, top_p=top_p, seed=0, batch_size=512)
    first = np.array([row[0] for row in out])
    assert set(first.tolist()) <= set(nucleus.tolist())
    observed = np.bincount(first, minlength=probs.size) / draws
    # Total variation distance of 512 draws from the target: well under 0.15 unless biased.
    assert 0.5 * np.abs(observed - expected).sum() < 0.15


def test_eos_ends_a_row_without_touching_its_batch_mates(tiny, prompts):
    greedy = generate(tiny, prompts, NEW_TOKENS)
    eos = greedy[1][4]
    out = generate(tiny, prompts, NEW_TOKENS, eos_ids=[eos])
    for row_greedy, row in zip(greedy, out):
        expected = row_greedy[: row_greedy.index(eos)] if eos in row_greedy else row_greedy
        assert row == expected  # the EOS id itself is not returned
    assert len(out[1]) <= 4


def test_max_new_tokens_is_exact(tiny, prompts):
    for n in (1, 2, 7):
        out = generate(tiny, prompts, n)
        assert [len(row) for row in out] == [n] * len(prompts)
        assert out == [row[:n] for row in generate(tiny, prompts, NEW_TOKENS)]
    assert generate(tiny, prompts, 0) == [[] for _ in prompts]


def test_stop_strings_cut_before_the_stop_and_leave_other_rows_alone(tiny, prompts):
    greedy = generate(tiny, prompts, NEW_TOKENS)
    row = greedy[0]
    stop = f"[{row[5]}][{row[6]}]"
    tokenizer = PieceTokenizer()
    out = generate(tiny, prompts, NEW_TOKENS, stop_strings=[stop], tokenizer=tokenizer, chunk_size=3)
    for greedy_row, got in zip(greedy, out):
        text = tokenizer.decode(greedy_row)
        if stop in text:
            assert got == greedy_row[: text[: text.index(stop)].count("[")]
        else:
            assert got == greedy_row
    assert len(out[0]) <= 5


def test_stop_cut_drops_a_token_that_straddles_the_stop_start():
    class Pieces:
        pieces = {0: "Hello", 1: " wor", 2: "ld\n\nUs", 3: "er:", 4: "!"}

        def decode(self, ids, skip_special_tokens=False):
            return "".join(self.pieces[i] for i in ids)

    tok = Pieces()
    assert stop_cut([0, 1, 2, 3, 4], ["\nUser:"], tok) == 2  # "Hello world\n" would need half of token 2
    assert stop_cut([0, 1, 2, 3], ["Hello"], tok) == 0
    assert stop_cut([0, 1, 4], ["User"], tok) is None
    assert stop_cut([0, 1, 2, 3], ["er:", " wor"], tok) == 1  # the earliest stop wins


def test_sharded_model_generates_the_same_tokens(tiny, prompts):
    from harness.model.sharding import make_mesh, shard_model

    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (virtual) devices from tests/conftest.py")
    mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    sharded = shard_model(init_model("tiny", seed=1), mesh)
    assert len(sharded.layers.wq[...].sharding.device_set) == 8
    assert generate(sharded, prompts, NEW_TOKENS) == generate(tiny, prompts, NEW_TOKENS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompts": [[]]}, "prompt 0 is empty"),
        ({"prompts": [[1], [600]]}, "prompt 1: token id 600"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"stop_strings": ["x"]}, "need a tokenizer"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_new_tokens": 600}, "max_seq_len=512"),
    ],
)
def test_bad_arguments_raise_config_errors(tiny, kwargs, message):
    args = {"prompts": [[1, 2, 3]], "max_new_tokens": 4, **kwargs}
    with pytest.raises(ConfigError, match=message):
        generate(tiny, args.pop("prompts"), args.pop("max_new_tokens"), **args)


def test_buckets_are_monotone_and_bounded():
    previous = 0
    for length in range(1, 700):
        bucket = prompt_bucket(length)
        assert length <= bucket <= max(16, int(length * 1.5))
        assert bucket >= previous
        previous = bucket
    assert [batch_bucket(r, 16) for r in (1, 2, 3, 5, 9, 16, 40)] == [1, 2, 4, 8, 16, 16, 16]
    assert batch_bucket(11, 12) == 12
    assert batch_bucket(6, 4) == 4


# -- the embedded real model --------------------------------------------------------------------
SMOLLM_QUESTIONS = (
    "What is the capital of France?",
    "Write one short sentence about the sea and the wind.",
    "List three prime numbers and explain briefly why each of them is prime.",
)


@pytest.fixture(scope="module")
def smollm():
    from harness.model.loading import load_model

    model, tokenizer = load_model("smollm2-135m")
    return model, tokenizer


def chat_ids(tokenizer, question: str) -> list[int]:
    from harness.data.records import Message
    from harness.data.templates import render_prompt

    return tokenizer.encode(render_prompt("tokenizer", [Message("user", question)], tokenizer))


@pytest.mark.slow
def test_smollm2_greedy_32_tokens_match_transformers_generate(smollm):
    """Batched harness decoding of three chat prompts equals transformers' greedy generate of each."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from harness.model.assets import smollm2_gguf_path

    model, tokenizer = smollm
    prompts = [chat_ids(tokenizer, q) for q in SMOLLM_QUESTIONS]
    assert len({len(p) for p in prompts}) == 3
    ours = generate(model, prompts, 32)

    path = smollm2_gguf_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    hf.eval()
    for prompt, row in zip(prompts, ours):
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              do_sample=False, max_new_tokens=32, eos_token_id=None, pad_token_id=0)
        theirs = out[0, len(prompt):].tolist()
        assert len(theirs) == 32
        assert row == theirs


def test_smollm2_chat_reply_stops_at_end_of_turn(smollm):
    model, tokenizer = smollm
    prompt = chat_ids(tokenizer, SMOLLM_QUESTIONS[0])
    full = generate(model, [prompt], 24)[0]
    stopped = generate(model, [prompt], 24, eos_ids=tokenizer.eot_ids)[0]
    end = min(full.index(e) for e in tokenizer.eot_ids if e in full)
    assert stopped == full[:end]
    assert "Paris" in tokenizer.decode(stopped)
    cut = generate(model, [prompt], 24, stop_strings=["Paris"], tokenizer=tokenizer)[0]
    assert "Paris" not in tokenizer.decode(cut)
    assert cut == full[: len(cut)] and len(cut) < len(stopped)


# -- the command line ---------------------------------------------------------------------------
def test_cli_prints_a_chat_reply_from_the_embedded_model(capsys):
    from harness.cli import main

    main(["generate", "--prompt", SMOLLM_QUESTIONS[0], "--max-new-tokens", "16"])
    assert "Paris" in capsys.readouterr().out


def test_cli_model_without_tokenizer_is_a_user_error(capsys):
    from harness.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--model", "tiny", "--prompt", "hi"])
    assert exit_info.value.code == 2
    assert "has no tokenizer" in capsys.readouterr().err
