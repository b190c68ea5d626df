"""source -> template -> mixture -> pack -> batches: deterministic, resumable, sliced per process.

``build_batches(data_config, mixture_config, tokenizer, global_batch, ...)`` reads every source of
the mixture (``harness.data.sources.load_source``), tokenizes each once per (source, template,
tokenizer, format options) through the on-disk cache (:mod:`harness.data.token_cache`), mixes
them (``harness.data.mixture.mix``; the realised counts go into the manifest) and packs the
mixed entries, in mixture order, into rows of ``max_length`` (:mod:`harness.data.packing`).

The packing plan is made once; every epoch visits all rows in a fresh order drawn from
``(seed, epoch)``, so ``steps_per_epoch = rows // global_batch`` is the same every epoch (the
``rows % global_batch`` left over are a different handful each epoch, counted in the manifest).
The state is ``{"epoch", "step", "seed", "fingerprint"}``: restoring it rebuilds the same plan
and order, so a resumed iterator yields exactly the batches an uninterrupted one would. Process
``p`` of ``P`` receives rows ``[p * B/P, (p + 1) * B/P)`` of each global batch of ``B`` rows.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from harness.data import token_cache
from harness.data.masking import TokenizeCounts, TokenizedExample, encode_example
from harness.data.options import DataConfig
from harness.data.packing import fill_rows, packing_efficiency, plan_rows
from harness.data.records import Example
from harness.data.templates import get_template
from harness.data.token_cache import TokenizedSource
from harness.errors import ConfigError

__all__ = ["BatchIterator", "DataConfig", "build_batches", "pick_demonstrations", "tokenize_source"]


def _rng(seed: int, *salt: object) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(str(s).encode()) for s in salt)])


def pick_demonstrations(examples: Sequence[Example], k: int, key: str, seed: int) -> list[list[int]]:
    """For each example, ``k`` other examples of the same task (``meta[key]``, else the same source).

    The draw for an example depends only on the seed and its id, not on the order of the source.
    """
    if k == 0:
        return [[] for _ in examples]
    groups: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        groups.setdefault(str(example.meta.get(key, example.source)), []).append(index)
    chosen: list[list[int]] = []
    for index, example in enumerate(examples):
        others = [i for i in groups[str(example.meta.get(key, example.source))] if i != index]
        take = min(k, len(others))
        picks = _rng(seed, "demos", example.id).choice(len(others), take, replace=False) if take else []
        chosen.append([others[i] for i in picks])
    return chosen


def tokenize_source(
    name: str,
    examples: Sequence[Example],
    tokenizer,
    config: DataConfig,
    seed: int = 0,
    use_cache: bool = True,
) -> TokenizedSource:
    """All of a source's examples tokenized under ``config``, from the cache when present."""
    template = get_template(config.template, tokenizer)
    root = token_cache.default_cache_dir(config.cache_dir)
    key = token_cache.cache_key(token_cache.examples_digest(examples), config, template,
                                token_cache.tokenizer_fingerprint(tokenizer), seed)
    if use_cache:
        cached = token_cache.load(root, key, name)
        if cached is not None:
            return cached
    demos = pick_demonstrations(examples, config.num_demonstrations, config.demonstration_key, seed)
    counts = TokenizeCounts()
    ids: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    origin: list[int] = []
    for index, example in enumerate(examples):
        demonstrations = [examples[i] for i in demos[index]]
        for out in encode_example(example, template, tokenizer, config, demonstrations, counts):
            ids.append(out.input_ids)
            masks.append(out.loss_mask)
            origin.append(index)
    source = _flat(name, ids, masks, origin, counts, key)
    if use_cache:
        token_cache.save(root, source)
    return source


def _flat(name, ids, masks, origin, counts, key="") -> TokenizedSource:
    starts = np.zeros(len(ids) + 1, np.int64)
    np.cumsum([len(x) for x in ids], out=starts[1:])
    flat_ids = np.concatenate(ids).astype(np.int32) if ids else np.zeros(0, np.int32)
    flat_mask = np.concatenate(masks).astype(bool) if masks else np.zeros(0, bool)
    return TokenizedSource(name, flat_ids, flat_mask, starts, np.asarray(origin, np.int32), counts, key)


