"""LoRA: exact step-0 logits, merge, adapter-only state, sharding with the base layer, frozen base."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from harness.errors import CheckpointError, ConfigError
from harness.model.llama import Llama, get_config
from harness.model.peft import (
    FROZEN_BASE, TARGETS, TRAINABLE_LORA, LoraConfig, LoRAParam, apply_lora, lora_pure_state,
    lora_state, lora_targets, load_lora_state, merge_lora,
)
from harness.model.sharding import make_mesh, param_specs, shard_model

ALL = tuple(TARGETS)


def tiny(seed=0):
    return Llama(get_config("tiny"), rngs=nnx.Rngs(seed))


def tokens(batch=2, length=12, seed=0):
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, get_config("tiny").vocab_size)


def randomise_b(model, seed=5, scale=0.05):
    """Give every B a non-zero value, as training would, so the adapters change the output."""
    key = jax.random.key(seed)
    for name in lora_targets(model):
        key, sub = jax.random.split(key)
        b = getattr(model.layers, f"lora_b_{name}")
        b.set_value(scale * jax.random.normal(sub, b.shape, b.dtype))


def base_weights(model):
    return nnx.to_pure_dict(nnx.state(model, FROZEN_BASE))


def test_step_zero_logits_are_exactly_the_base_logits():
    model = tiny()
    x = tokens()
    before = np.asarray(model(x))
    apply_lora(model, LoraConfig(rank=4, alpha=8.0, targets=ALL), nnx.Rngs(1))
    after = np.asarray(model(x))
    assert np.array_equal(before, after)
    assert model.layers.lora_scale == 2.0
    # The adapters really are on the path: a non-zero B changes the logits.
    randomise_b(model)
    assert not np.allclose(np.asarray(model(x)), before, atol=1e-4)


@pytest.mark.parametrize("targets", [("q", "v"), ALL])
def test_adapter_shapes_axes_and_init(targets):
    model = tiny()
    apply_lora(model, LoraConfig(rank=3, targets=targets), nnx.Rngs(1))
    c = get_config("tiny")
    L, d, f, hd = c.num_layers, c.hidden_size, c.intermediate_size, c.dim_per_head
    expected = {
        "wq": ((L, d, 3), (L, 3, c.num_heads, hd)), "wk": ((L, d, 3), (L, 3, c.num_kv_heads, hd)),
        "wv": ((L, d, 3), (L, 3, c.num_kv_heads, hd)), "wo": ((L, c.num_heads, hd, 3), (L, 3, d)),
        "w_gate": ((L, d, 3), (L, 3, f)), "w_up": ((L, d, 3), (L, 3, f)), "w_down": ((L, f, 3), (L, 3, d)),
    }
    assert lora_targets(model) == tuple(n for n in expected if n in {TARGETS[t] for t in targets})
    for name in lora_targets(model):
        a = getattr(model.layers, f"lora_a_{name}")
        b = getattr(model.layers, f"lora_b_{name}")
        assert isinstance(a, LoRAParam) and isinstance(b, LoRAParam)
        assert (a.shape, b.shape) == expected[name]
        base_axes = getattr(model.layers, name).get_metadata()["axes"]
        assert a.get_metadata()["axes"][:-1] == base_axes[: len(a.shape) - 1]
        assert b.get_metadata()["axes"][2:] == base_axes[len(a.shape) - 1 :]
        assert a.get_metadata()["axes"][-1] == b.get_metadata()["axes"][1] == "lora_rank"
        assert not np.any(np.asarray(b[...]))
        bound = 1.0 / np.sqrt(np.prod(a.shape[1:-1]))
        values = np.asarray(a[...])
        assert np.all(np.abs(values) <= bound) and values.std() > bound / 4
        assert not np.array_equal(values[0], values[1])  # layers drawn independently


def test_filters_split_adapters_from_base():
    model = tiny()
    n_base = sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
    apply_lora(model, LoraConfig(rank=2, targets=("q", "o")), nnx.Rngs(1))
    lora = jax.tree_util.tree_leaves(nnx.state(model, TRAINABLE_LORA))
    frozen = jax.tree_util.tree_leaves(nnx.state(model, FROZEN_BASE))
    everything = jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))
    assert len(lora) == 4
    assert sum(x.size for x in frozen) == n_base
    assert len(everything) == len(lora) + len(frozen)


def test_merge_matches_unmerged_and_gives_a_plain_model():
    model = tiny()
    apply_lora(model, LoraConfig(rank=4, alpha=16.0, targets=ALL), nnx.Rngs(1))
    randomise_b(model)
    x = tokens()
    unmerged = np.asarray(model(x))
    merge_lora(model)
    merged = np.asarray(model(x))
    np.testing.assert_allclose(merged, unmerged, atol=1e-5, rtol=0)
    assert lora_targets(model) == ()
    assert model.layers.lora_scale == 0.0
    assert nnx.graphdef(model) == nnx.graphdef(tiny())
    with pytest.raises(ConfigError, match="no LoRA adapters"):
        merge_lora(model)


def test_merge_equals_independent_numpy_update():
    model = tiny()
    w_before = np.asarray(model.layers.wo[...], np.float64)
    apply_lora(model, LoraConfig(rank=2, alpha=3.0, targets=("o",)), nnx.Rngs(1))
    randomise_b(model)
    a = np.asarray(model.layers.lora_a_wo[...], np.float64)  # [L, H, hd, r]
    b = np.asarray(model.layers.lora_b_wo[...], np.float64)  # [L, r, d]
    expected = w_before + 1.5 * np.einsum("lhkr,lrd->lhkd", a, b)
    merge_lora(model)
    np.testing.assert_allclose(np.asarray(model.layers.wo[...]), expected, atol=1e-6)


def test_adapter_state_round_trip_and_mismatch_errors():
    config = LoraConfig(rank=4, targets=("q", "v", "down"))
    trained = apply_lora(tiny(), config, nnx.Rngs(1))
    randomise_b(trained)
    saved = lora_pure_state(trained)
    assert set(saved["layers"]) == {f"lora_{m}_{n}" for m in "ab" for n in ("wq", "wv", "w_down")}

    fresh = apply_lora(tiny(), config, nnx.Rngs(7))
    load_lora_state(fresh, saved)
    x = tokens()
    assert np.array_equal(np.asarray(fresh(x)), np.asarray(trained(x)))
    load_lora_state(fresh, lora_state(trained))  # an nnx.State works too

    with pytest.raises(CheckpointError, match="shape"):
        load_lora_state(apply_lora(tiny(), LoraConfig(rank=2, targets=("q", "v", "down")), nnx.Rngs(1)), saved)
    with pytest.raises(CheckpointError, match="lacks"):
        load_lora_state(apply_lora(tiny(), LoraConfig(rank=4, targets=("q", "v", "down", "up")), nnx.Rngs(1)), saved)
    with pytest.raises(CheckpointError, match="no adapter"):
        load_lora_state(apply_lora(tiny(), LoraConfig(rank=4, targets=("q", "v")), nnx.Rngs(1)), saved)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"rank": 0}, "rank"), ({"targets": ("q", "x")}, "unknown target 'x'"), ({"targets": ()}, "empty"),
     ({"targets": ("q", "q")}, "twice"), ({"dropout": 1.0}, "dropout"), ({"alpha": -1.0}, "alpha")],
)
def test_bad_lora_config_is_a_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LoraConfig(**kwargs)


def test_adding_adapters_twice_is_an_error():
    model = apply_lora(tiny(), LoraConfig(), nnx.Rngs(1))
    with pytest.raises(ConfigError, match="already has LoRA"):
        apply_lora(model, LoraConfig(), nnx.Rngs(2))


def test_adapters_shard_with_their_base_layer_on_8_devices():
    mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    model = tiny()
    apply_lora(model, LoraConfig(rank=4, targets=ALL), nnx.Rngs(1))
    randomise_b(model)
    x = tokens(batch=4)
    reference = np.asarray(model(x))
    specs = nnx.to_pure_dict(param_specs(nnx.state(model), mesh=mesh))["layers"]
    for name in lora_targets(model):
        n_in = len(getattr(model.layers, f"lora_a_{name}").shape) - 1  # layers + input dims
        base, a, b = specs[name], specs[f"lora_a_{name}"], specs[f"lora_b_{name}"]
        base = tuple(base) + (None,) * (len(getattr(model.layers, name).shape) - len(base))
        assert tuple(a)[:n_in] == base[:n_in] and (tuple(a) + (None,))[n_in] is None
        b = tuple(b) + (None,) * (len(getattr(model.layers, f"lora_b_{name}").shape) - len(b))
        assert b[0] == base[0] and b[1] is None and b[2:] == base[n_in:]
    assert specs["lora_a_wq"][1] == "fsdp" and specs["lora_b_wq"][2] == "tensor"
    shard_model(model, mesh)
    assert tuple(model.layers.lora_b_w_up[...].sharding.spec) == (None, None, "tensor")
    assert tuple(model.layers.lora_a_w_up[...].sharding.spec)[:2] == tuple(model.layers.w_up[...].sharding.spec)[:2]
    with jax.set_mesh(mesh):
        sharded = np.asarray(model(x))
    np.testing.assert_allclose(sharded, reference, atol=1e-5)


def test_optax_steps_on_adapters_leave_base_bitwise_unchanged():
    model = apply_lora(tiny(), LoraConfig(rank=4, targets=ALL), nnx.Rngs(1))
    base_before = jax.tree_util.tree_map(np.asarray, base_weights(model))
    base_sizes = {x.size for x in jax.tree_util.tree_leaves(base_before)}
    graphdef, adapters, rest = nnx.split(model, TRAINABLE_LORA, ...)
    tx = optax.adamw(1e-2)
    opt_state = tx.init(adapters)
    x = tokens(length=16)

    def loss_fn(adapters, rest):
        logits = nnx.merge(graphdef, adapters, rest)(x[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, x[:, 1:]).mean()

    @jax.jit
    def step(adapters, rest, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(adapters, rest)
        updates, opt_state = tx.update(grads, opt_state, adapters)
        return optax.apply_updates(adapters, updates), opt_state, loss, grads

    first_grads = None
    losses = []
    for _ in range(4):
        adapters, opt_state, loss, grads = step(adapters, rest, opt_state)
        first_grads = grads if first_grads is None else first_grads
        losses.append(float(loss))
    # B = 0 at step 0: A's gradient is exactly zero and B's is not (the A-side input is live).
    g = nnx.to_pure_dict(first_grads)["layers"]
    assert all(not np.any(np.asarray(g[k])) for k in g if k.startswith("lora_a_"))
    assert all(np.any(np.asarray(g[k])) for k in g if k.startswith("lora_b_"))
    assert losses[-1] < losses[0]

    nnx.update(model, adapters)
    after = base_weights(model)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), after, base_before)
    assert np.any(np.asarray(model.layers.lora_b_wq[...]))
    opt_leaves = [x for x in jax.tree_util.tree_leaves(opt_state) if np.ndim(x) > 0]
    adapter_sizes = {x.size for x in jax.tree_util.tree_leaves(adapters)}
    assert opt_leaves and {x.size for x in opt_leaves} <= adapter_sizes
    assert not ({x.size for x in opt_leaves} & (base_sizes - adapter_sizes))


def test_apply_lora_under_eval_shape_allocates_nothing():
    def build():
        return apply_lora(Llama(get_config("llama-7b"), rngs=nnx.Rngs(0)), LoraConfig(rank=16, targets=ALL), nnx.Rngs(1))

    abstract = nnx.eval_shape(build)
    leaves = jax.tree_util.tree_leaves(nnx.state(abstract, TRAINABLE_LORA))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    c = get_config("llama-7b")
    d, f, r, L = c.hidden_size, c.intermediate_size, 16, c.num_layers
    per_layer = 4 * (d * r + r * d) + 2 * (d * r + r * f) + (f * r + r * d)
    assert sum(x.size for x in leaves) == L * per_layer


def test_lora_dropout_only_in_training_and_only_on_the_adapter_path():
    cfg = get_config("tiny")
    model = Llama(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.RandomState(1).randint(0, cfg.vocab_size, (2, 16)))
    base = model(tokens)
    apply_lora(model, LoraConfig(rank=4, alpha=8.0, dropout=0.5, targets=("q", "v", "down")), nnx.Rngs(1))
    key = jax.random.key(3)
    # B = 0: dropout on A's input changes nothing, the base path is never dropped.
    np.testing.assert_array_equal(np.asarray(model(tokens, dropout_key=key)), np.asarray(base))
    for name in ("wq", "wv", "w_down"):
        b = getattr(model.layers, f"lora_b_{name}")
        b[...] = 0.05 * jnp.ones(b.shape, b.dtype)
    evaluated = np.asarray(model(tokens))
    trained_a = np.asarray(model(tokens, dropout_key=key))
    trained_b = np.asarray(model(tokens, dropout_key=key))
    np.testing.assert_array_equal(trained_a, trained_b)  # same key, same masks
    assert np.abs(trained_a - evaluated).max() > 1e-4  # dropout acts when a key is given
    other = np.asarray(model(tokens, dropout_key=jax.random.key(4)))
    assert np.abs(other - trained_a).max() > 1e-6
    np.testing.assert_array_equal(np.asarray(model(tokens)), evaluated)  # no key: deterministic
