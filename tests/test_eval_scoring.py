"""Model-free parts of the eval suite: readers, BBH scorers, win-rate aggregation, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import EvalError
from harness.eval.alpacafarm_data import align_outputs, check_against_reference, read_eval_set, read_model_outputs
from harness.eval.bbh import survey_question
from harness.eval.bbh_data import BBH3K_SIZE, MULTIPLE_CHOICE_TASKS, TASKS, bbh3k_subset, read_bbh, read_cot_prompts
from harness.eval.bbh_scoring import answers_match, extract_cot_answer, standard_correct, survey_correct
from harness.eval.judges import Verdict, VerdictCache, load_prompt, parse_verdict
from harness.eval.mmlu import build_prompt
from harness.eval.mmlu_data import CATEGORIES, SUBJECTS, category_of, read_mmlu_csv
from harness.eval.results import EvalResult, read_eval_result, write_eval_result
from harness.eval.winrate import JudgedPair, aggregate, winrate_from_annotations
from harness.eval.winrate_cli import WinrateArgs, main

DATE_QUESTION = (
    "Today is Christmas Eve of 1937. What is the date tomorrow in MM/DD/YYYY?\n"
    "Options:\n(A) 12/11/1937\n(B) 12/25/1937\n(C) 01/04/1938"
)


# -- BBH scorers -------------------------------------------------------------------------------
def test_survey_scorer_first_line_and_option_text():
    assert survey_correct(DATE_QUESTION, "(B)", "(B)\nbecause tomorrow is Christmas")
    assert survey_correct(DATE_QUESTION, "(B)", "The answer is (b).")
    assert survey_correct(DATE_QUESTION, "(B)", "12/25/1937")  # the option text counts
    assert not survey_correct(DATE_QUESTION, "(B)", "(A)\n(B)")  # only the first line is read
    assert survey_correct("Is it? ", "Yes", "yes, it is")
    assert not survey_correct("Is it? ", "Yes", "No")


def test_survey_scorer_empty_first_line_defect_fixed_and_replicable():
    for output in ("", "\n(A) 12/11/1937", "\n\nanything"):
        assert not survey_correct(DATE_QUESTION, "(B)", output)
        assert survey_correct(DATE_QUESTION, "(B)", output, replicate_defects=True)
    # The last option lost its last character in the survey code; the fix keeps it whole.
    assert survey_correct(DATE_QUESTION, "(C)", "01/04/1938")
    assert survey_correct(DATE_QUESTION, "(C)", "01/04/193", replicate_defects=True)
    assert survey_correct(DATE_QUESTION, "(C)", "01/04/193")  # "prediction in option text" is the survey's rule
    from harness.eval.bbh_scoring import option_text

    assert option_text(DATE_QUESTION.lower(), "(c)") == "01/04/1938"
    assert option_text(DATE_QUESTION.lower(), "(c)", replicate_defects=True) == "01/04/193"


def test_survey_question_suffix():
    assert survey_question("Desc.", "Q text") == "Desc.\n\nQ: Q text"
    # The survey's rstrip("\nA: ") also eats a question's trailing A's and colons.
    assert survey_question("Desc.", "Pick: A", replicate_defects=True) == "Desc.\n\nQ: Pick"
    assert survey_question("Desc.", "Pick: A") == "Desc.\n\nQ: Pick: A"


def test_cot_extraction_and_exact_match():
    output = "Step 1 ... Step 2 ... So the answer is (B).\nQ: next"
    assert extract_cot_answer(output) == "(B)."
    assert standard_correct("(B)", output) == (True, "(B).")
    assert standard_correct("(C)", output)[0] is False
    assert standard_correct("(B)", "I think it is (B)") == (False, None)
    assert standard_correct("valid", "So The Answer Is: Valid.")[0]
    assert standard_correct("-12", "so the answer is -12.")[0]
    assert not standard_correct("-12", "so the answer is 12.")[0]
    assert standard_correct("] ) }", "So the answer is ] ) }.")[0]
    assert not standard_correct("] ) }", "So the answer is ] }.")[0]
    assert answers_match("B", "(B)") and answers_match("(b) 12/25/1937", "(B)") and not answers_match("BB", "(B)")
    assert answers_match('"Monsters, Inc"', "Monsters, Inc")


# -- readers on the real public samples -------------------------------------------------------------
def test_mmlu_reader_and_categories(shared_data):
    test = read_mmlu_csv(shared_data / "mmlu", "test")
    assert sorted(test) == list(SUBJECTS) and len(SUBJECTS) == 57
    assert sum(len(v) for v in test.values()) == 14042
    dev = read_mmlu_csv(shared_data / "mmlu", "dev")
    assert all(len(v) == 5 for v in dev.values())
    assert {category_of(s) for s in SUBJECTS} == set(CATEGORIES)
    assert category_of("college_physics") == "STEM" and category_of("professional_law") == "humanities"
    assert category_of("sociology") == "social sciences" and category_of("nutrition") == "other"
    prompt = build_prompt(test["anatomy"][0], dev["anatomy"][:2])
    assert prompt.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert prompt.count("\nAnswer:") == 3 and prompt.endswith("\nAnswer:")
    assert "\nA. " in prompt and "\nD. " in prompt


def test_bbh_reader_and_bbh3k_subset(shared_data):
    items = read_bbh(shared_data / "bbh")
    assert len(items) == 27 and sum(len(v) for v in items.values()) == 6511
    prompts = read_cot_prompts(shared_data / "bbh", TASKS)
    assert all(p.text.count("Q:") == 3 and p.description and "canary" not in p.text for p in prompts.values())
    subset = bbh3k_subset(items)
    assert set(subset) == set(MULTIPLE_CHOICE_TASKS)
    chosen = [item for v in subset.values() for item in v]
    assert len(chosen) == BBH3K_SIZE
    assert all(item.target.startswith("(") and item.target.endswith(")") for item in chosen)
    assert bbh3k_subset(items) == subset  # deterministic
    eligible = {t: sum(1 for i in items[t] if i.target.startswith("(")) for t in MULTIPLE_CHOICE_TASKS}
    total = sum(eligible.values())
    assert total == 4071
    for task, chosen_items in subset.items():  # quotas proportional to the eligible counts
        assert abs(len(chosen_items) - BBH3K_SIZE * eligible[task] / total) < 1


def test_winrate_reproduces_the_alpaca_eval_leaderboard(shared_data, capsys):
    path = shared_data / "alpaca_eval/results/alpaca-7b/alpaca_eval_gpt4/annotations.json"
    leaderboard = (shared_data / "alpaca_eval/leaderboards/alpaca_eval_gpt4_leaderboard.csv").read_text()
    published = next(line.split(",")[2] for line in leaderboard.splitlines() if line.startswith("Alpaca 7B,"))
    result = winrate_from_annotations(path)
    assert f"{result.score:.2f}" == f"{float(published):.2f}" == "26.46"
    assert result.metrics["ties"] == 16 and result.metrics["n"] == 805
    main(WinrateArgs(annotations=path))
    assert "win rate: 26.46" in capsys.readouterr().out


def test_alpacafarm_eval_set_matches_alpaca_eval(shared_data):
    farm = read_eval_set(shared_data / "alpaca_farm/eval_gpt-3.5-turbo-0301.json")
    assert len(farm) == 805
    outputs = read_model_outputs(shared_data / "alpaca_eval/results/alpaca-7b/model_outputs.json")
    check_against_reference(outputs, farm, "alpaca-7b")  # input folded in as alpaca_eval does


# -- aggregation ------------------------------------------------------------------------------------
def test_aggregate_both_orders_and_position_bias():
    # A judge that always prefers whatever is shown first: every pair ends a tie, bias +0.5.
    pairs = [JudgedPair(f"q{i}", "base", "model!", 1.0, 1.0, True) for i in range(4)]
    m = aggregate(pairs)
    assert m["win_rate"] == 50.0 and m["ties"] == 4 and m["position_bias"] == 0.5
    assert m["order_consistency"] == 0.0 and m["mean_length_model"] == 6 and m["mean_length_baseline"] == 4
    # A consistent judge: the model wins 3 of 4, one order of one pair unparsed.
    pairs = [JudgedPair("a", "b", "m", 2.0, 1.0, True), JudgedPair("b", "b", "m", 2.0, None, True),
             JudgedPair("c", "b", "m", 2.0, 1.0, True), JudgedPair("d", "b", "m", 1.0, 2.0, True)]
    m = aggregate(pairs)
    assert m["win_rate"] == 75.0 and m["parse_failures"] == 1 and m["position_bias"] == 0.0
    assert m["order_consistency"] == 1.0 and m["n"] == 4


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([1.0, 2.0, 1.5, 0, None]), min_size=1, max_size=40))
def test_swapping_model_and_baseline_mirrors_the_win_rate(preferences):
    from harness.eval.winrate import normalize_preference

    forward = [JudgedPair(str(i), "b", "m", normalize_preference(p)) for i, p in enumerate(preferences)]
    mirrored = [JudgedPair(p.instruction, p.model_output, p.baseline_output,
                           None if p.forward is None else 3.0 - p.forward) for p in forward]
    a, b = aggregate(forward), aggregate(mirrored)
    if a["n"]:
        assert a["win_rate"] + b["win_rate"] == pytest.approx(100.0)
        assert a["standard_error"] == pytest.approx(b["standard_error"])
        assert a["ties"] == b["ties"]
    assert a["parse_failures"] == b["parse_failures"] == preferences.count(None)


def test_parse_verdict():
    assert parse_verdict("a") == 1.0 and parse_verdict("B") == 2.0 and parse_verdict("(b).") == 2.0
    assert parse_verdict("Answer (a)") == 1.0 and parse_verdict("**b**") == 2.0 and parse_verdict("tie") == 1.5
    assert parse_verdict("[{'model': 'model_2', 'rank': 1}, {'model': 'model_1', 'rank': 2}]") == 2.0
    assert parse_verdict("I cannot decide") is None and parse_verdict("") is None and parse_verdict("ab") is None


def test_user_prompt_file(tmp_path, shared_data):
    prompt = load_prompt(shared_data / "alpaca_eval/annotator_prompts/alpaca_eval_gpt4/alpaca_eval.txt")
    roles = [role for role, _ in prompt.messages]
    assert roles == ["system", "user"]
    rendered = prompt.render("INSTR", "OUT-ONE", "OUT-TWO")[1]["content"]
    assert "INSTR" in rendered and rendered.index("OUT-ONE") < rendered.index("OUT-TWO")
    bad = tmp_path / "p.txt"
    bad.write_text("only {instruction} and {output_1}")
    with pytest.raises(EvalError, match="output_2"):
        load_prompt(bad)


# -- cache ------------------------------------------------------------------------------------------
def test_verdict_cache_survives_a_cut_write(tmp_path):
    path = tmp_path / "v.jsonl"
    cache = VerdictCache(path)
    cache.put("k1", Verdict(2.0, "b"), "j")
    cache.put("k2", Verdict(None, "??"), "j")
    with open(path, "a") as handle:
        handle.write('{"key": "k3", "prefer')  # a crash in the middle of a write
    reopened = VerdictCache(path)
    assert reopened.discarded == 1 and set(reopened.entries) == {"k1", "k2"}
    assert reopened.get("k2") == Verdict(None, "??")
    reopened.put("k3", Verdict(1.0, "a"), "j")
    assert set(VerdictCache(path).entries) == {"k1", "k2", "k3"}
    path.write_text('{"key": "k1", "preference": 1.0}\nnot json\n{"key": "k2", "preference": 2.0}\n')
    with pytest.raises(EvalError, match="line 2"):
        VerdictCache(path)


# -- bad input --------------------------------------------------------------------------------------
def test_eval_file_round_trip_and_missing_fields(tmp_path):
    result = EvalResult("mmlu", "standard", 41.5, {"accuracy": 41.5}, 2, [{"id": "a"}, {"id": "b"}],
                        extra={"model": "tiny"})
    path = write_eval_result(result, tmp_path / "eval")
    assert read_eval_result(path) == result
    data = json.loads(path.read_text())
    del data["protocol"]
    path.write_text(json.dumps(data))
    with pytest.raises(EvalError, match=r"mmlu\.json: missing field 'protocol'"):
        read_eval_result(path)
    data["protocol"], data["n"] = "standard", "two"
    path.write_text(json.dumps(data))
    with pytest.raises(EvalError, match="field 'n' must be int"):
        read_eval_result(path)


def test_outputs_that_do_not_line_up_name_the_first_mismatch(tmp_path):
    reference = [{"instruction": f"Do task {i}.", "output": f"ref {i}"} for i in range(5)]
    shifted = [dict(r) for r in reference]
    shifted[3]["instruction"] = "Do task three, but differently."
    with pytest.raises(EvalError, match=r"instruction 3 .*'Do task three, but differently\.'"):
        align_outputs(shifted, reference, model_name="model.json", baseline_name="ref.json")
    with pytest.raises(EvalError, match=r"ref\.json: instruction 4 has no counterpart"):
        align_outputs(reference[:4], reference, model_name="model.json", baseline_name="ref.json")
    reordered = align_outputs(reference[::-1], reference)
    assert all(m["instruction"] == b["instruction"] for m, b in reordered)

    path = tmp_path / "model_outputs.json"
    path.write_text(json.dumps([{"instruction": "x", "output": "y"}, {"instruction": "z"}]))
    with pytest.raises(EvalError, match="output 1 is missing the string field 'output'"):
        read_model_outputs(path)


def test_mmlu_and_bbh_bad_rows(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "anatomy_test.csv").write_text('"Q?",a,b,c,d,A\n"Q2?",a,b,c,d,E\n')
    with pytest.raises(EvalError, match=r"anatomy_test\.csv: row 2: answer 'E'"):
        read_mmlu_csv(tmp_path, "test")
    (tmp_path / "bbh").mkdir()
    (tmp_path / "bbh" / "navigate.json").write_text(json.dumps({"examples": [{"input": "q", "target": "Yes"}, {"input": "q"}]}))
    with pytest.raises(EvalError, match=r"examples\[1\] is missing the string field 'target'"):
        read_bbh(tmp_path, ["navigate"])
