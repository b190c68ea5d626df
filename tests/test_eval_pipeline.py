"""The eval suite end to end on a tiny random model: scoring primitives, result files, win rate, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from harness.eval.alpacafarm import DecodingConfig
from harness.eval.alpacafarm_data import check_against_reference, read_eval_set, read_model_outputs
from harness.eval.bbh_scoring import standard_correct, survey_correct
from harness.eval.judge_local import LocalJudge
from harness.eval.lm import EvalLM
from harness.eval.results import read_eval_result
from harness.eval.suite import SuiteConfig, run_suite
from harness.eval.winrate_cli import WinrateArgs, main
from harness.model.llama import Llama, get_config
from harness.model.tokenizer import load_tokenizer

CANARY = "CANARY LINE (dropped by the reader)\n-----\n"
COT = {
    "navigate": "Decide whether the walk returns to the start.\n\n"
                + "\n\n".join(f"Q: Take {n} steps forward, then {n} steps back. Do you return?\n"
                              f"A: Let's think step by step.\nForward then back cancels. So the answer is Yes." for n in (1, 2, 3)),
    "date_understanding": "Work out dates.\n\n"
                          + "\n\n".join(f"Q: Today is 01/0{n}/2000. What is today?\nOptions:\n(A) 01/0{n}/2000\n(B) 02/02/2002\n"
                                        f"A: Let's think step by step.\nToday is given. So the answer is (A)." for n in (1, 2, 3)),
}
BBH_ITEMS = {
    "navigate": [{"input": "Take 4 steps left. Take 4 steps right. Do you return?", "target": "Yes"},
                 {"input": "Take 1 step forward. Do you return?", "target": "No"}],
    "date_understanding": [{"input": "Today is 03/04/2001. What is today?\nOptions:\n(A) 03/04/2001\n(B) 05/06/2007",
                            "target": "(A)"},
                           {"input": "Yesterday was 03/04/2001. What is today?\nOptions:\n(A) 01/01/1999\n(B) 03/05/2001",
                            "target": "(B)"}],
}
MMLU = {
    "anatomy": [["Which organ pumps blood?", "Liver", "Heart", "Lung", "Skin", "B"],
                ["How many chambers has the human heart?", "Two", "Three", "Four", "Five", "C"]],
    "astronomy": [["Which planet is closest to the Sun?", "Mercury", "Venus", "Earth", "Mars", "A"],
                  ["What does the Moon orbit?", "Mars", "The Sun", "Jupiter", "The Earth", "D"]],
}
ALPACA = [{"instruction": "Name a colour.", "input": ""},
          {"instruction": "Summarise the text.", "input": "Cats sleep a lot."},
          {"instruction": "Give a synonym.", "input": "happy"}]


def write_fixtures(root: Path) -> Path:
    """A data root laid out like ../shared/data, with the test's own tiny items."""
    import csv

    for split in ("dev", "test"):
        (root / "mmlu" / split).mkdir(parents=True)
        for subject, rows in MMLU.items():
            with open(root / "mmlu" / split / f"{subject}_{split}.csv", "w", newline="") as handle:
                csv.writer(handle).writerows(rows)
    (root / "bbh" / "bbh").mkdir(parents=True)
    (root / "bbh" / "cot-prompts").mkdir()
    for task, examples in BBH_ITEMS.items():
        (root / "bbh" / "bbh" / f"{task}.json").write_text(json.dumps({"canary": "x", "examples": examples}))
        (root / "bbh" / "cot-prompts" / f"{task}.txt").write_text(CANARY + COT[task])
    (root / "alpaca_farm").mkdir()
    (root / "alpaca_farm" / "eval_set.json").write_text(json.dumps(ALPACA))
    return root


@pytest.fixture(scope="module")
def tiny_lm():
    tokenizer = load_tokenizer(None)
    config = get_config("tiny", vocab_size=tokenizer.vocab_size, max_seq_len=1024)
    return EvalLM(Llama(config, rngs=nnx.Rngs(0)), tokenizer, batch_size=3, pad_multiple=32)


@nnx.jit
def _full_logprobs(model, tokens):
    return jax.nn.log_softmax(model(tokens).astype(jnp.float32), axis=-1)


