"""Decode throughput: harness KV-cache generation vs transformers' eager PyTorch ``generate`` (CPU).

Both sides run SmolLM2-135M-Instruct from the embedded GGUF file, dequantised to float32, on the
same prompt(s), greedy, with no EOS so every row makes exactly ``--new-tokens`` tokens. Decode
tokens/s excludes the prefill: each side is timed at ``max_new_tokens=1`` (prefill plus the first
token) and at ``max_new_tokens=N``, and the rate is ``batch * (N - 1) / (t_N - t_1)``. Every
figure is the best of ``--repeats`` interleaved runs (the machine is shared; the best run is the
one least disturbed), and the peer is measured in the same process, so the ratio is the number to
quote.

    python benchmarks/bench_generate.py [--batch 1 8] [--new-tokens 64] [--prompt-tokens 32]

``--xla-flags`` is appended to ``XLA_FLAGS`` before jax starts (e.g. to try
``--xla_cpu_multi_thread_eigen=false``); ``--chunk-sizes`` also times the decode loop cut into
jitted chunks of that many steps (1 = one jitted call per token, driven from Python).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-sizes", type=int, nargs="*", default=[],
                        help="also time the decode loop in jitted chunks of this many steps")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS before jax starts")
    return parser.parse_args(argv)


def load_models():
    """(harness model, transformers model) of the embedded SmolLM2 GGUF, both float32."""
    import torch
    from transformers import AutoModelForCausalLM

    from harness.model.assets import smollm2_gguf_path
    from harness.model.convert import load_gguf

    path = smollm2_gguf_path()
    ours = load_gguf(path, dtype="float32")
    theirs = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    theirs.eval()
    return ours, theirs


def prompt_batch(batch: int, length: int, vocab: int = 49152) -> list[list[int]]:
    """Deterministic prompts of ``length`` ordinary tokens (ids below the special-token range avoided)."""
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.integers(100, vocab, size=(batch, length)).tolist()


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from harness.model.generate import generate

    if args.threads:
        torch.set_num_threads(args.threads)
    ours, theirs = load_models()
    n = args.new_tokens
    rows = []
    for batch in args.batch:
        prompts = prompt_batch(batch, args.prompt_tokens)
        input_ids = torch.tensor(prompts)

        def hf_run(new_tokens: int) -> None:
            with torch.no_grad():
                theirs.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)

        variants = {"harness (while_loop)": None, **{f"harness (chunks of {c})": c for c in args.chunk_sizes}}
        timings: dict[str, tuple[float, float]] = {}
        for name, chunk in variants.items():
            def ours_run(new_tokens: int, chunk=chunk) -> None:
                generate(ours, prompts, new_tokens, chunk_size=chunk)

            ours_run(1), ours_run(n)  # compile
            timings[name] = (best_time(lambda: ours_run(1), args.repeats), best_time(lambda: ours_run(n), args.repeats))
        hf_run(2)  # warm-up
        timings["transformers"] = (best_time(lambda: hf_run(1), args.repeats), best_time(lambda: hf_run(n), args.repeats))
        peer = batch * (n - 1) / max(timings["transformers"][1] - timings["transformers"][0], 1e-9)
        for name, (t1, tn) in timings.items():
            rate = batch * (n - 1) / max(tn - t1, 1e-9)
            rows.append((batch, name, t1, rate, rate / peer))

    print(f"\nSmolLM2-135M-Instruct float32, CPU ({os.cpu_count()} cores), prompt {args.prompt_tokens} tokens, "
          f"{n} new tokens, greedy, best of {args.repeats}")
    print(f"{'batch':>5}  {'implementation':<26} {'prefill+1 (s)':>13} {'decode tok/s':>13} {'vs transformers':>16}")
    for batch, name, t1, rate, ratio in rows:
        print(f"{batch:>5}  {name:<26} {t1:>13.3f} {rate:>13.1f} {ratio:>15.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
