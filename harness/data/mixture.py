"""Mixing several sources into one training set, deterministically for a seed.

Strategies (``MixtureConfig.strategy``):

- ``concat``: every example of every source exactly once (the survey's unions: 63,184 + 82,439 =
  145,623).
- ``count``: per source an absolute ``count`` or a ``fraction`` of its size (``0.5`` = half,
  ``2.0`` = twice); a source with neither is taken whole.
- ``proportional``: examples-proportional mixing with seqio's semantics: the rate of a source with
  ``n`` examples is ``min(n, cap) ** (1 / temperature)``; ``total`` examples (default
  ``sum(min(n, cap))``) are split in proportion to the rates.
- ``weights``: ``total`` examples (default: the sum of the source sizes) split in proportion to each
  source's explicit ``weight``.

A share becomes an exact integer count by largest-remainder rounding (so the counts add up to
``total`` exactly, with no sampling noise), then each source is sampled with its own generator
seeded from ``(seed, source name)``: without replacement when the count fits the source, and when
it exceeds the source by ``upsample``: ``repeat`` (default: every example ``count // n`` times plus
``count % n`` distinct ones) or ``replacement`` (i.i.d. draws with replacement). ``shuffle``
(default true) interleaves the sources with a seeded permutation. The realised per-source counts
go into :meth:`MixtureResult.manifest`, for the run's manifest.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.data.records import Example
from harness.data.sources import load_source, parse_spec, validate_options
from harness.errors import ConfigError

Strategy = Literal["concat", "count", "proportional", "weights"]


class SourceSpec(BaseModel):
    """One source of a mixture: its spec string, its share, and its reader options.

    ``sample`` / ``per_task_cap`` / ``limit`` / ``skip_bad_rows`` select at read time (see
    ``harness.data.sources``); ``options`` holds the reader's own options (e.g. ``policy`` for
    ShareGPT) and the common ones (``split``, ``config``...). A bare string is accepted as
    ``{spec: STRING}`` in YAML.
    """

    model_config = ConfigDict(extra="forbid")
    spec: str
    name: str | None = None
    count: int | None = Field(default=None, ge=0)
    fraction: float | None = Field(default=None, gt=0)
    weight: float | None = Field(default=None, ge=0)
    skip_bad_rows: bool = False
    limit: int | None = Field(default=None, ge=1)
    sample: int | None = Field(default=None, ge=1)
    per_task_cap: int | None = Field(default=None, ge=1)
    seed: int | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"spec": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _check(self) -> SourceSpec:
        if self.count is not None and self.fraction is not None:
            raise ValueError(f"source {self.label!r}: give count or fraction, not both")
        kind, _, spec_options = parse_spec(self.spec)
        validate_options(kind, {**spec_options, **self.options, **self.read_options(0)}, self.spec)
        return self

    @property
    def label(self) -> str:
        """The name used in counts and manifests: ``name`` or else the spec string."""
        return self.name or self.spec

    def read_options(self, default_seed: int) -> dict[str, Any]:
        """The keyword options this spec passes to ``load_source``."""
        chosen = {"limit": self.limit, "sample": self.sample, "per_task_cap": self.per_task_cap}
        options = {k: v for k, v in chosen.items() if v is not None}
        if self.skip_bad_rows:
            options["skip_bad_rows"] = True
        if self.sample is not None or self.per_task_cap is not None:
            options["seed"] = self.seed if self.seed is not None else default_seed
        return options


class MixtureConfig(BaseModel):
    """A mixture: its sources, the strategy that sizes their shares, and the seed."""

    model_config = ConfigDict(extra="forbid")
    sources: list[SourceSpec] = Field(min_length=1)
    strategy: Strategy = "concat"
    cap: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    total: int | None = Field(default=None, ge=0)
    seed: int = 0
    shuffle: bool = True
    upsample: Literal["repeat", "replacement"] = "repeat"

    @model_validator(mode="after")
    def _check(self) -> MixtureConfig:
        labels = [s.label for s in self.sources]
        duplicates = sorted({x for x in labels if labels.count(x) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique; repeated: {duplicates} (set `name`)")
        for source in self.sources:
            given = [k for k in ("count", "fraction", "weight") if getattr(source, k) is not None]
            allowed = {"concat": set(), "count": {"count", "fraction"}, "proportional": set(), "weights": {"weight"}}
            extra = sorted(set(given) - allowed[self.strategy])
            if extra:
                raise ValueError(f"source {source.label!r}: {extra} not used by strategy {self.strategy!r}")
            if self.strategy == "weights" and source.weight is None:
                raise ValueError(f"source {source.label!r}: strategy 'weights' needs a weight for every source")
        if self.strategy == "weights" and not any(s.weight for s in self.sources):
            raise ValueError("strategy 'weights': the weights must not all be zero")
        if self.total is not None and self.strategy not in ("proportional", "weights"):
            raise ValueError(f"total is used only by strategies 'proportional' and 'weights', not {self.strategy!r}")
        if self.cap is not None and self.strategy != "proportional":
            raise ValueError("cap is used only by strategy 'proportional'")
        return self


@dataclass
class MixtureResult:
    """The mixed examples and how they were made (for the run manifest)."""

    examples: list[Example]
    counts: dict[str, int]
    available: dict[str, int]
    rates: dict[str, float]
    strategy: str
    seed: int
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        """JSON-ready record of the mixture: strategy, seed, per-source available/realised counts."""
        return {
            "strategy": self.strategy,
            "seed": self.seed,
            "total": len(self.examples),
            "sources": {
                name: {"available": self.available[name], "count": self.counts[name], "rate": self.rates[name],
                       **({"report": self.reports[name]} if name in self.reports else {})}
                for name in self.counts
            },
        }


def seeded_rng(seed: int, salt: str) -> np.random.Generator:
    """A generator that depends only on the seed and a name (not on source order or call order)."""
    return np.random.default_rng([seed, zlib.crc32(salt.encode("utf-8"))])


def allocate(total: int, shares: Sequence[float]) -> list[int]:
    """Split ``total`` into integers proportional to ``shares`` that add up exactly (largest remainder)."""
    mass = float(sum(shares))
    if total == 0 or mass <= 0:
        return [0] * len(shares)
    quotas = [total * s / mass for s in shares]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def proportional_rates(sizes: Sequence[int], cap: int | None, temperature: float) -> list[float]:
    """seqio's examples-proportional rates: ``min(n, cap) ** (1 / temperature)``."""
    return [float(min(n, cap) if cap is not None else n) ** (1.0 / temperature) for n in sizes]


