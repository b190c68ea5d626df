"""Conformance: the readers on the real public samples in ../shared/data.

Expected values are recomputed here from the raw files with the stdlib (json / csv), independent
of ``datasets`` and of the readers' code paths.
"""

from __future__ import annotations

import csv
import json

import pytest

from harness.data.sources import load_source

pytestmark = pytest.mark.usefixtures("shared_data")


def raw_json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def raw_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


ROLE = {"human": "user", "gpt": "assistant"}


@pytest.mark.parametrize("relative", ["sharegpt/fastchat/dummy_conversation.json",
                                      "sharegpt/apple_ml-recurrent-drafter/ShareGPT_V4.3_unfiltered_cleaned_split.json"])
def test_sharegpt_samples_read_exactly(shared_data, relative):
    path = shared_data / relative
    result = load_source(f"sharegpt:{path}")
    raw = raw_json(path)
    assert result.report.rows_read == len(raw) and result.report.examples == len(raw)
    assert result.report.dropped == {} and result.report.merged == {}
    for example, record in zip(result.examples, raw, strict=True):
        assert example.id == record["id"]
        assert [(m.role, m.content) for m in example.messages] == [(ROLE[t["from"]], t["value"]) for t in record["conversations"]]


def test_sharegpt_first_turn_prompts(shared_data):
    path = shared_data / "sharegpt/ml-energy_leaderboard-v2/ShareGPT_V3_filtered_500.json"
    training = load_source(f"sharegpt:{path}")
    assert training.examples == [] and training.report.dropped["no_assistant_turn"] == 500
    prompts = load_source(f"sharegpt:{path}?require_reply=false")
    assert len(prompts.examples) == 500 and all(len(e.messages) == 1 for e in prompts.examples)


def test_self_instruct_seed_tasks(shared_data):
    path = shared_data / "self_instruct/seed_tasks.jsonl"
    raw = raw_jsonl(path)
    result = load_source(f"self_instruct:{path}")
    expected = sum(1 for r in raw for i in r["instances"] if i["output"].strip())
    assert len(result.examples) == expected
    assert result.report.examples + sum(result.report.dropped.values()) == sum(len(r["instances"]) for r in raw)
    assert {e.meta["task"] for e in result.examples} == {r["name"] for r in raw}
    first = raw[0]["instances"][0]
    assert result.examples[0].messages[-1].content == first["output"].strip()
    capped = load_source(f"self_instruct:{path}", per_task_cap=1)
    assert len(capped.examples) == len({r["name"] for r in raw})  # two seed tasks share a name


def test_lima(shared_data):
    path = shared_data / "lima/lima.json"
    raw = raw_json(path)
    result = load_source(f"lima:{path}")
    assert len(result.examples) == len(raw) == 1029
    for example, record in zip(result.examples, raw, strict=True):
        assert len(example.messages) == 2 * (len(record["history"]) + 1)
        assert example.messages[-1].content == record["output"].strip()
        assert [m.role for m in example.messages] == ["user", "assistant"] * (len(example.messages) // 2)


def test_openassistant_best_path(shared_data):
    path = shared_data / "oasst/en_100_tree.jsonl"
    raw = raw_jsonl(path)
    result = load_source(f"oasst:{path}")
    assert len(result.examples) + sum(result.report.dropped.values()) == len(raw)
    by_id = {e.id: e for e in result.examples}
    for tree in raw:
        if tree["message_tree_id"] not in by_id:
            continue
        example = by_id[tree["message_tree_id"]]
        assert example.messages[0].content == tree["prompt"]["text"]
        answers = [r for r in tree["prompt"]["replies"] if r["role"] == "assistant" and not r["deleted"]]
        best = min(answers, key=lambda r: r.get("rank", float("inf")) if r.get("rank") is not None else float("inf"))
        assert example.messages[1].content == best["text"]
        assert example.messages[-1].role == "assistant"


def test_flan_cot_tsvs(shared_data):
    folder = shared_data / "flan_v2/cot_data"
    expected_rows = {}
    for tsv in sorted(folder.glob("*.tsv")):
        with tsv.open(encoding="utf-8", newline="") as handle:
            expected_rows[tsv.stem] = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    result = load_source(f"flan:{folder}")
    assert result.report.rows_read == sum(len(rows) for rows in expected_rows.values()) == 33443
    assert result.report.skipped == {}
    assert result.report.examples + sum(result.report.dropped.values()) == 33443
    gsm = [e for e in result.examples if e.meta["task"] == "cot_gsm8k"]
    question, answer, rationale = expected_rows["gsm8k_train"][0]
    assert gsm[0].messages[0].content == question.replace("\\n", "\n")
    assert gsm[0].messages[1].content == f"{rationale.replace(chr(92) + 'n', chr(10))}\nThe answer is {answer}."
    assert all("\\n" not in m.content for e in result.examples[:2000] for m in e.messages)


def test_flan_sample_80k_style_selection_is_reproducible(shared_data):
    folder = shared_data / "flan_v2/cot_data"
    first = load_source(f"flan:{folder}", per_task_cap=2000, sample=5000, seed=7)
    second = load_source(f"flan:{folder}?per_task_cap=2000&sample=5000&seed=7")
    assert [e.id for e in first.examples] == [e.id for e in second.examples]
    assert len(first.examples) == 5000
    per_task = {}
    for e in first.examples:
        per_task[e.meta["task"]] = per_task.get(e.meta["task"], 0) + 1
    assert max(per_task.values()) <= 2000 and len(per_task) == 7
