"""MMLU and the local judge on the embedded SmolLM2 agree with transformers reading the same GGUF.

Both sides get the same token ids (the harness tokenizer's), so this checks the harness's
prompting, batching/padding, position gathering and letter scoring against an independent
forward pass (transformers' LlamaForCausalLM on torch, CPU, float32).
"""

from __future__ import annotations

import numpy as np
import pytest

from harness.data.records import Message
from harness.eval.judge_local import LocalJudge
from harness.eval.lm import EvalLM
from harness.eval.mmlu import MMLUConfig, build_prompt, evaluate_mmlu, letter_token_ids
from harness.eval.mmlu_data import read_mmlu_csv

pytestmark = pytest.mark.slow

# One subject per category; from each, the shortest test question (fast on two CPU cores).
SUBJECTS = ("high_school_geography", "marketing", "college_physics", "philosophy")
ITEMS_PER_SUBJECT = 1


def _load_harness_smollm2():
    """The embedded model through the loader the CLI uses (or the GGUF importer while it is absent)."""
    from harness.model.tokenizer import load_tokenizer

    try:
        from harness.model.loading import load_model
    except ModuleNotFoundError:
        from harness.model.assets import smollm2_gguf_path
        from harness.model.convert_gguf import load_gguf

        return load_gguf(smollm2_gguf_path()), load_tokenizer(None)
    model, tokenizer = load_model("smollm2-135m")
    return model, tokenizer or load_tokenizer(None)


@pytest.fixture(scope="module")
def harness_lm():
    model, tokenizer = _load_harness_smollm2()
    return EvalLM(model, tokenizer, batch_size=ITEMS_PER_SUBJECT * len(SUBJECTS))


@pytest.fixture(scope="module")
def short_mmlu(shared_data, tmp_path_factory):
    """A CSV-layout copy of the shortest real items of SUBJECTS (and their dev exemplars)."""
    import csv

    root = tmp_path_factory.mktemp("mmlu")
    for split in ("dev", "test"):
        (root / split).mkdir()
        for subject in SUBJECTS:
            with open(shared_data / "mmlu" / split / f"{subject}_{split}.csv", newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
            if split == "test":
                rows = sorted(rows, key=lambda r: len("".join(r)))[:ITEMS_PER_SUBJECT]
            with open(root / split / f"{subject}_{split}.csv", "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows(rows)
    return root


@pytest.fixture(scope="module")
def torch_model():
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from harness.model.assets import smollm2_gguf_path

    path = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval()


def _torch_next_logprobs(torch_model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        logits = torch_model(torch.tensor([ids])).logits[0, -1].double()
    return torch.log_softmax(logits, dim=-1).numpy()


@pytest.mark.parametrize("protocol,shots", [("survey", 0), ("standard", 0)])
def test_mmlu_matches_transformers(short_mmlu, harness_lm, torch_model, protocol, shots):
    from harness.data.templates import render_prompt

    config = MMLUConfig(str(short_mmlu), protocol=protocol, shots=shots, subjects=SUBJECTS,
                        limit=ITEMS_PER_SUBJECT, template="tokenizer")
    result = evaluate_mmlu(harness_lm, config)
    assert result.n == len(SUBJECTS) * ITEMS_PER_SUBJECT

    tok = harness_lm.tokenizer
    test = read_mmlu_csv(short_mmlu, "test", list(SUBJECTS))
    dev = read_mmlu_csv(short_mmlu, "dev", list(SUBJECTS))
    items = {item.id: item for rows in test.values() for item in rows[:ITEMS_PER_SUBJECT]}
    letter_ids = letter_token_ids(tok, "" if protocol == "survey" else " ")
    for record in result.records:
        item = items[record["id"]]
        prompt = build_prompt(item, dev[item.subject][:shots])
        if protocol == "survey":
            prompt = render_prompt("tokenizer", [Message("user", prompt)], tok)
        reference = _torch_next_logprobs(torch_model, tok.encode(prompt))[letter_ids]
        ours = np.array([record["logprobs"][letter] for letter in "ABCD"])
        assert record["prediction"] == "ABCD"[int(np.argmax(reference))], record["id"]
        np.testing.assert_allclose(ours, reference, atol=2e-3, rtol=0)
        assert record["correct"] == (record["prediction"] == item.answer)
    m = result.metrics
    assert m["accuracy"] == pytest.approx(100 * sum(r["correct"] for r in result.records) / result.n)
    assert set(m["per_subject"]) == set(SUBJECTS) and set(m["per_category"]) == {"STEM", "humanities", "social sciences", "other"}


def test_local_judge_matches_transformers(harness_lm, torch_model):
    judge = LocalJudge(harness_lm)
    pairs = [
        ("Name the capital of France.", "The capital of France is Paris.", "I like turtles."),
        ("Name the capital of France.", "I like turtles.", "The capital of France is Paris."),
    ]
    verdicts = judge.judge_pairs(pairs)
    a, b = judge.token_ids
    for pair, verdict in zip(pairs, verdicts):
        reference = _torch_next_logprobs(torch_model, harness_lm.tokenizer.encode(judge.render(*pair)))
        expected = 1.0 if reference[a] > reference[b] else 2.0
        assert verdict.preference == expected
        first = float(verdict.raw.split()[0].split("=")[1])
        assert first == pytest.approx(reference[a], abs=2e-3)
