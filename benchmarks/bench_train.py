"""Training throughput on CPU: the harness train step vs a transformers + PyTorch AdamW step.

Both sides train the same architecture (``tiny`` and ``smollm2-135m`` presets; random weights,
which cost the same as real ones) on the same random batch: float32, the masked-token
cross-entropy sum over the mask count, AdamW (lr 1e-4, wd 0) with global-norm clipping at 1.0.
The harness side is ``harness.train.step.TrainStep`` on a one-device mesh (exactly what
``harness train`` runs, buffers donated); the peer is ``transformers.LlamaForCausalLM``
(``attn_implementation`` sdpa) with ``torch.optim.AdamW`` in eager mode. Every figure is the best
of ``--repeats`` interleaved timings of ``--steps`` steps (the machine is shared; the best run is
the least disturbed), and both sides run in one process, so the ratio is the number to quote.

    python benchmarks/bench_train.py [--models tiny smollm2-135m] [--shape tiny=8x128 smollm2-135m=4x256]
        [--breakdown] [--xla-flags "..."] [--remat none]

``--breakdown`` also times, on each side, the forward loss alone and forward + backward (no
optimizer), which shows where a gap comes from. ``--xla-flags`` is appended to ``XLA_FLAGS``
before jax starts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

DEFAULT_SHAPES = {"tiny": (8, 128), "smollm2-135m": (4, 256)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_SHAPES))
    parser.add_argument("--shape", nargs="*", default=[], help="MODEL=BxL, e.g. smollm2-135m=4x256")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default by model)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--remat", default="none", help="harness remat policy (none, full, dots, ...)")
    parser.add_argument("--breakdown", action="store_true", help="also time forward and forward+backward")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS before jax starts")
    return parser.parse_args(argv)


def make_batch(rows: int, length: int, vocab: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (rows, length + 1)).astype(np.int32)
    return {
        "tokens": ids[:, :-1], "targets": ids[:, 1:],
        "loss_mask": rng.random((rows, length)) < 0.8,
        "segment_ids": np.ones((rows, length), np.int32),
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)).copy(),
    }


def best_time(fn, steps: int, repeats: int) -> float:
    """Best wall time of ``steps`` calls of ``fn`` (which must block until its work is done)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        best = min(best, time.perf_counter() - start)
    return best


class HarnessSide:
    """The harness TrainStep (and, for the breakdown, its loss and gradient alone)."""

    def __init__(self, name: str, batch, remat: str):
        import jax
        import optax
        from flax import nnx

        from harness.config import OptimizerSection
        from harness.model.llama import Llama, get_config
        from harness.model.sharding import make_mesh
        from harness.train import optim
        from harness.train.step import TrainStep, init_train_state, token_loss_sum, train_state_shardings

        self.jax = jax
        config = get_config(name, compute_dtype="float32", param_dtype="float32", remat=remat)
        self.config = config
        mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
        model = Llama(config, rngs=nnx.Rngs(0))
        tx = optim.make_optimizer(OptimizerSection(weight_decay=0.0, clip_norm=1.0), optax.constant_schedule(1e-4))
        graphdef, state = init_train_state(model, tx, nnx.Param)
        shardings = train_state_shardings(state, mesh)
        self.state = jax.device_put(state, shardings)
        self.step = TrainStep(graphdef, tx, nnx.Param, accumulation_steps=1, mesh=mesh, state_shardings=shardings)
        self.batch = {k: jax.device_put(v) for k, v in batch.items()}

        def loss(params, rest, batch):
            total, count = token_loss_sum(nnx.merge(graphdef, params, rest), batch)
            return total / count

        self.loss = jax.jit(loss)
        self.grad = jax.jit(jax.grad(loss))

    def train_step(self) -> None:
        self.state, metrics = self.step(self.state, self.batch)
        self.jax.block_until_ready(metrics["loss"])

    def forward(self) -> None:
        self.jax.block_until_ready(self.loss(self.state.params, self.state.rest, self.batch))

    def forward_backward(self) -> None:
        self.jax.block_until_ready(self.grad(self.state.params, self.state.rest, self.batch))


class TorchSide:
    """transformers' LlamaForCausalLM + torch.optim.AdamW, eager."""

    def __init__(self, config, batch):
        import torch
        import transformers

        self.torch = torch
        torch.manual_seed(0)
        hf = transformers.LlamaConfig(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
            head_dim=config.dim_per_head, rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta,
            max_position_embeddings=config.max_seq_len, tie_word_embeddings=config.tie_embeddings,
            attn_implementation="sdpa",
        )
        self.model = transformers.LlamaForCausalLM(hf).float().train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.0, eps=1e-8)
        self.tokens = torch.from_numpy(batch["tokens"].astype("int64"))
        self.targets = torch.from_numpy(batch["targets"].astype("int64"))
        self.mask = torch.from_numpy(batch["loss_mask"])
        self.positions = torch.from_numpy(batch["positions"].astype("int64"))

    def _loss(self):
        logits = self.model(input_ids=self.tokens, position_ids=self.positions).logits
        ce = self.torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), self.targets.flatten(), reduction="none"
        )
        mask = self.mask.flatten().float()
        return (ce * mask).sum() / mask.sum()

    def train_step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = self._loss()
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()

    def forward(self) -> None:
        with self.torch.no_grad():
            self._loss()

    def forward_backward(self) -> None:
        self.model.zero_grad(set_to_none=True)
        self._loss().backward()


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = dict(DEFAULT_SHAPES)
    for item in args.shape:
        name, _, dims = item.partition("=")
        rows, length = dims.lower().split("x")
        shapes[name] = (int(rows), int(length))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; XLA_FLAGS={os.environ['XLA_FLAGS']!r}")
    header = f"{'model':<14} {'B x L':>9} {'phase':<16} {'harness tok/s':>14} {'torch tok/s':>12} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for name in args.models:
        rows, length = shapes[name]
        steps = args.steps or (10 if name == "tiny" else 2)
        from harness.model.llama import get_config

        batch = make_batch(rows, length, get_config(name).vocab_size)
        ours = HarnessSide(name, batch, args.remat)
        peer = TorchSide(ours.config, batch)
        phases = [("train step", "train_step")]
        if args.breakdown:
            phases += [("forward", "forward"), ("forward+backward", "forward_backward")]
        for label, method in phases:
            for side in (ours, peer):  # warm-up: compile / allocate
                getattr(side, method)()
            t_ours = t_peer = float("inf")
            for _ in range(args.repeats):  # interleaved, so load changes hit both sides alike
                t_ours = min(t_ours, best_time(getattr(ours, method), steps, 1))
                t_peer = min(t_peer, best_time(getattr(peer, method), steps, 1))
            tokens = rows * length * steps
            print(f"{name:<14} {rows:>4} x {length:<4} {label:<16} {tokens / t_ours:>14.0f} "
                  f"{tokens / t_peer:>12.0f} {t_peer / t_ours:>6.2f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
