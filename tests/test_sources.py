"""Readers on the project's own fixtures (tests/fixtures/data): schemas, policies, selection, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from harness.data.records import Message
from harness.data.sources import load_source, parse_spec
from harness.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def spec(kind: str, name: str, query: str = "") -> str:
    return f"{kind}:{FIXTURES / name}{query}"


def roles(example) -> list[str]:
    return [m.role for m in example.messages]


def test_spec_parsing_and_unknown_kind():
    assert parse_spec("flan:Open-Orca/FLAN?sample=5&seed=2") == ("flan", "Open-Orca/FLAN", {"sample": "5", "seed": "2"})
    with pytest.raises(ConfigError, match="unknown source kind 'nope'"):
        load_source("nope:x.json")
    with pytest.raises(ConfigError, match="KIND:PATH"):
        load_source("sharegpt")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['polcy'\]"):
        load_source(spec("sharegpt", "sharegpt.json", "?polcy=merge"))
    with pytest.raises(ConfigError, match="option policy"):
        load_source(spec("sharegpt", "sharegpt.json"), policy="sometimes")


def test_sharegpt_roles_and_system():
    result = load_source(spec("sharegpt", "sharegpt.json"))
    assert [e.id for e in result.examples] == ["chat_a", "chat_b", "chat_c"]
    assert roles(result.examples[1]) == ["system", "user", "assistant", "user", "assistant"]
    assert result.examples[1].messages[2] == Message("assistant", "Eleven is one.")
    assert roles(result.examples[2]) == ["user", "assistant"]  # bing is an assistant
    assert all(e.source == "sharegpt" for e in result.examples)
    assert result.report.rows_read == 3 and result.report.examples == 3


def test_sharegpt_error_policy_names_row_and_turn():
    with pytest.raises(DataError, match=r"sharegpt_unaligned\.json: row 1: turn 1: .*consecutive same role"):
        load_source(spec("sharegpt", "sharegpt_unaligned.json"))


def test_sharegpt_merge_policy_counts_every_repair():
    result = load_source(spec("sharegpt", "sharegpt_unaligned.json", "?policy=merge"))
    by_id = {e.id: e for e in result.examples}
    assert set(by_id) == {"ok", "double_human", "leading_gpt", "empty_turn", "trailing_human"}
    assert by_id["double_human"].messages[0].content == "I have a question about kites.\n\nWhy do they need tails?"
    assert roles(by_id["leading_gpt"]) == ["user", "assistant"]
    # the empty reply is removed, then the two user turns around it are joined
    assert roles(by_id["empty_turn"]) == ["user", "assistant"]
    assert by_id["empty_turn"].messages[0].content == "Tell me a fact about owls.\n\nPlease?"
    assert roles(by_id["trailing_human"]) == ["user", "assistant"]
    report = result.report
    assert report.merged == {"consecutive_same_role": 2}
    assert report.dropped == {"leading_assistant_turn": 1, "empty_turn": 1, "trailing_user_turn": 1}


def test_sharegpt_drop_policy_counts_each_conversation():
    result = load_source(spec("sharegpt", "sharegpt_unaligned.json"), policy="drop")
    assert [e.id for e in result.examples] == ["ok", "trailing_human"]
    assert result.report.dropped == {"consecutive_same_role": 1, "leading_assistant": 1, "empty_turn": 1,
                                     "trailing_user_turn": 1}


def test_sharegpt_prompt_only_needs_require_reply_false(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([{"id": "p1", "conversations": [{"from": "human", "value": "Hi there"}]}]))
    assert load_source(f"sharegpt:{path}").examples == []
    assert load_source(f"sharegpt:{path}").report.dropped == {"trailing_user_turn": 1, "no_assistant_turn": 1}
    kept = load_source(f"sharegpt:{path}?require_reply=false").examples
    assert [roles(e) for e in kept] == [["user"]]


def test_self_instruct_82k_form():
    result = load_source(spec("self_instruct", "self_instruct_82k.jsonl"))
    first, second, third = result.examples
    assert first.messages[0].content == "Rewrite the sentence in the passive voice.\n\nThe cat chased the mouse."
    assert first.messages[1].content == "The mouse was chased by the cat."
    assert second.messages[0].content == "List three uses of a paperclip."
    assert third.id == "self_instruct_82k-3"  # line 4 (a blank line before it keeps numbering)


def test_self_instruct_prompt_completion_strips_markers():
    first, second = load_source(spec("self_instruct", "self_instruct_prompt_completion.jsonl")).examples
    assert first.messages[0].content == "Give an antonym of the word.\n\nInput: ancient"
    assert first.messages[1].content == "modern"
    assert second.messages[1].content.endswith("puddles hold the sky")


def test_self_instruct_seed_tasks_one_example_per_instance():
    result = load_source(spec("self_instruct", "seed_tasks.jsonl"))
    assert [e.id for e in result.examples] == ["seed_a#0", "seed_a#1", "seed_b#0", "seed_c#0"]
    assert result.examples[1].messages[0].content == "Convert the length to centimetres.\n\n1.5 metres"
    assert result.examples[2].meta == {"task": "sentiment", "is_classification": True}
    assert result.report.rows_read == 3 and result.report.examples == 4


def test_alpaca_drops_and_counts_empty_output():
    result = load_source(spec("alpaca", "alpaca.json"))
    assert len(result.examples) == 2
    assert result.report.dropped == {"empty_output": 1}
    assert result.examples[0].messages[0].content.startswith("Summarise the text in one sentence.\n\nBees visit")


def test_dolly_wizardlm_lima_oasst():
    dolly = load_source(spec("dolly", "dolly.jsonl")).examples
    assert dolly[0].messages[0].content.endswith("\n\nThe Little Brook rises in the hills and flows south into Lake Marrow.")
    assert [e.meta["task"] for e in dolly] == ["closed_qa", "brainstorming", "open_qa"]

    wizard = load_source(spec("wizardlm", "wizardlm.json")).examples
    assert [len(e.messages) for e in wizard] == [2, 2] and wizard[1].id == "evol_7"

    lima = load_source(spec("lima", "lima.jsonl")).examples
    assert roles(lima[1]) == ["user", "assistant", "user", "assistant"]
    assert lima[1].messages[0].content == "What herbs grow well indoors?"
    assert lima[1].messages[3].content.startswith("Harvest a few leaves")
    hub = load_source(spec("lima", "lima_hub.jsonl"))
    assert [roles(e) for e in hub.examples] == [["user", "assistant"]] * 2
    assert hub.report.dropped == {"trailing_user_turn": 1}
    assert hub.examples[0].meta == {"task": "stackexchange"}


def test_oasst_highest_ranked_path_tree_and_flat_agree():
    tree = load_source(spec("oasst", "oasst_tree.jsonl"))
    flat = load_source(spec("oasst", "oasst_flat.jsonl"))
    expected = ["How do I boil an egg?", "Lower the egg into boiling water and cook it for seven minutes.",
                "What about a soft yolk?", "Cook it for five minutes instead."]
    assert [m.content for m in tree.examples[0].messages] == expected
    assert [m.content for m in flat.examples[0].messages] == expected
    assert tree.report.dropped == {"no_assistant_reply": 1}
    english = load_source(spec("oasst", "oasst_tree.jsonl", "?lang=en"))
    assert [e.id for e in english.examples] == ["tree-1"]
    assert english.report.dropped == {"other_language": 1, "no_assistant_reply": 1}


def test_flan_collection_rows_and_template_filter():
    result = load_source(spec("flan", "flan.jsonl"))
    assert len(result.examples) == 12
    first = result.examples[0]
    assert first.meta == {"task": "anli_r1", "template_type": "zs_opt", "task_source": "Flan2021", "template_idx": 0}
    zero_shot = load_source(spec("flan", "flan.jsonl", "?template_type=zs_opt"))
    assert len(zero_shot.examples) == 6 and zero_shot.report.dropped == {"other_template_type": 6}


def test_flan_cot_tsv_unescapes_newlines():
    result = load_source(spec("flan", "gsm_toy_train.tsv"))
    first = result.examples[0]
    assert first.meta == {"task": "cot_gsm_toy", "template_type": "cot"}
    assert first.messages[1].content == "Each box holds 6 eggs.\nSo 4 boxes hold 4 * 6 = 24 eggs.\nThe answer is 24."
    assert "\nOptions:\n- yes\n- no" in result.examples[2].messages[0].content
    custom = load_source(spec("flan", "gsm_toy_train.tsv"), cot_target_template="{answer} because {rationale}")
    assert custom.examples[1].messages[1].content == "7 because He starts with 10 and gives away 3.\n10 - 3 = 7."
    with pytest.raises(ConfigError, match="cot_target_template"):
        load_source(spec("flan", "gsm_toy_train.tsv"), cot_target_template="{oops}")


def test_per_task_cap_and_sample_are_seeded():
    capped = load_source(spec("flan", "flan.jsonl"), per_task_cap=2, seed=3)
    tasks = [e.meta["task"] for e in capped.examples]
    assert sorted(tasks) == sorted(["anli_r1", "trivia_qa", "story_cloze"] * 2)
    assert capped.report.capped_out == 6
    again = load_source(spec("flan", "flan.jsonl"), per_task_cap=2, seed=3)
    assert [e.id for e in again.examples] == [e.id for e in capped.examples]
    sampled = [load_source(spec("flan", "flan.jsonl"), sample=5, seed=s) for s in range(6)]
    assert all(len(r.examples) == 5 and r.report.sampled_out == 7 for r in sampled)
    assert len({tuple(e.id for e in r.examples) for r in sampled}) > 1  # seeds give different samples
    full_ids = [e.id for e in load_source(spec("flan", "flan.jsonl")).examples]
    for r in sampled:  # kept examples stay in source order
        ids = [e.id for e in r.examples]
        assert ids == sorted(ids, key=full_ids.index)


def test_limit_and_directory_and_formats(tmp_path):
    assert len(load_source(spec("flan", "flan.jsonl"), limit=4).examples) == 4
    data = json.loads((FIXTURES / "alpaca.json").read_text())
    pd.DataFrame(data).to_parquet(tmp_path / "a.parquet")
    pd.DataFrame(data).to_csv(tmp_path / "b.csv", index=False)
    from_parquet = load_source(f"alpaca:{tmp_path / 'a.parquet'}").examples
    from_csv = load_source(f"alpaca:{tmp_path / 'b.csv'}").examples
    from_json = load_source(spec("alpaca", "alpaca.json")).examples
    assert [e.messages for e in from_parquet] == [e.messages for e in from_json] == [e.messages for e in from_csv]
    both = load_source(f"alpaca:{tmp_path}")  # a directory: its files in name order
    assert len(both.examples) == 4 and both.report.dropped == {"empty_output": 2}


# ---- bad input: each error names the file, the line or row, and what is wrong ----

def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_malformed_json_line(tmp_path):
    path = write(tmp_path, "bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:line 2: malformed JSON"):
        load_source(f"alpaca:{path}")
    skipped = load_source(f"alpaca:{path}", skip_bad_rows=True)
    assert len(skipped.examples) == 1 and skipped.report.skipped == {"malformed_row": 1}
    assert skipped.report.skipped_rows[0].startswith(f"{path}:line 2: malformed JSON")


def test_malformed_json_file_names_line_and_column(tmp_path):
    path = write(tmp_path, "bad.json", '[\n  {"id": "x", "conversations": []},\n  {"id": "y" "conversations": []}\n]\n')
    with pytest.raises(DataError, match=r"bad\.json: line 3 column 14: malformed JSON"):
        load_source(f"sharegpt:{path}")


def test_missing_field(tmp_path):
    path = write(tmp_path, "missing.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "only"}\n')
    with pytest.raises(DataError, match=r"missing\.jsonl:line 2: missing required field 'output'"):
        load_source(f"alpaca:{path}")
    sharegpt = write(tmp_path, "nomsgs.json", json.dumps([{"id": "q"}]))
    with pytest.raises(DataError, match=r"nomsgs\.json: row 0: missing required field 'conversations'"):
        load_source(f"sharegpt:{sharegpt}")


def test_non_string_content(tmp_path):
    rows = [{"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
            {"id": "b", "conversations": [{"from": "human", "value": 42}, {"from": "gpt", "value": "?"}]}]
    path = write(tmp_path, "types.json", json.dumps(rows))
    with pytest.raises(DataError, match=r"types\.json: row 1: turn 0: field 'value' must be a string, got number"):
        load_source(f"sharegpt:{path}")
    result = load_source(f"sharegpt:{path}", skip_bad_rows=True)
    assert [e.id for e in result.examples] == ["a"] and result.report.skipped == {"wrong_type": 1}
    flan = write(tmp_path, "flan.jsonl", '{"inputs": ["not", "text"], "targets": "t"}\n')
    with pytest.raises(DataError, match=r"flan\.jsonl:line 1: field 'inputs' must be a string, got array"):
        load_source(f"flan:{flan}")


def test_unknown_role(tmp_path):
    rows = [{"id": "r", "conversations": [{"from": "narrator", "value": "Once upon a time"}]}]
    path = write(tmp_path, "roles.json", json.dumps(rows))
    with pytest.raises(DataError, match=r"roles\.json: row 0: turn 0: unknown role 'narrator'"):
        load_source(f"sharegpt:{path}")
    oasst = write(tmp_path, "tree.jsonl", json.dumps({"message_tree_id": "t", "prompt": {
        "message_id": "a", "text": "q", "role": "moderator", "replies": []}}) + "\n")
    with pytest.raises(DataError, match=r"tree\.jsonl:line 1: prompt: unknown role 'moderator'"):
        load_source(f"oasst:{oasst}")


def test_wrong_tsv_field_count_and_missing_file(tmp_path):
    path = write(tmp_path, "cot_train.tsv", "q1\ta1\tr1\nq2\ta2\n")
    with pytest.raises(DataError, match=r"cot_train\.tsv:line 2: expected 3 tab-separated fields"):
        load_source(f"flan:{path}")
    assert len(load_source(f"flan:{path}", skip_bad_rows=True).examples) == 1
    with pytest.raises(DataError, match="no such file"):
        load_source(f"flan:{tmp_path / 'absent.jsonl'}")
