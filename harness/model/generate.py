"""KV-cache generation: batched, left-padded prompts, greedy or temperature/top-p sampling.

``generate(model, prompts, max_new_tokens, ...)`` returns the new tokens of every prompt, in the
input order. How it runs:

* Prompts are sorted by length (longest first) and cut into batches of ``batch_size`` rows. A
  batch is left-padded to a bucketed length (16, 24, 32, 48, 64, 96, ...) and every batch of a
  call to the same row count, so a long list of prompts compiles only a handful of programs. Padding tokens
  have segment id 0 and real tokens positions counted from each row's first real token, so the
  model's mask (same non-zero segment, key position <= query position) keeps every row blind to
  its padding and to its batch-mates: a batch gives what each prompt gives alone.
* Prefill (one jitted call) writes the prompt's keys and values into a preallocated cache sized
  for the whole call and samples the first new token from the last position's logits only.
* Decoding is one jitted ``jax.lax.while_loop`` over single-token steps that leaves as soon as
  every row is done (EOS) or ``max_new_tokens`` is reached; its carry (cache included) is donated,
  so the cache is updated in place. With stop strings the loop runs in chunks of ``chunk_size``
  steps and the host decodes the text between chunks to find them.
* Sampling draws row ``i``'s token ``t`` with ``fold_in(fold_in(PRNGKey(seed), i), t)``, where
  ``i`` is the prompt's index in the input list: a row's sample never depends on its batch-mates,
  on the batch size or on the order of the batches.

The model is split once per call (``nnx.split``) and the jitted functions are pure functions of
its state, cached on the graph definition and the static shapes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from harness.errors import ConfigError

DEFAULT_BATCH_SIZE = 16
DEFAULT_CHUNK_SIZE = 32  # decode steps between host-side stop-string checks
MIN_PROMPT_BUCKET = 16
CACHE_ALIGN = 64  # cache lengths are rounded up to this, to share compiled decode loops
OUTPUT_ALIGN = 32  # the output buffer's width is max_new_tokens rounded up to this
EOS_SLOTS = 8  # EOS ids travel as an array of at least this many entries (padded), not as constants
_FILLER = -1  # written into the output buffer after a row is done
_NO_TOKEN = -2  # pads the EOS array


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy (temperature 0) or temperature/top-p sampling."""

    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0 and math.isfinite(self.temperature)):
            raise ConfigError(f"temperature={self.temperature}: expected a finite number >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p={self.top_p}: expected 0 < top_p <= 1")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def prompt_bucket(length: int) -> int:
    """Padded prompt length: the smallest of 16, 24, 32, 48, 64, 96, ... that holds ``length``."""
    bucket = MIN_PROMPT_BUCKET
    while bucket < length:
        is_power_of_two = bucket & (bucket - 1) == 0
        bucket = bucket * 3 // 2 if is_power_of_two else bucket * 4 // 3
    return bucket


def batch_bucket(rows: int, batch_size: int) -> int:
    """Rows of every compiled batch: ``rows`` (capped at ``batch_size``) up to a power of two,
    at most ``batch_size``. Every batch of one call is padded to it, so they share programs."""
    return min(1 << max(min(rows, batch_size) - 1, 0).bit_length(), batch_size)


