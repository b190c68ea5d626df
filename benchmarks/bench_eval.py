"""Evaluation throughput on CPU with the embedded SmolLM2-135M: harness vs transformers (PyTorch).

Measures (after one warm-up pass each, so compilation is excluded):

- MMLU items/s, survey protocol (one forward pass per item, letter logits), harness batched vs
  transformers scoring the same token ids one item at a time and batched (right padding);
- generated tokens/s, greedy, with batch size 1 and batch size B, harness ``generate`` vs
  transformers ``generate`` (left padding for the batched peer).

Usage: python benchmarks/bench_eval.py [--data ../shared/data] [--items 16] [--prompts 8] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from harness.data.records import Message
    from harness.data.templates import render_prompt
    from harness.eval.alpacafarm_data import read_eval_set
    from harness.eval.lm import EvalLM
    from harness.eval.mmlu import build_prompt
    from harness.eval.mmlu_data import read_mmlu_csv
    from harness.model.assets import smollm2_gguf_path
    from harness.model.generate import generate
    from harness.model.loading import load_model

    model, tok = load_model("smollm2-135m")
    lm = EvalLM(model, tok, batch_size=args.prompts)
    path = smollm2_gguf_path()
    peer = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()

    test = read_mmlu_csv(Path(args.data) / "mmlu", "test", ["high_school_geography", "marketing"])
    items = [i for rows in test.values() for i in rows][: args.items]
    prompts = [tok.encode(render_prompt("tokenizer", [Message("user", build_prompt(i, []))], tok)) for i in items]

    def peer_score(rows, batch):
        with torch.no_grad():
            for start in range(0, len(rows), batch):
                chunk = rows[start:start + batch]
                width = max(len(r) for r in chunk)
                ids = torch.full((len(chunk), width), tok.pad_id)
                for j, r in enumerate(chunk):
                    ids[j, : len(r)] = torch.tensor(r)
                peer(ids)

    lm.next_token_logprobs(prompts)  # warm-up (compilation)
    _, t_ours = timed(lambda: lm.next_token_logprobs(prompts))
    peer_score(prompts[:2], 1)
    _, t_peer1 = timed(lambda: peer_score(prompts, 1))
    _, t_peerb = timed(lambda: peer_score(prompts, args.prompts))

    instructions = read_eval_set(Path(args.data) / "alpaca_farm" / "eval_gpt-3.5-turbo-0301.json")[: args.prompts]
    gen_prompts = [tok.encode(render_prompt("tokenizer", [Message("user", i.instruction)], tok)) for i in instructions]
    n_new = args.new_tokens

    def ours(batch):
        out = generate(model, gen_prompts, n_new, batch_size=batch)  # no EOS: every row makes n_new tokens
        return sum(len(o) for o in out)

    def theirs(batch):
        tok_count = 0
        with torch.no_grad():
            for start in range(0, len(gen_prompts), batch):
                chunk = gen_prompts[start:start + batch]
                width = max(len(r) for r in chunk)
                ids = torch.full((len(chunk), width), tok.pad_id)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for j, r in enumerate(chunk):
                    ids[j, width - len(r):] = torch.tensor(r)
                    mask[j, width - len(r):] = 1
                out = peer.generate(ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new,
                                    do_sample=False, pad_token_id=tok.pad_id)
                tok_count += (out.shape[1] - width) * len(chunk)
        return tok_count

    rows = []
    for batch in (1, args.prompts):
        ours(batch)  # warm-up
        n_ours, t_o = timed(lambda: ours(batch))
        n_theirs, t_t = timed(lambda: theirs(batch))
        rows.append((f"generate tokens/s, batch {batch}", n_ours / t_o, n_theirs / t_t))

    print(f"\nSmolLM2-135M on CPU ({os.cpu_count()} cores visible), {len(items)} MMLU items, "
          f"{len(gen_prompts)} prompts x {n_new} new tokens")
    print(f"| measure | harness (JAX) | transformers (PyTorch) | ratio |\n|---|---:|---:|---:|")
    table = [(f"MMLU items/s (harness batch {args.prompts} vs peer batch 1)", len(items) / t_ours, len(items) / t_peer1),
             (f"MMLU items/s (both batch {args.prompts})", len(items) / t_ours, len(items) / t_peerb), *rows]
    for name, a, b in table:
        print(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.2f} |")
    speedup = rows[1][1] / rows[0][1]
    print(f"harness batched/batch-1 generation speed-up: {speedup:.2f}x")


if __name__ == "__main__":
    main()