def _reference_logprobs(model, ids: list[int]) -> np.ndarray:
    """Full-sequence logits of one row (right-padded to 64 so every call shares one program)."""
    tokens = np.zeros((1, 64), np.int32)
    tokens[0, : len(ids)] = ids
    return np.asarray(_full_logprobs(model, jnp.asarray(tokens)))[0, : len(ids)]


def test_loglikelihood_matches_a_full_forward(tiny_lm):
    rng = np.random.default_rng(0)
    requests = [(list(rng.integers(0, 500, n)), list(rng.integers(0, 500, k)))
                for n, k in [(5, 1), (40, 3), (17, 9), (2, 2)]]  # 4 requests, batches of 3: padding rows too
    ours = tiny_lm.loglikelihood(requests)
    for (context, continuation), (logprob, greedy) in zip(requests, ours):
        ref = _reference_logprobs(tiny_lm.model, context + continuation)
        steps = [ref[len(context) - 1 + j] for j in range(len(continuation))]
        expected = sum(step[t] for step, t in zip(steps, continuation))
        assert logprob == pytest.approx(expected, abs=1e-4)
        assert greedy == all(int(np.argmax(step)) == t for step, t in zip(steps, continuation))
    nxt = tiny_lm.next_token_logprobs([c for c, _ in requests])
    for row, (context, _) in zip(nxt, requests):
        np.testing.assert_allclose(row, _reference_logprobs(tiny_lm.model, context)[-1], atol=1e-5)
    doc = list(rng.integers(0, 500, 30))
    (rolling,) = tiny_lm.rolling_loglikelihood([doc])
    full = _reference_logprobs(tiny_lm.model, [tiny_lm.tokenizer.bos_id if tiny_lm.tokenizer.bos_id is not None
                                               else tiny_lm.tokenizer.pad_id] + doc)
    assert rolling == pytest.approx(sum(full[i][t] for i, t in enumerate(doc)), abs=1e-3)


@pytest.mark.parametrize("protocol", ["survey", "standard"])
def test_suite_writes_contract_files(tiny_lm, tmp_path, protocol):
    data = write_fixtures(tmp_path / "data")
    tasks = ("mmlu", "bbh", "alpacafarm") if protocol == "survey" else ("mmlu", "bbh")  # generation is shared
    config = SuiteConfig(model="tiny-test", tasks=tasks, protocol=protocol,
                         out_dir=str(tmp_path / "eval"), data_dir=str(data), bbh_subset="all",
                         bbh_tasks=tuple(BBH_ITEMS), bbh_max_new_tokens=12, mmlu_shots=1 if protocol == "standard" else None,
                         decoding=DecodingConfig(max_new_tokens=6), template="survey")
    written = run_suite(config, lm=tiny_lm, log=lambda *_: None)
    assert set(written) == set(tasks)
    for task, path in written.items():
        result = read_eval_result(path)
        assert result.task == task and result.n == len(result.records) > 0
    mmlu = read_eval_result(written["mmlu"])
    assert mmlu.protocol == protocol and mmlu.n == 4 and mmlu.metrics["shots"] == (1 if protocol == "standard" else 0)
    assert mmlu.score == pytest.approx(100 * sum(r["correct"] for r in mmlu.records) / 4)
    assert set(mmlu.metrics["per_category"]) == {"STEM", "other"}
    bbh = read_eval_result(written["bbh"])
    assert bbh.n == 4 and set(bbh.metrics["per_task"]) == set(BBH_ITEMS)
    questions = {f"{t}/{i}": e["input"] for t, rows in BBH_ITEMS.items() for i, e in enumerate(rows)}
    for record in bbh.records:  # the stored verdicts are the scorers' verdicts on the stored outputs
        if protocol == "survey":
            assert record["correct"] == survey_correct(questions[record["id"]], record["gold"], record["output"])
        else:
            assert (record["correct"], record["prediction"]) == standard_correct(record["gold"], record["output"])
    if protocol == "standard":
        return
    outputs = read_model_outputs(tmp_path / "eval" / "alpacafarm_model_outputs.json")
    check_against_reference(outputs, read_eval_set(data / "alpaca_farm"), "outputs")
    assert outputs[1]["instruction"] == "Summarise the text.\n\nCats sleep a lot."


