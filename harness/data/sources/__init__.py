"""Data sources: ``load_source("KIND:PATH_OR_HUB_NAME")`` -> examples plus a report.

A source spec is ``KIND:LOCATION[?option=value&option=value...]``:

- ``KIND`` is one of :data:`READERS` (``flan``, ``sharegpt``, ``self_instruct``, ``alpaca``,
  ``wizardlm``, ``lima``, ``oasst``, ``dolly``);
- ``LOCATION`` is a local file, a local directory (all its data files, in name order) or a hub
  dataset ``owner/name``;
- options after ``?`` are the same keyword options :func:`load_source` takes (values are parsed as
  their declared types, so ``?policy=merge&sample=100`` works from the CLI).

Options every source takes (:class:`CommonOptions`): ``split``, ``config``, ``data_files``,
``revision``, ``streaming`` (hub), ``field`` (a list inside a JSON object), and the selection
applied after reading: ``per_task_cap`` (at most this many examples per ``meta["task"]``, seeded),
then ``sample`` (a seeded sample of N examples; the survey's FLAN-T5 80K), with ``seed``. Kept
examples stay in source order. ``limit`` stops reading after that many examples (a quick look),
``skip_bad_rows`` counts and reports malformed rows instead of raising.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from harness.data.records import Example
from harness.data.sources import alpaca, dolly, flan, lima, oasst, self_instruct, sharegpt, wizardlm
from harness.data.sources.base import ReadContext, RowError, SourceReport
from harness.data.sources.io import iter_rows
from harness.errors import ConfigError

__all__ = ["READERS", "CommonOptions", "Reader", "RowError", "SourceReport", "SourceResult", "load_source",
           "parse_spec", "select_examples", "validate_options"]


@dataclass(frozen=True)
class Reader:
    """One source kind: its options model, its row converter and how its TSV columns are named."""

    kind: str
    options: type[BaseModel]
    read: Callable[..., Any]
    tsv_columns: tuple[str, ...] | None = None


READERS: dict[str, Reader] = {
    "flan": Reader("flan", flan.FlanOptions, flan.read, flan.COT_COLUMNS),
    "sharegpt": Reader("sharegpt", sharegpt.ShareGPTOptions, sharegpt.read),
    "self_instruct": Reader("self_instruct", self_instruct.SelfInstructOptions, self_instruct.read),
    "alpaca": Reader("alpaca", alpaca.AlpacaOptions, alpaca.read),
    "wizardlm": Reader("wizardlm", wizardlm.WizardLMOptions, wizardlm.read),
    "lima": Reader("lima", lima.LimaOptions, lima.read),
    "oasst": Reader("oasst", oasst.OasstOptions, oasst.read),
    "dolly": Reader("dolly", dolly.DollyOptions, dolly.read),
}


class CommonOptions(BaseModel):
    """Options every source accepts (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    split: str = "train"
    config: str | None = None
    data_files: str | None = None
    revision: str | None = None
    streaming: bool = False
    field: str | None = None
    sample: int | None = None
    per_task_cap: int | None = None
    seed: int = 0
    limit: int | None = None
    skip_bad_rows: bool = False

    @field_validator("sample", "per_task_cap", "limit")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be a positive integer")
        return value


@dataclass
class SourceResult:
    """The examples of one source and the report of how they were read."""

    examples: list[Example]
    report: SourceReport


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """``"KIND:LOCATION?k=v"`` -> ``(kind, location, {k: v})``; a bad spec is a ``ConfigError``."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ConfigError(f"source {spec!r}: expected KIND:PATH_OR_HUB_NAME with KIND one of {sorted(READERS)}")
    kind = kind.strip().lower().replace("-", "_")
    if kind not in READERS:
        raise ConfigError(f"source {spec!r}: unknown source kind {kind!r}; expected one of {sorted(READERS)}")
    location, _, query = rest.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False)) if query else {}
    return kind, location, options


def validate_options(kind: str, options: dict[str, Any], spec: str = "") -> tuple[CommonOptions, BaseModel]:
    """Split ``options`` into the common and the reader's own options; unknown or ill-typed -> ``ConfigError``."""
    reader = READERS[kind]
    common_keys = set(CommonOptions.model_fields)
    known = common_keys | set(reader.options.model_fields)
    unknown = sorted(set(options) - known)
    label = f"source {spec or kind!r}"
    if unknown:
        raise ConfigError(f"{label}: unknown option(s) {unknown}; {kind} accepts {sorted(known)}")
    try:
        common = CommonOptions(**{k: v for k, v in options.items() if k in common_keys})
        own = reader.options(**{k: v for k, v in options.items() if k not in common_keys})
    except ValidationError as exc:
        details = "; ".join(f"option {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{label}: {details}") from None
    return common, own


def _seeded_rng(seed: int, salt: str) -> np.random.Generator:
    """A generator that depends only on the seed and a name, not on call order."""
    return np.random.default_rng([seed, zlib.crc32(salt.encode("utf-8"))])


def select_examples(examples: list[Example], *, per_task_cap: int | None, sample: int | None, seed: int,
                    report: SourceReport) -> list[Example]:
    """Apply the per-task cap, then the sample of N, both seeded; kept examples stay in source order."""
    keep = np.ones(len(examples), dtype=bool)
    if per_task_cap is not None:
        by_task: dict[str, list[int]] = {}
        for index, example in enumerate(examples):
            by_task.setdefault(str(example.meta.get("task")), []).append(index)
        for task, indices in by_task.items():
            if len(indices) > per_task_cap:
                chosen = _seeded_rng(seed, f"cap:{task}").choice(len(indices), per_task_cap, replace=False)
                dropped = np.setdiff1d(np.arange(len(indices)), chosen)
                keep[np.asarray(indices)[dropped]] = False
                report.capped_out += len(dropped)
    candidates = np.flatnonzero(keep)
    if sample is not None and sample < len(candidates):
        chosen = np.sort(_seeded_rng(seed, "sample").choice(len(candidates), sample, replace=False))
        report.sampled_out += len(candidates) - sample
        candidates = candidates[chosen]
    return [examples[i] for i in candidates]


def load_source(spec: str, *, skip_bad_rows: bool = False, limit: int | None = None, **options: Any) -> SourceResult:
    """Read the source ``spec`` (``KIND:PATH_OR_HUB_NAME[?k=v...]``) into examples and a report.

    Keyword options override options given in the spec. A malformed row raises ``DataError``
    naming the file and line/row unless ``skip_bad_rows`` is set, which counts and lists it.
    """
    kind, location, spec_options = parse_spec(spec)
    merged = {**spec_options, **options}
    if skip_bad_rows:
        merged["skip_bad_rows"] = True
    if limit is not None:
        merged["limit"] = limit
    common, own = validate_options(kind, merged, spec)
    reader = READERS[kind]
    report = SourceReport(spec=spec, kind=kind, location=location)
    ctx = ReadContext(report, skip_bad_rows=common.skip_bad_rows, limit=common.limit)
    rows = iter_rows(location, split=common.split, config=common.config, data_files=common.data_files,
                     streaming=common.streaming, revision=common.revision, field=common.field,
                     tsv_columns=reader.tsv_columns)
    examples = list(reader.read(rows, own, ctx, kind=kind))
    if common.limit is not None:
        examples = examples[: common.limit]
    examples = select_examples(examples, per_task_cap=common.per_task_cap, sample=common.sample,
                               seed=common.seed, report=report)
    report.examples = len(examples)
    return SourceResult(examples, report)
