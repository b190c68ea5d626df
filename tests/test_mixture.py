"""Mixture strategies: exact counts, determinism, seqio proportional rates (hypothesis properties)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from harness.data.mixture import MixtureConfig, SourceSpec, allocate, build_mixture, mix, proportional_rates
from harness.data.records import Example, Message

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def fake_source(name: str, n: int) -> list[Example]:
    return [Example(f"{name}-{i}", name, (Message("user", f"q{i}"), Message("assistant", f"a{i}"))) for i in range(n)]


def config(sizes: dict[str, int], strategy: str, **kwargs) -> tuple[dict[str, list[Example]], MixtureConfig]:
    per_source = kwargs.pop("per_source", {})
    specs = [SourceSpec(spec=f"alpaca:{name}.json", name=name, **per_source.get(name, {})) for name in sizes]
    return {name: fake_source(name, n) for name, n in sizes.items()}, MixtureConfig(sources=specs, strategy=strategy, **kwargs)


sizes_strategy = st.dictionaries(st.sampled_from(["flan", "sharegpt", "self_instruct", "dolly"]),
                                 st.integers(0, 60), min_size=1, max_size=4)


def test_concat_is_the_survey_union():
    named, cfg = config({"sharegpt": 631, "self_instruct": 824}, "concat", shuffle=False)
    result = mix(named, cfg)
    assert len(result.examples) == 631 + 824 and result.counts == {"sharegpt": 631, "self_instruct": 824}
    assert [e.id for e in result.examples] == [e.id for e in named["sharegpt"] + named["self_instruct"]]


@given(sizes=sizes_strategy, seed=st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_concat_counts_add_exactly_and_every_example_once(sizes, seed):
    named, cfg = config(sizes, "concat", seed=seed)
    result = mix(named, cfg)
    assert len(result.examples) == sum(sizes.values())
    assert Counter(e.id for e in result.examples) == Counter(e.id for ex in named.values() for e in ex)


@given(sizes=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(1, 40), min_size=1),
       targets=st.lists(st.integers(0, 120), min_size=3, max_size=3), seed=st.integers(0, 1000),
       upsample=st.sampled_from(["repeat", "replacement"]))
@settings(max_examples=60, deadline=None)
def test_count_strategy_realises_exact_counts(sizes, targets, seed, upsample):
    per_source = {name: {"count": t} for name, t in zip(sizes, targets, strict=False)}
    named, cfg = config(sizes, "count", seed=seed, per_source=per_source, upsample=upsample)
    result = mix(named, cfg)
    realised = Counter(e.source for e in result.examples)
    for name in sizes:
        assert result.counts[name] == realised[name] == per_source[name]["count"]
        ids = [e.id for e in result.examples if e.source == name]
        if per_source[name]["count"] <= sizes[name]:
            assert len(set(ids)) == len(ids)  # no repeats when the count fits
        elif upsample == "repeat":
            times = Counter(ids)
            q = per_source[name]["count"] // sizes[name]
            assert set(times.values()) <= {q, q + 1} and len(times) == sizes[name]
    assert len(result.examples) == sum(result.counts.values())


def test_fraction_and_whole_sources():
    named, cfg = config({"a": 10, "b": 7, "c": 5}, "count", per_source={"a": {"fraction": 0.5}, "b": {"fraction": 2.0}})
    assert mix(named, cfg).counts == {"a": 5, "b": 14, "c": 5}


@given(sizes=sizes_strategy, seed=st.integers(0, 10_000), strategy=st.sampled_from(["concat", "count", "proportional"]))
@settings(max_examples=40, deadline=None)
def test_deterministic_for_a_seed(sizes, seed, strategy):
    named, cfg = config(sizes, strategy, seed=seed)
    first = [e.id for e in mix(named, cfg).examples]
    second = [e.id for e in mix(named, cfg).examples]
    assert first == second


def test_different_seeds_differ_and_source_order_does_not_change_a_sources_draw():
    named, cfg = config({"a": 50, "b": 50}, "count", per_source={"a": {"count": 10}, "b": {"count": 10}}, shuffle=False)
    _, other_seed = config({"a": 50, "b": 50}, "count", per_source={"a": {"count": 10}, "b": {"count": 10}},
                           shuffle=False, seed=1)
    assert [e.id for e in mix(named, cfg).examples] != [e.id for e in mix(named, other_seed).examples]
    reordered = MixtureConfig(sources=list(reversed(cfg.sources)), strategy="count", shuffle=False)
    draw_a = [e.id for e in mix(named, cfg).examples if e.source == "a"]
    assert draw_a == [e.id for e in mix(named, reordered).examples if e.source == "a"]


@given(sizes=st.lists(st.integers(0, 10**6), min_size=1, max_size=6), cap=st.one_of(st.none(), st.integers(1, 10**5)),
       temperature=st.floats(0.25, 8.0))
def test_proportional_rates_are_seqio(sizes, cap, temperature):
    rates = proportional_rates(sizes, cap, temperature)
    for n, rate in zip(sizes, rates, strict=True):
        assert rate == pytest.approx(float(min(n, cap) if cap is not None else n) ** (1.0 / temperature))


@given(total=st.integers(0, 10_000), shares=st.lists(st.floats(0.0, 1e6), min_size=1, max_size=8))
def test_allocate_adds_up_and_stays_within_one_of_the_quota(total, shares):
    counts = allocate(total, shares)
    mass = sum(shares)
    if mass == 0:
        assert counts == [0] * len(shares)
        return
    assert sum(counts) == total
    for count, share in zip(counts, shares, strict=True):
        assert abs(count - total * share / mass) < 1.0


@given(sizes=st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(1, 300), min_size=2),
       cap=st.integers(1, 200), temperature=st.sampled_from([1.0, 2.0, 3.0]), seed=st.integers(0, 100))
@settings(max_examples=40, deadline=None)
def test_proportional_mixture_follows_the_rates(sizes, cap, temperature, seed):
    named, cfg = config(sizes, "proportional", cap=cap, temperature=temperature, seed=seed)
    result = mix(named, cfg)
    rates = dict(zip(sizes, proportional_rates(list(sizes.values()), cap, temperature), strict=True))
    total = sum(min(n, cap) for n in sizes.values())
    assert len(result.examples) == total == sum(result.counts.values())
    for name in sizes:
        assert abs(result.counts[name] - total * rates[name] / sum(rates.values())) < 1.0


def test_proportional_temperature_flattens_and_cap_limits():
    named, cfg = config({"big": 1000, "small": 10}, "proportional", total=1000)
    assert mix(named, cfg).counts == {"big": 990, "small": 10}
    named, cfg = config({"big": 1000, "small": 10}, "proportional", total=1000, temperature=2.0)
    # sqrt rates: 31.62 : 3.16 -> 909 : 91 (small is up-sampled 9x)
    assert mix(named, cfg).counts == {"big": 909, "small": 91}
    named, cfg = config({"big": 1000, "small": 10}, "proportional", cap=10)
    assert mix(named, cfg).counts == {"big": 10, "small": 10}


def test_weights():
    named, cfg = config({"a": 30, "b": 30}, "weights", total=40, per_source={"a": {"weight": 3}, "b": {"weight": 1}})
    result = mix(named, cfg)
    assert result.counts == {"a": 30, "b": 10} and len(result.examples) == 40
    manifest = result.manifest()
    assert manifest["sources"]["a"] == {"available": 30, "count": 30, "rate": 0.75}
    assert manifest["total"] == 40 and manifest["strategy"] == "weights"


def test_config_validation_names_the_problem():
    with pytest.raises(ValidationError, match="count or fraction, not both"):
        SourceSpec(spec="alpaca:a.json", count=3, fraction=0.5)
    with pytest.raises(ValidationError, match="unknown source kind"):
        SourceSpec(spec="bogus:a.json")
    with pytest.raises(ValidationError, match="unknown option"):
        SourceSpec(spec="sharegpt:a.json", options={"polcy": "merge"})
    with pytest.raises(ValidationError, match="needs a weight"):
        MixtureConfig(sources=["alpaca:a.json"], strategy="weights")
    with pytest.raises(ValidationError, match="names must be unique"):
        MixtureConfig(sources=["alpaca:a.json", "alpaca:a.json"])
    with pytest.raises(ValidationError, match="not used by strategy 'concat'"):
        MixtureConfig(sources=[{"spec": "alpaca:a.json", "count": 4}])
    with pytest.raises(ValidationError, match="extra"):
        MixtureConfig(sources=["alpaca:a.json"], stratgy="concat")


def test_build_mixture_from_yaml_shaped_config():
    import yaml

    text = f"""
strategy: count
seed: 3
sources:
  - spec: sharegpt:{FIXTURES / 'sharegpt_unaligned.json'}
    name: sharegpt
    count: 8
    options: {{policy: merge}}
  - spec: flan:{FIXTURES / 'flan.jsonl'}
    name: flan
    per_task_cap: 2
  - self_instruct:{FIXTURES / 'seed_tasks.jsonl'}
"""
    cfg = MixtureConfig.model_validate(yaml.safe_load(text))
    result = build_mixture(cfg)
    seed_name = f"self_instruct:{FIXTURES / 'seed_tasks.jsonl'}"
    assert result.counts == {"sharegpt": 8, "flan": 6, seed_name: 4}
    manifest = result.manifest()
    assert manifest["sources"]["sharegpt"]["report"]["merged"] == {"consecutive_same_role": 2}
    assert manifest["sources"]["flan"]["report"]["capped_out"] == 6
    assert [e.id for e in build_mixture(cfg).examples] == [e.id for e in result.examples]
