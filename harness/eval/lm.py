"""The scoring and generation primitives every benchmark uses, over a harness model.

``EvalLM(model, tokenizer)`` offers:

- ``next_token_logprobs(prompts)``: log-softmax of the next-token distribution after each prompt;
- ``loglikelihood(requests)``: log P(continuation | context) summed over the continuation's
  tokens, and whether greedy decoding would produce it (lm-eval's ``loglikelihood``);
- ``generate(prompts, ...)``: decoded continuations through ``harness.model.generate.generate``.

Batches are length-sorted (longest first, so a shape that runs out of memory fails at once) and
padded on the right to a multiple of ``pad_multiple`` tokens with a fixed batch size, so a whole
benchmark compiles a handful of shapes. Right padding is exact for a causal model: real tokens
never attend to the padding after them. Only the positions that are scored go through the LM
head, which keeps the [B, L, vocab] logits tensor out of memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def _bucket(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def _gather_logprobs(model, tokens, positions):
    """log-softmax over the vocabulary at ``positions`` [B, K] of each row: [B, K, V]."""
    if hasattr(model, "hidden_states") and hasattr(model, "logits_from_hidden"):
        hidden, _ = model.hidden_states(tokens)
        picked = jnp.take_along_axis(hidden, positions[..., None], axis=1)
        logits = model.logits_from_hidden(picked)
    else:  # any model honouring the contract model(tokens) -> logits
        logits = jnp.take_along_axis(model(tokens), positions[..., None], axis=1)
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


@nnx.jit
def _last_logprobs(model, tokens, last):
    return _gather_logprobs(model, tokens, last[:, None])[:, 0, :]


@nnx.jit
def _target_logprobs(model, tokens, positions, targets):
    logprobs = _gather_logprobs(model, tokens, positions)
    chosen = jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]
    greedy = jnp.argmax(logprobs, axis=-1) == targets
    return chosen, greedy


@dataclass
class EvalLM:
    """A harness model and its tokenizer, wrapped for scoring and generation."""

    model: object
    tokenizer: object
    batch_size: int = 8
    pad_multiple: int = 64
    max_length: int | None = None
    progress: Callable[[Iterable, str, int], Iterable] | None = None
    batches_per_call: int = 8
    truncated: int = field(default=0, init=False)
    generated_tokens: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.max_length is None:
            self.max_length = int(getattr(getattr(self.model, "config", None), "max_seq_len", 2048))

    # -- helpers -------------------------------------------------------------------------------
    def _batches(self, lengths: Sequence[int], desc: str):
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        chunks = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.progress is not None:
            return self.progress(chunks, desc, len(chunks))
        return chunks

    def _fit(self, ids: list[int], keep: int) -> list[int]:
        """Left-truncate ``ids`` to the model's length, keeping at least its last ``keep`` tokens."""
        if len(ids) <= self.max_length:
            return ids
        self.truncated += 1
        return ids[-max(self.max_length, keep):]

    def _pad(self, rows: list[list[int]]) -> np.ndarray:
        width = min(_bucket(max(len(r) for r in rows), self.pad_multiple), _bucket(self.max_length, 1))
        width = max(width, max(len(r) for r in rows))
        pad = self.tokenizer.pad_id if self.tokenizer is not None else 0
        out = np.full((self.batch_size, width), pad, dtype=np.int32)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    # -- scoring -------------------------------------------------------------------------------
    def next_token_logprobs(self, prompts: list[list[int]], desc: str = "scoring") -> np.ndarray:
        """[N, V] log-probabilities of the token following each prompt."""
        prompts = [self._fit(p, 1) for p in prompts]
        out: np.ndarray | None = None
        for chunk in self._batches([len(p) for p in prompts], desc):
            rows = [prompts[i] for i in chunk]
            tokens = self._pad(rows)
            last = np.zeros((self.batch_size,), np.int32)
            last[: len(rows)] = [len(r) - 1 for r in rows]
            logprobs = np.asarray(_last_logprobs(self.model, jnp.asarray(tokens), jnp.asarray(last)))
            if out is None:
                out = np.zeros((len(prompts), logprobs.shape[-1]), np.float32)
            out[chunk] = logprobs[: len(rows)]
        return out if out is not None else np.zeros((0, 0), np.float32)

    def loglikelihood(self, requests: list[tuple[list[int], list[int]]],
                      desc: str = "log-likelihood") -> list[tuple[float, bool]]:
        """(sum of log P(continuation tokens), greedy?) for (context ids, continuation ids) pairs."""
        rows, spans = [], []
        for context, continuation in requests:
            if not continuation:
                raise ValueError("loglikelihood: empty continuation")
            if not context:  # score the first token from the BOS (or, without one, the pad) token
                bos = getattr(self.tokenizer, "bos_id", None)
                context = [bos if bos is not None else self.tokenizer.pad_id]
            ids = self._fit(list(context) + list(continuation), len(continuation) + 1)
            rows.append(ids)
            spans.append(len(continuation))
        results: list[tuple[float, bool] | None] = [None] * len(rows)
        for chunk in self._batches([len(r) for r in rows], desc):
            batch_rows = [rows[i] for i in chunk]
            tokens = self._pad(batch_rows)
            k = _bucket(max(spans[i] for i in chunk), 8)
            positions = np.zeros((self.batch_size, k), np.int32)
            targets = np.zeros((self.batch_size, k), np.int32)
            for j, i in enumerate(chunk):
                n, total = spans[i], len(rows[i])
                positions[j, :n] = np.arange(total - n - 1, total - 1)
                targets[j, :n] = rows[i][total - n:]
            chosen, greedy = _target_logprobs(self.model, jnp.asarray(tokens), jnp.asarray(positions),
                                              jnp.asarray(targets))
            chosen, greedy = np.asarray(chosen), np.asarray(greedy)
            for j, i in enumerate(chunk):
                n = spans[i]
                results[i] = (float(chosen[j, :n].sum()), bool(greedy[j, :n].all()))
        return results  # type: ignore[return-value]

    def rolling_loglikelihood(self, documents: list[list[int]]) -> list[float]:
        """Total log-likelihood of each token sequence (first token scored after BOS/pad).

        Long sequences are scored in windows of half the model's length, each conditioned on
        the tokens before it up to the model's length, so every token is scored exactly once.
        """
        step = max(1, self.max_length // 2)
        requests, owners = [], []
        for index, ids in enumerate(documents):
            for start in range(0, len(ids), step):
                target = ids[start:start + step]
                context = ids[max(0, start - (self.max_length - len(target))):start]
                requests.append((context, target))
                owners.append(index)
        totals = [0.0] * len(documents)
        for owner, (logprob, _) in zip(owners, self.loglikelihood(requests, desc="rolling")):
            totals[owner] += logprob
        return totals

    # -- generation ----------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], max_new_tokens: int, *, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, stop_strings: Sequence[str] = (),
                 desc: str = "generating") -> list[tuple[str, bool]]:
        """(decoded continuation cut at the first stop string, finished?) for each prompt.

        ``finished`` is False when the continuation ran into ``max_new_tokens`` without an
        end-of-turn token or a stop string. The sampling seed of the i-th call of
        ``batch_size * batches_per_call`` prompts (longest first) is ``seed + i``.
        """
        from harness.model.generate import generate

        tok = self.tokenizer
        eos_ids = tuple(dict.fromkeys([*getattr(tok, "eot_ids", ()), *([tok.eos_id] if tok.eos_id is not None else [])]))
        room = max(1, self.max_length - max_new_tokens)
        prompts = [self._fit(p, 1)[-room:] for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        # Calls of several batches each: few compiled shapes, and a progress bar that moves.
        group = self.batch_size * self.batches_per_call
        calls = [order[i:i + group] for i in range(0, len(order), group)]
        if self.progress is not None:
            calls = self.progress(calls, desc, len(calls))
        outputs: list[tuple[str, bool] | None] = [None] * len(prompts)
        for call_number, chunk in enumerate(calls):
            new_tokens = generate(
                self.model, [prompts[i] for i in chunk], max_new_tokens, temperature=temperature,
                top_p=top_p, seed=seed + call_number, eos_ids=eos_ids, stop_strings=tuple(stop_strings),
                tokenizer=tok, batch_size=self.batch_size,
            )
            for i, ids in zip(chunk, new_tokens):
                text = tok.decode(ids, skip_special_tokens=True)
                cut = _cut_at_stop(text, stop_strings)
                outputs[i] = (cut, len(ids) < max_new_tokens or cut != text)
                self.generated_tokens += len(ids)
        return outputs  # type: ignore[return-value]


def _cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """``text`` up to the earliest stop string (exclusive)."""
    cut = len(text)
    for stop in stop_strings:
        index = text.find(stop)
        if 0 <= index < cut:
            cut = index
    return text[:cut]