class CountingJudge(LocalJudge):
    """LocalJudge that counts the pairs it is asked about."""

    calls = 0

    def judge_pairs(self, pairs):
        CountingJudge.calls += len(pairs)
        return super().judge_pairs(pairs)


def test_winrate_with_local_judge_resumes_from_cache(tiny_lm, tmp_path):
    model = [{"instruction": f"Task {i}", "output": f"Answer {i}" * (i + 1)} for i in range(3)]
    baseline = [{"instruction": f"Task {i}", "output": "No."} for i in range(3)]
    (tmp_path / "m.json").write_text(json.dumps(model))
    (tmp_path / "b.json").write_text(json.dumps(baseline))
    args = WinrateArgs(model_outputs=tmp_path / "m.json", baseline_outputs=tmp_path / "b.json", out=tmp_path / "out")
    judge = CountingJudge(tiny_lm, spec="tiny-test", template="survey")
    result = main(args, judge=judge, log=lambda *_: None)
    assert CountingJudge.calls == 6 and result.metrics["n_pairs"] == 3
    assert result.metrics["position_bias"] is not None and result.extra["judge"]["name"] == "local:tiny-test"
    again = main(args, judge=judge, log=lambda *_: None)
    assert CountingJudge.calls == 6 and again.score == result.score
    stored = read_eval_result(tmp_path / "out" / "winrate.json")
    assert stored.task == "winrate" and stored.metrics["mean_length_baseline"] == 3.0


def test_cli_errors_are_one_line(tmp_path, capsys):
    from harness.cli import main as cli_main

    model = [{"instruction": "A", "output": "x"}, {"instruction": "B", "output": "y"}]
    baseline = [{"instruction": "A", "output": "x"}, {"instruction": "C", "output": "y"}]
    (tmp_path / "m.json").write_text(json.dumps(model))
    (tmp_path / "b.json").write_text(json.dumps(baseline))
    with pytest.raises(SystemExit) as info:
        cli_main(["eval", "winrate", "--model-outputs", str(tmp_path / "m.json"),
                  "--baseline-outputs", str(tmp_path / "b.json"), "--judge", "openai:x"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "instruction 1" in err and "'B'" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as info:
        cli_main(["eval", "tiny", "--tasks", "mmlu", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert info.value.code == 2 and "no mmlu/ folder" in capsys.readouterr().err


def test_lm_eval_adapter_on_a_local_task(tiny_lm, tmp_path):
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is an optional extra")
    from lm_eval.api.instance import Instance
    from lm_eval.tasks import TaskManager

    from harness.eval.lm_eval_adapter import HarnessLM, split_request

    docs = [{"question": f"Is {n} even?", "choices": ["yes", "no"], "answer": n % 2} for n in range(4)]
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    (tmp_path / "harness_parity.yaml").write_text(
        "task: harness_parity\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'docs.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n"
    )
    adapter = HarnessLM(tiny_lm)
    results = lm_eval.simple_evaluate(model=adapter, tasks=["harness_parity"],
                                      task_manager=TaskManager(include_path=str(tmp_path)), log_samples=False)
    acc = results["results"]["harness_parity"]["acc,none"]
    # The same decision computed directly through EvalLM.
    tok = tiny_lm.tokenizer
    correct = 0
    for doc in docs:
        scores = [tiny_lm.loglikelihood([split_request(tok, doc["question"], " " + c)])[0][0] for c in doc["choices"]]
        correct += int(np.argmax(scores)) == doc["answer"]
    assert acc == pytest.approx(correct / len(docs))

    requests = [Instance("generate_until", {}, ("Count: one, two,", {"until": ["\n"], "max_gen_toks": 5}), 0),
                Instance("loglikelihood_rolling", {}, ("Some text to score.",), 0)]
    (generated,) = adapter.generate_until(requests[:1])
    assert isinstance(generated, str) and "\n" not in generated
    (rolling,) = adapter.loglikelihood_rolling(requests[1:])
    assert rolling == pytest.approx(tiny_lm.rolling_loglikelihood([tok.encode("Some text to score.")])[0])