class BatchIterator:
    """Batches of packed rows over epochs; ``state()`` / ``restore()`` resume it exactly."""

    def __init__(
        self,
        sources: Sequence[TokenizedSource],
        entries: np.ndarray,
        config: DataConfig,
        global_batch: int,
        pad_id: int,
        *,
        process_index: int = 0,
        process_count: int = 1,
        seed: int = 0,
        epochs: int | None = None,
        manifest: Mapping[str, Any] | None = None,
    ):
        if global_batch < 1 or global_batch % process_count:
            raise ConfigError(f"global_batch={global_batch} must be a positive multiple of process_count={process_count}")
        if not 0 <= process_index < process_count:
            raise ConfigError(f"process_index={process_index} outside 0..{process_count - 1}")
        self.sources, self.entries, self.config = list(sources), np.asarray(entries, np.int64).reshape(-1, 2), config
        self.global_batch, self.pad_id, self.seed, self.epochs = global_batch, pad_id, seed, epochs
        self.process_index, self.process_count = process_index, process_count
        self.local_batch = global_batch // process_count
        lengths = np.array([self.sources[s].starts[i + 1] - self.sources[s].starts[i] for s, i in self.entries],
                           np.int64)
        self.rows = plan_rows(lengths.tolist(), config.max_length, config.packing, config.pack_window)
        self.steps_per_epoch = len(self.rows) // global_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"only {len(self.rows)} rows of data for a global batch of {global_batch}")
        self.efficiency = packing_efficiency(lengths, self.rows, config.max_length)
        self.tokens = int(lengths.sum())
        self.fingerprint = hashlib.sha256(
            repr((len(self.rows), self.tokens, global_batch, [s.key for s in self.sources])).encode()
        ).hexdigest()[:16]
        self._manifest = dict(manifest or {})
        self._epoch, self._step, self._order_epoch, self._order = 0, 0, -1, None

    # -- state ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The whole iterator state: small, JSON-ready, the same on every process."""
        return {"epoch": self._epoch, "step": self._step, "seed": self.seed, "fingerprint": self.fingerprint}

    def restore(self, state: Mapping[str, Any]) -> BatchIterator:
        """Continue from ``state`` (from ``state()`` of an iterator over the same data and settings)."""
        for key in ("seed", "fingerprint"):
            if state.get(key) != getattr(self, key):
                raise ConfigError(f"data iterator state: {key} {state.get(key)!r} does not match this data "
                                  f"({getattr(self, key)!r}); the data, tokenizer or batch size changed")
        epoch, step = int(state["epoch"]), int(state["step"])
        if step < 0 or step >= self.steps_per_epoch or epoch < 0:
            raise ConfigError(f"data iterator state: step {step} of epoch {epoch} is out of range")
        self._epoch, self._step = epoch, step
        return self

    # -- iteration -----------------------------------------------------------------------------
    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.epochs is not None and self._epoch >= self.epochs:
            raise StopIteration
        batch = self.batch_at(self._epoch, self._step)
        self._step += 1
        if self._step == self.steps_per_epoch:
            self._epoch, self._step = self._epoch + 1, 0
        return batch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The row order of ``epoch`` (a permutation seeded by (seed, epoch))."""
        if self._order_epoch != epoch:
            self._order = _rng(self.seed, "epoch", epoch).permutation(len(self.rows))
            self._order_epoch = epoch
        return self._order

    def batch_rows(self, epoch: int, step: int) -> list[list[int]]:
        """This process's rows (lists of entry indices) at ``(epoch, step)``."""
        order = self.epoch_order(epoch)
        begin = step * self.global_batch + self.process_index * self.local_batch
        return [self.rows[r] for r in order[begin : begin + self.local_batch]]

    def batch_at(self, epoch: int, step: int) -> dict[str, np.ndarray]:
        """This process's batch at ``(epoch, step)``: tokens, targets, loss_mask, segment_ids, positions."""
        segments = [[self.sources[s].entry(i) for s, i in self.entries[row]] for row in self.batch_rows(epoch, step)]
        return fill_rows(segments, self.config.max_length, self.pad_id)

    def manifest(self) -> dict[str, Any]:
        """Realised mixture counts, tokenization counts, packing figures and batch geometry."""
        return {
            **self._manifest,
            "tokenization": {s.name: {**s.counts.as_dict(), "entries": len(s), "cache_key": s.key,
                                      "cache_hit": s.cache_hit} for s in self.sources},
            "packing": {"packing": self.config.packing, "max_length": self.config.max_length,
                        "window": self.config.pack_window, "rows": len(self.rows), "tokens": self.tokens,
                        "efficiency": self.efficiency,
                        "rows_left_out_per_epoch": len(self.rows) - self.steps_per_epoch * self.global_batch},
            "global_batch": self.global_batch,
            "steps_per_epoch": self.steps_per_epoch,
            "seed": self.seed,
        }

    @classmethod
    def from_tokenized(cls, examples: Sequence[TokenizedExample], config: DataConfig, global_batch: int,
                       pad_id: int, **kwargs) -> BatchIterator:
        """An iterator over already tokenized examples, in the given order (for tests and tools)."""
        source = _flat("examples", [e.input_ids for e in examples], [e.loss_mask for e in examples],
                       list(range(len(examples))), TokenizeCounts(produced=len(examples)))
        entries = np.stack([np.zeros(len(examples), np.int64), np.arange(len(examples))], axis=1)
        return cls([source], entries, config, global_batch, pad_id, **kwargs)


def build_batches(
    data_config: DataConfig,
    mixture_config,
    tokenizer,
    global_batch: int,
    process_index: int = 0,
    process_count: int = 1,
    seed: int = 0,
    epochs: int | None = None,
    use_cache: bool = True,
) -> BatchIterator:
    """The training batch iterator of a run: read, tokenize (cached), mix, pack (see the module doc)."""
    from harness.data.mixture import mix
    from harness.data.sources import load_source

    named: dict[str, list[Example]] = {}
    reports: dict[str, dict[str, Any]] = {}
    for spec in mixture_config.sources:
        result = load_source(spec.spec, **{**spec.options, **spec.read_options(mixture_config.seed)})
        named[spec.label], reports[spec.label] = result.examples, result.report.to_dict()
    mixture = mix(named, mixture_config)
    mixture.reports = reports
    sources, where = [], {}
    for number, spec in enumerate(mixture_config.sources):
        examples = named[spec.label]
        sources.append(tokenize_source(spec.label, examples, tokenizer, data_config, seed, use_cache))
        where.update({id(example): (number, index) for index, example in enumerate(examples)})
    # Entries of one example are contiguous in its source (origin ascends), in split order.
    bounds = [np.searchsorted(s.origin, np.arange(len(named[spec.label]) + 1))
              for s, spec in zip(sources, mixture_config.sources)]
    entries = [(number, entry) for example in mixture.examples
               for number, index in [where[id(example)]]
               for entry in range(bounds[number][index], bounds[number][index + 1])]
    return BatchIterator(sources, np.asarray(entries, np.int64), data_config, global_batch, tokenizer.pad_id,
                         process_index=process_index, process_count=process_count, seed=seed, epochs=epochs,
                         manifest={"mixture": mixture.manifest(), "template": data_config.template})