def target_counts(config: MixtureConfig, available: Mapping[str, int]) -> tuple[dict[str, int], dict[str, float]]:
    """Per-source example counts (and the normalised rates) the strategy asks for."""
    names = [s.label for s in config.sources]
    sizes = [available[name] for name in names]
    if config.strategy == "concat":
        counts = sizes
    elif config.strategy == "count":
        counts = []
        for source, n in zip(config.sources, sizes, strict=True):
            if source.count is not None:
                counts.append(source.count)
            elif source.fraction is not None:
                counts.append(round(source.fraction * n))
            else:
                counts.append(n)
    else:
        if config.strategy == "proportional":
            shares = proportional_rates(sizes, config.cap, config.temperature)
            default_total = sum(min(n, config.cap) if config.cap else n for n in sizes)
        else:
            shares = [float(s.weight or 0.0) for s in config.sources]
            default_total = sum(sizes)
        total = config.total if config.total is not None else default_total
        for name, n, share in zip(names, sizes, shares, strict=True):
            if n == 0 and share > 0 and total > 0:
                raise ConfigError(f"mixture source {name!r} has no examples but a non-zero share")
        counts = allocate(total, shares)
    mass = float(sum(counts)) or 1.0
    return dict(zip(names, counts, strict=True)), {name: c / mass for name, c in zip(names, counts, strict=True)}


def draw(examples: Sequence[Example], count: int, rng: np.random.Generator, upsample: str = "repeat") -> list[Example]:
    """``count`` examples from ``examples``: without replacement when it fits, else up-sampled."""
    n = len(examples)
    if count == 0:
        return []
    if n == 0:
        raise ConfigError(f"cannot draw {count} examples from an empty source")
    if count == n:
        return list(examples)
    if count < n:
        indices = np.sort(rng.choice(n, count, replace=False))
    elif upsample == "replacement":
        indices = rng.integers(0, n, size=count)
    else:
        indices = np.concatenate([np.tile(np.arange(n), count // n), np.sort(rng.choice(n, count % n, replace=False))])
    return [examples[i] for i in indices]


def mix(named: Mapping[str, Sequence[Example]], config: MixtureConfig) -> MixtureResult:
    """Mix in-memory sources (keyed by ``SourceSpec.label``) under ``config``; pure and seeded.

    The result holds the very ``Example`` objects of ``named`` (repeated when up-sampled), never
    copies, so a caller can map each back to its source and index by identity.
    """
    missing = [s.label for s in config.sources if s.label not in named]
    if missing:
        raise ConfigError(f"mixture sources not provided: {missing}")
    available = {s.label: len(named[s.label]) for s in config.sources}
    counts, rates = target_counts(config, available)
    mixed: list[Example] = []
    for source in config.sources:
        rng = seeded_rng(config.seed, f"mix:{source.label}")
        mixed += draw(named[source.label], counts[source.label], rng, config.upsample)
    if config.shuffle and mixed:
        order = seeded_rng(config.seed, "shuffle").permutation(len(mixed))
        mixed = [mixed[i] for i in order]
    return MixtureResult(mixed, counts, available, rates, config.strategy, config.seed)


def build_mixture(config: MixtureConfig) -> MixtureResult:
    """Read every source of ``config`` with ``load_source`` and mix them; reports go into the manifest."""
    named: dict[str, list[Example]] = {}
    reports: dict[str, dict[str, Any]] = {}
    for source in config.sources:
        result = load_source(source.spec, **{**source.options, **source.read_options(config.seed)})
        named[source.label] = result.examples
        reports[source.label] = result.report.to_dict()
    mixed = mix(named, config)
    mixed.reports = reports
    return mixed
