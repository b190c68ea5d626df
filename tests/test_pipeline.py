"""The batch pipeline: determinism, exact resumption, per-process slices, epochs, the cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.data.masking import tokenize_example
from harness.data.mixture import MixtureConfig
from harness.data.options import DataConfig
from harness.data.pipeline import BatchIterator, build_batches, pick_demonstrations
from harness.data.records import Example, Message
from harness.errors import ConfigError
from harness.model.tokenizer import tiny_tokenizer

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def _text(rng, low, high):
    return " ".join(rng.choice(WORDS, rng.integers(low, high)))


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    """A Self-Instruct-style JSONL and a ShareGPT-style JSON of the test's own making."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    with open(root / "self_instruct.jsonl", "w") as f:
        for _ in range(60):
            f.write(json.dumps({"instruction": _text(rng, 3, 12), "input": "", "output": _text(rng, 2, 40)}) + "\n")
    conversations = []
    for c in range(25):
        turns = []
        for _ in range(rng.integers(1, 4)):
            turns += [{"from": "human", "value": _text(rng, 2, 20)}, {"from": "gpt", "value": _text(rng, 5, 60)}]
        conversations.append({"id": f"conv{c}", "conversations": turns})
    (root / "sharegpt.json").write_text(json.dumps(conversations))
    return root


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def mixture(files) -> MixtureConfig:
    return MixtureConfig(sources=[f"self_instruct:{files / 'self_instruct.jsonl'}",
                                  f"sharegpt:{files / 'sharegpt.json'}"], seed=3)


def config(tmp_path, **overrides) -> DataConfig:
    return DataConfig(**{"max_length": 128, "cache_dir": str(tmp_path / "cache"), "pack_window": 16, **overrides})


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_batches_are_deterministic_and_well_formed(data_files, tmp_path, tok):
    cfg = config(tmp_path)
    first = build_batches(cfg, mixture(data_files), tok, global_batch=4, seed=1)
    second = build_batches(cfg, mixture(data_files), tok, global_batch=4, seed=1)
    steps = first.steps_per_epoch + 2
    for a, b in zip(take(first, steps), take(second, steps)):
        assert same(a, b)
        assert a["tokens"].shape == (4, 128) and a["loss_mask"].dtype == bool
    manifest = first.manifest()
    assert manifest["mixture"]["total"] == 85
    assert manifest["tokenization"][f"self_instruct:{data_files / 'self_instruct.jsonl'}"]["produced"] == 60
    assert 0.5 < manifest["packing"]["efficiency"] <= 1.0
    other_seed = build_batches(cfg, mixture(data_files), tok, global_batch=4, seed=2)
    assert not same(next(other_seed), next(build_batches(cfg, mixture(data_files), tok, 4, seed=1)))


def test_trained_targets_are_the_assistant_turns(data_files, tmp_path, tok):
    it = build_batches(config(tmp_path, packing=False, max_length=1024), mixture(data_files), tok, global_batch=1)
    batch = next(it)
    trained = tok.decode(batch["targets"][0][batch["loss_mask"][0]])
    text = tok.decode(batch["tokens"][0][batch["segment_ids"][0] > 0])
    assert trained.endswith("</s>") and trained.replace("</s>", "") in text.replace("</s>", "")


def test_each_epoch_visits_every_row_once_in_a_new_order(data_files, tmp_path, tok):
    it = build_batches(config(tmp_path), mixture(data_files), tok, global_batch=2, seed=0)
    seen = [[tuple(row) for step in range(it.steps_per_epoch) for row in it.batch_rows(epoch, step)]
            for epoch in (0, 1)]
    assert len(set(seen[0])) == len(seen[0]) == it.steps_per_epoch * 2
    assert seen[0] != seen[1]
    assert len(set(seen[0]) | set(seen[1])) <= len(it.rows)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.integers(0, 40))
def test_resume_from_state_yields_exactly_the_same_batches(data_files, tmp_path, tok, steps):
    cfg = config(tmp_path)
    reference = build_batches(cfg, mixture(data_files), tok, global_batch=3, seed=5)
    take(reference, steps)
    state = json.loads(json.dumps(reference.state()))  # it travels through a checkpoint as JSON
    resumed = build_batches(cfg, mixture(data_files), tok, global_batch=3, seed=5).restore(state)
    for a, b in zip(take(reference, 5), take(resumed, 5)):
        assert same(a, b)


def test_processes_partition_the_global_batch(data_files, tmp_path, tok):
    cfg = config(tmp_path)
    whole = build_batches(cfg, mixture(data_files), tok, global_batch=4, seed=0)
    parts = [build_batches(cfg, mixture(data_files), tok, global_batch=4, seed=0, process_index=p, process_count=2)
             for p in range(2)]
    for _ in range(whole.steps_per_epoch + 1):
        full = next(whole)
        halves = [next(p) for p in parts]
        for key in full:
            assert np.array_equal(np.concatenate([h[key] for h in halves]), full[key])
    assert parts[0].state() == parts[1].state()
    with pytest.raises(ConfigError, match="multiple of process_count"):
        build_batches(cfg, mixture(data_files), tok, global_batch=3, process_count=2)


def test_tokenization_cache_hit_and_miss(data_files, tmp_path, tok):
    cfg = config(tmp_path)
    cold = build_batches(cfg, mixture(data_files), tok, global_batch=2)
    warm = build_batches(cfg, mixture(data_files), tok, global_batch=2)
    assert not any(v["cache_hit"] for v in cold.manifest()["tokenization"].values())
    assert all(v["cache_hit"] for v in warm.manifest()["tokenization"].values())
    assert same(next(cold), next(warm))
    assert cold.manifest()["tokenization"] == {
        k: {**v, "cache_hit": False} for k, v in warm.manifest()["tokenization"].items()}
    changed = build_batches(config(tmp_path, template="chatml"), mixture(data_files), tok, global_batch=2)
    assert not any(v["cache_hit"] for v in changed.manifest()["tokenization"].values())


def test_restore_rejects_other_data(data_files, tmp_path, tok):
    it = build_batches(config(tmp_path), mixture(data_files), tok, global_batch=2)
    other = build_batches(config(tmp_path, max_length=96), mixture(data_files), tok, global_batch=2)
    with pytest.raises(ConfigError, match="fingerprint"):
        other.restore(it.state())


def test_from_tokenized_and_too_small(tok, tmp_path):
    examples = [tokenize_example(Example(str(i), "t", (Message("user", "q"), Message("assistant", "a" * i))), "survey",
                                 tok) for i in range(1, 9)]
    it = BatchIterator.from_tokenized(examples, config(tmp_path, max_length=64, packing=False), 4, tok.pad_id)
    assert it.steps_per_epoch == 2 and it.manifest()["packing"]["rows"] == 8
    with pytest.raises(ConfigError, match="only 8 rows"):
        BatchIterator.from_tokenized(examples, config(tmp_path, max_length=64, packing=False), 16, tok.pad_id)


def test_demonstrations_are_seeded_and_from_the_same_task():
    examples = [Example(f"e{i}", "s", (Message("user", "q"), Message("assistant", "a")), {"task": i % 3})
                for i in range(12)]
    picks = pick_demonstrations(examples, 2, "task", seed=0)
    assert picks == pick_demonstrations(examples, 2, "task", seed=0)
    assert picks != pick_demonstrations(examples, 2, "task", seed=1)
    for i, chosen in enumerate(picks):
        assert len(chosen) == 2 and i not in chosen and all(j % 3 == i % 3 for j in chosen)
