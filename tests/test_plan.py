"""Ahead-of-time plan: the compiled abstract step is the real one, and the 7B memory goals hold."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from harness.commands.plan import parse_mesh
from harness.errors import ConfigError
from harness.model.llama import get_config
from harness.train.optim import trainable_filter
from harness.train.plan import (
    PlanRequest, lower_train_step, plan_mesh, plan_model_fn, plan_optimizer, plan_train_step,
)
from harness.train.step import init_train_state, train_state_shardings

GB = 1e9


def test_llama_7b_full_fine_tune_on_8_devices_fits_40_gb():
    report = plan_train_step(PlanRequest(model="llama-7b", mesh={"fsdp": 8}, batch=8, seq_len=2048, remat="full"))
    config = get_config("llama-7b")
    assert report.devices == 8 and report.micro_batch == 8
    assert report.params == report.trainable_params == config.num_params()
    # f32 weights + two f32 Adam moments, each sharded 8 ways
    assert report.state_bytes == pytest.approx(12 * config.num_params(), rel=1e-6)
    b = report.per_device_bytes
    assert abs(b["arguments"] - report.state_bytes / 8) <= 0.05 * report.state_bytes / 8
    assert b["alias"] >= 0.99 * b["arguments"]  # the train state is donated
    assert b["total"] < 40 * GB
    assert report.flops_per_token == config.flops_per_token(2048)


def test_llama_7b_lora_rank_16_on_one_device_fits_24_gb():
    report = plan_train_step(
        PlanRequest(model="llama-7b", mesh={"fsdp": 1}, batch=1, seq_len=2048, peft="lora", lora_rank=16,
                    param_dtype="bfloat16", remat="full"),
        devices=jax.devices()[:1],
    )
    c = get_config("llama-7b")
    d, f, r = c.hidden_size, c.intermediate_size, 16
    lora = c.num_layers * (4 * 2 * d * r + 2 * (d * r + r * f) + (f * r + r * d))
    assert report.trainable_params == lora
    assert report.params == c.num_params() + lora
    assert report.per_device_bytes["total"] < 24 * GB


def _batch(rng, rows, length, vocab):
    tokens = rng.integers(0, vocab, (rows, length + 1)).astype(np.int32)
    mask = rng.random((rows, length)) < 0.7
    return {
        "tokens": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask,
        "segment_ids": np.ones((rows, length), np.int32),
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)).copy(),
    }


def test_abstract_compiled_step_runs_on_real_state_and_matches_the_loss():
    # LoRA on a 2-D mesh with accumulation: the case with the most moving parts (frozen rest,
    # adapters sharded with their base layers, micro-batch scan).
    request = PlanRequest(model="tiny", mesh={"fsdp": 4, "tensor": 2}, batch=8, micro_batch=4, seq_len=32,
                          peft="lora", lora_rank=4, remat="full", compute_dtype="float32")
    mesh = plan_mesh(request)
    lowered, abstract = lower_train_step(request, mesh)
    compiled = lowered.compile()

    # The same state, materialised: the model built the plan's way, placed by the step's shardings.
    config = request.model_config()
    model = plan_model_fn(request)()
    model.layers.lora_b_wq.set_value(0.1 * jnp.ones(model.layers.lora_b_wq.shape))  # adapters matter
    _, state = init_train_state(model, plan_optimizer(request), trainable_filter(request.peft_section()))
    assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(abstract)
    assert all(a.shape == b.shape and a.dtype == b.dtype for a, b in
               zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(abstract)))
    state = jax.device_put(state, train_state_shardings(state, mesh))
    batch = _batch(np.random.default_rng(0), 8, 32, config.vocab_size)

    # Independent reference loss: full-batch masked CE sum over the mask count, model run eagerly.
    logits = model(jnp.asarray(batch["tokens"]))
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ce = -np.take_along_axis(np.asarray(logp), batch["targets"][..., None], axis=-1)[..., 0]
    expected = float((ce * batch["loss_mask"]).sum() / batch["loss_mask"].sum())

    _, metrics = compiled(state, batch)
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)


def _run_cli(*args, devices=None):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "" if devices is None else f"--xla_force_host_platform_device_count={devices}"
    env.pop("HARNESS_PLAN_CHILD", None)
    return subprocess.run([sys.executable, "-m", "harness.cli", "plan", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_reexecs_with_stand_in_devices_and_prints_json():
    out = _run_cli("--model", "tiny", "--mesh", "data=2,fsdp=2", "--batch", "8", "--micro-batch", "4",
                   "--seq-len", "64", "--peft", "lora", "--lora-rank", "2", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["devices"] == 4 and report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
    assert set(report["per_device_bytes"]) >= {"arguments", "temp", "output", "total"}
    assert 0 < report["trainable_params"] < report["params"]
    assert report["flops_per_token"] == get_config("tiny").flops_per_token(64)


def test_cli_bad_micro_batch_is_a_clear_error():
    out = _run_cli("--model", "tiny", "--mesh", "fsdp=2", "--batch", "8", "--micro-batch", "3", devices=2)
    assert out.returncode == 2
    assert "error: --micro-batch 3 does not divide --batch 8" in out.stderr


@pytest.mark.parametrize(
    "text, expected",
    [("fsdp=8", {"fsdp": 8}), ("data=2, fsdp=4,tensor=1", {"data": 2, "fsdp": 4, "tensor": 1})],
)
def test_parse_mesh(text, expected):
    assert parse_mesh(text) == expected


@pytest.mark.parametrize("text", ["fsdp", "fsdp=x", "fsdp=2,fsdp=2", ""])
def test_parse_mesh_errors(text):
    with pytest.raises(ConfigError):
        parse_mesh(text)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"mesh": {"pipeline": 2}}, "unknown axis"), ({"batch": 6, "mesh": {"fsdp": 4}}, "multiple of 4"),
     ({"peft": "prefix"}, "none or lora")],
)
def test_bad_requests(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PlanRequest(**kwargs)