def generate(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_ids: Sequence[int] = (),
    stop_strings: Sequence[str] = (),
    tokenizer=None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    cache_dtype: str | None = None,
) -> list[list[int]]:
    """New tokens for every prompt (token-id lists), in the order of ``prompts``.

    Generation of a row ends at the first id in ``eos_ids`` (that id is *not* returned), after
    ``max_new_tokens`` tokens, or at the first of ``stop_strings`` found in the decoded new text
    (needs ``tokenizer``). At a stop string the output is cut to the longest prefix of tokens whose
    text ends before the stop string begins (a token that straddles the start is dropped too).
    ``temperature=0`` is greedy; otherwise tokens are sampled from ``softmax(logits /
    temperature)`` restricted to the smallest set of tokens whose probability reaches ``top_p``.
    ``batch_size`` rows are decoded together (default ``min(len(prompts), 16)``);
    ``chunk_size`` is the number of decode steps between stop-string checks (default 32; without
    stop strings the whole generation is one on-device loop unless ``chunk_size`` is given).
    ``cache_dtype`` defaults to the model's compute dtype.
    """
    sampling = Sampling(float(temperature), float(top_p))
    prompts = [_check_prompt(p, i, model.config.vocab_size) for i, p in enumerate(prompts)]
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens={max_new_tokens!r}: expected an integer >= 0")
    stop_strings = tuple(stop_strings)
    if any(not isinstance(s, str) or not s for s in stop_strings):
        raise ConfigError(f"stop_strings={stop_strings!r}: expected non-empty strings")
    if stop_strings and tokenizer is None:
        raise ConfigError("stop_strings need a tokenizer to decode the generated text")
    eos = sorted({int(e) for e in eos_ids})
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise ConfigError(f"batch_size={batch_size!r}: expected an integer >= 1")
    if chunk_size is not None and (not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1):
        raise ConfigError(f"chunk_size={chunk_size!r}: expected an integer >= 1")
    if not prompts or max_new_tokens == 0:
        return [[] for _ in prompts]

    longest = max(len(p) for p in prompts)
    limit = model.config.max_seq_len
    if longest + max_new_tokens > limit:
        raise ConfigError(
            f"the longest prompt ({longest} tokens) plus max_new_tokens={max_new_tokens} exceeds the "
            f"model's max_seq_len={limit}; shorten the prompt or lower max_new_tokens"
        )
    batch_size = int(batch_size or min(len(prompts), DEFAULT_BATCH_SIZE))
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK_SIZE if stop_strings else max_new_tokens
    # One cache length for the whole call, so every batch shares one compiled decode loop.
    cache_len = -(-(prompt_bucket(longest) + max_new_tokens) // CACHE_ALIGN) * CACHE_ALIGN
    graphdef, state = nnx.split(model)
    cache_dtype = str(jnp.dtype(cache_dtype or model.config.compute_dtype))
    out_width = -(-max_new_tokens // OUTPUT_ALIGN) * OUTPUT_ALIGN
    plan = _Plan(graphdef, sampling.greedy, sampling.top_p < 1.0, cache_len, cache_dtype, out_width,
                 batch_bucket(len(prompts), batch_size))
    eos_array = np.full((max(EOS_SLOTS, len(eos)),), _NO_TOKEN, np.int32)
    eos_array[:len(eos)] = eos

    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[list[int] | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        outputs = _generate_batch(
            plan, state, [prompts[i] for i in rows], rows, int(max_new_tokens),
            sampling, int(seed), eos_array, stop_strings, tokenizer, int(chunk_size),
        )
        for index, tokens in zip(rows, outputs):
            results[index] = tokens
    return results  # type: ignore[return-value]


def _check_prompt(prompt, index: int, vocab_size: int) -> list[int]:
    ids = [int(t) for t in prompt]
    if not ids:
        raise ConfigError(f"prompt {index} is empty: generation needs at least one token")
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise ConfigError(f"prompt {index}: token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    return ids


@dataclass(frozen=True)
class _Plan:
    """Everything static about one call's compiled programs (hashable: a jit cache key)."""

    graphdef: object
    greedy: bool
    top_p: bool
    cache_len: int
    cache_dtype: str
    out_width: int
    batch: int


def _generate_batch(plan, state, prompts, indices, max_new_tokens, sampling, seed,
                    eos, stop_strings, tokenizer, chunk_size) -> list[list[int]]:
    rows, batch = len(prompts), plan.batch
    length = prompt_bucket(max(len(p) for p in prompts))
    tokens = np.zeros((batch, length), np.int32)
    positions = np.zeros((batch, length), np.int32)
    segments = np.zeros((batch, length), np.int32)
    lengths = np.zeros((batch,), np.int32)
    for row, prompt in enumerate(prompts):
        n = len(prompt)
        tokens[row, length - n:] = prompt
        positions[row, length - n:] = np.arange(n)
        segments[row, length - n:] = 1
        lengths[row] = n
    row_ids = np.zeros((batch,), np.uint32)
    row_ids[:rows] = indices
    padding_rows = np.arange(batch) >= rows
    carry = _prefill(
        plan, state, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments),
        jnp.asarray(lengths), jnp.asarray(row_ids), jnp.asarray(padding_rows),
        jnp.asarray(eos), jnp.uint32(seed), jnp.float32(sampling.temperature),
        jnp.float32(sampling.top_p),
    )
    stopped: dict[int, int] = {}  # row -> number of tokens kept, for rows cut at a stop string
    step = 1
    while step < max_new_tokens:
        target = min(step + chunk_size, max_new_tokens)
        carry = _decode(plan, state, carry, jnp.int32(target),
                        jnp.float32(sampling.temperature), jnp.float32(sampling.top_p))
        step = int(carry["step"])
        done = np.asarray(carry["done"])
        if stop_strings:
            out = np.asarray(carry["out"])
            newly = _find_stops(out[:rows, :step], done[:rows], stop_strings, tokenizer, stopped)
            if newly:
                done = done.copy()
                done[newly] = True
                carry = {**carry, "done": jnp.asarray(done)}
        if done.all():
            break
    out = np.asarray(carry["out"])[:rows, :step]
    if stop_strings:  # the last chunk (or the prefill token alone) is not checked in the loop
        _find_stops(out, np.zeros(rows, bool), stop_strings, tokenizer, stopped)
    results = []
    for row in range(rows):
        kept = _until_end(out[row], eos)
        if row in stopped:
            kept = kept[:stopped[row]]
        results.append(kept)
    return results


def _until_end(row: np.ndarray, eos: np.ndarray) -> list[int]:
    """Tokens before the first EOS id or filler."""
    ids = row.tolist()
    ends = set(eos.tolist())
    for i, token in enumerate(ids):
        if token == _FILLER or token in ends:
            return ids[:i]
    return ids


def _find_stops(out, done, stop_strings, tokenizer, stopped: dict[int, int]) -> list[int]:
    """Rows (not yet done) whose new text contains a stop string; records how many tokens to keep."""
    newly = []
    for row in range(out.shape[0]):
        if done[row] or row in stopped:
            continue
        ids = [t for t in out[row].tolist() if t != _FILLER]
        cut = stop_cut(ids, stop_strings, tokenizer)
        if cut is not None:
            stopped[row] = cut
            newly.append(row)
    return newly


def stop_cut(ids: Sequence[int], stop_strings: Sequence[str], tokenizer) -> int | None:
    """How many of ``ids`` to keep so the text ends before the first stop string; None if none occurs.

    The kept prefix is the longest one whose decoded text neither contains a stop string nor
    reaches past the point where the first stop string begins.
    """
    text = tokenizer.decode(ids)
    starts = [text.find(s) for s in stop_strings]
    starts = [s for s in starts if s >= 0]
    if not starts:
        return None
    begin = min(starts)
    keep = len(ids)
    while keep > 0:
        prefix = tokenizer.decode(ids[:keep])
        if len(prefix) <= begin and not any(s in prefix for s in stop_strings):
            break
        keep -= 1
    return keep


# -- compiled programs ---------------------------------------------------------------------------
def _row_keys(seed, row_ids):
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(row_ids)


def _choose(plan: _Plan, logits, keys, step, temperature, top_p):
    """Next token [B] from float32 logits [B, V]; row keys [B, 2] are folded with ``step``."""
    if plan.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if plan.top_p:
        # Keep the most probable tokens until their mass reaches top_p (the top one always).
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        kept = mass_before < top_p
        threshold = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits >= threshold, logits, -jnp.inf)
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
    return jax.vmap(jax.random.categorical)(step_keys, logits).astype(jnp.int32)


def _record(plan: _Plan, carry, token):
    """Write ``token`` at the current step for rows not done yet; update ``done`` and ``step``."""
    done = carry["done"]
    token = jnp.where(done, _FILLER, token)
    out = jax.lax.dynamic_update_slice_in_dim(carry["out"], token[:, None], carry["step"], axis=1)
    finished = done | jnp.isin(token, carry["eos"])
    return {**carry, "out": out, "done": finished, "token": jnp.where(finished, 0, token),
            "step": carry["step"] + 1}


@functools.partial(jax.jit, static_argnums=(0,))
def _prefill(plan: _Plan, state, tokens, positions, segments, lengths, row_ids, padding_rows,
             eos, seed, temperature, top_p):
    model = nnx.merge(plan.graphdef, state)
    batch = tokens.shape[0]
    cache = model.init_cache(batch, plan.cache_len, dtype=plan.cache_dtype)
    hidden, cache = model.hidden_states(tokens, positions, segments, cache=cache)
    logits = model.logits_from_hidden(hidden[:, -1:, :])[:, 0, :]
    keys = _row_keys(seed, row_ids)
    carry = {
        "cache": cache,
        "keys": keys,
        "lengths": lengths,
        "done": padding_rows,
        "eos": eos,
        "out": jnp.full((batch, plan.out_width), _FILLER, jnp.int32),
        "step": jnp.zeros((), jnp.int32),
        "token": jnp.zeros((batch,), jnp.int32),
    }
    token = _choose(plan, logits, keys, carry["step"], temperature, top_p)
    return _record(plan, carry, token)


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(2,))
def _decode(plan: _Plan, state, carry, target, temperature, top_p):
    """Decode single-token steps until ``step == target`` or every row is done."""
    model = nnx.merge(plan.graphdef, state)
    ones = jnp.ones((carry["token"].shape[0], 1), jnp.int32)

    def keep_going(c):
        return (c["step"] < target) & ~jnp.all(c["done"])

    def one_step(c):
        # The token generated at step s-1 sits at position (prompt length + s - 1).
        position = (c["lengths"] + c["step"] - 1)[:, None]
        logits, cache = model(c["token"][:, None], position, ones, cache=c["cache"])
        token = _choose(plan, logits[:, 0, :], c["keys"], c["step"], temperature, top_p)
        return _record(plan, {**c, "cache": cache}, token)

    return jax.lax.while_loop(keep_going, one_step, carry)
