"""Forward (prefill) throughput: the harness's jitted forward vs transformers' PyTorch forward (CPU).

Both sides run SmolLM2-135M-Instruct from the embedded GGUF file in float32 on the same token
batch and return the full logits ``[B, L, V]``; tokens/s is ``B * L / time``, best of
``--repeats`` interleaved runs, the peer measured in the same process.

    python benchmarks/bench_forward.py [--shapes 1x128 8x128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_generate import best_time, load_models, prompt_batch  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["1x128", "8x128"], help="BATCHxLENGTH")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS before jax starts")
    args = parser.parse_args(argv)
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    ours, theirs = load_models()
    graphdef, state = nnx.split(ours)

    @jax.jit
    def forward(state, tokens):
        return nnx.merge(graphdef, state)(tokens)

    rows = []
    for shape in args.shapes:
        batch, length = (int(x) for x in shape.lower().split("x"))
        tokens = prompt_batch(batch, length)
        ours_tokens = jnp.asarray(tokens, jnp.int32)
        theirs_tokens = torch.tensor(tokens)

        def ours_run():
            forward(state, ours_tokens).block_until_ready()

        def theirs_run():
            with torch.no_grad():
                theirs(input_ids=theirs_tokens).logits.numpy()

        ours_run(), theirs_run()  # compile / warm up
        t_ours = best_time(ours_run, args.repeats)
        t_theirs = best_time(theirs_run, args.repeats)
        ours_out = forward(state, ours_tokens)
        with torch.no_grad():
            theirs_out = theirs(input_ids=theirs_tokens).logits.numpy()
        diff = float(jnp.max(jnp.abs(ours_out - theirs_out)))
        rows.append((shape, batch * length / t_ours, batch * length / t_theirs, diff))

    print(f"\nSmolLM2-135M-Instruct float32 forward (full logits), CPU ({os.cpu_count()} cores), "
          f"best of {args.repeats}")
    print(f"{'BxL':>8}  {'harness tok/s':>13} {'transformers tok/s':>19} {'ratio':>7} {'max |dlogits|':>14}")
    for shape, ours_rate, theirs_rate, diff in rows:
        print(f"{shape:>8}  {ours_rate:>13.1f} {theirs_rate:>19.1f} {ours_rate / theirs_rate:>6.2f}x {diff:>14.2e}")


if __name__ == "__main__":
    main()
