"""Optimizer and schedule: against closed forms and optax's own AdamW/clipping."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from harness.config import OptimizerSection, TrainSection
from harness.errors import ConfigError
from harness.model.llama import Llama, get_config
from harness.train.optim import decay_mask, make_optimizer, make_schedule, path_name


def hf_cosine_with_warmup(step, total, warmup, peak):
    # transformers.get_cosine_schedule_with_warmup, written out
    if step < warmup:
        return peak * step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def test_cosine_warmup_ratio_matches_hf_formula():
    train = TrainSection(steps=100, lr=2e-5, warmup_ratio=0.03, schedule="cosine")
    schedule = make_schedule(train, 100)
    for step in range(100):
        assert float(schedule(step)) == pytest.approx(hf_cosine_with_warmup(step, 100, 3, 2e-5), rel=1e-5, abs=1e-12)


def test_linear_and_constant():
    linear = make_schedule(TrainSection(steps=10, lr=1.0, warmup_steps=2, schedule="linear", final_lr_ratio=0.1), 10)
    assert [round(float(linear(s)), 5) for s in (0, 1, 2, 6, 10)] == [0.0, 0.5, 1.0, 0.55, 0.1]
    constant = make_schedule(TrainSection(steps=10, lr=0.5, schedule="constant"), 10)
    assert {float(constant(s)) for s in range(10)} == {0.5}


def test_warmup_longer_than_run():
    with pytest.raises(ConfigError, match="warmup_steps=20 is longer than the run"):
        make_schedule(TrainSection(steps=10, warmup_steps=20), 10)


def test_no_decay_mask_on_llama():
    _, params, _ = nnx.split(nnx.eval_shape(lambda: Llama(get_config("tiny"), rngs=nnx.Rngs(0))), nnx.Param, ...)
    mask = decay_mask(params, ["norm", "bias"])
    flags = {path_name(p): bool(v) for p, v in jax.tree_util.tree_leaves_with_path(mask)}
    assert flags["final_norm/value"] is False and flags["layers/attn_norm/value"] is False
    assert flags["layers/wq/value"] is True and flags["embed/value"] is True


def test_adamw_matches_optax_reference():
    # clip + masked AdamW, against optax composed by hand on plain dicts
    params = {"w": jnp.arange(6.0).reshape(2, 3) / 10, "norm": jnp.ones(3)}
    grads = {"w": jnp.full((2, 3), 3.0), "norm": jnp.full(3, -2.0)}
    opt = OptimizerSection(b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1, clip_norm=0.5)
    ours = make_optimizer(opt, optax.constant_schedule(0.01))
    reference = optax.chain(
        optax.clip_by_global_norm(0.5),
        optax.adamw(0.01, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1, mask={"w": True, "norm": False}),
    )
    s1, s2 = ours.init(params), reference.init(params)
    p1, p2 = params, params
    for _ in range(3):
        u1, s1 = ours.update(grads, s1, p1)
        u2, s2 = reference.update(grads, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    for key in params:
        np.testing.assert_array_equal(np.asarray(p1[key]), np.asarray(p2[key]))


def test_warmup_ratio_rounds_up_like_hf_trainer():
    assert TrainSection(steps=10, warmup_ratio=0.03).warmup_for(10) == 1  # ceil(0.3)
    assert TrainSection(steps=10, warmup_ratio=0.03).warmup_for(3 * 1755) == 158  # survey-sized run
    assert TrainSection(steps=10).warmup_for(10) == 0
