"""LoRA (Hu et al. 2021; the survey's section 5.3) for the stacked LLaMA decoder.

``apply_lora(model, LoraConfig(...), rngs)`` adds, for every targeted projection ``W`` of
``model.layers``, two ``LoRAParam`` variables ``lora_a_<W>`` and ``lora_b_<W>``; the decoder
(``harness.model.llama.DecoderStack``) then computes ``x @ W + scale * (x @ A) @ B`` with
``scale = alpha / rank``. A has W's input dimensions plus the rank, B the rank plus W's output
dimensions, both with W's leading ``layers`` axis:

=========  =====================  =======================
target     A                      B
=========  =====================  =======================
q (wq)     [L, d, r]              [L, r, heads, head_dim]
k/v        [L, d, r]              [L, r, kv_heads, head_dim]
o (wo)     [L, heads, head_dim, r]  [L, r, d]
gate/up    [L, d, r]              [L, r, mlp]
down       [L, mlp, r]            [L, r, d]
=========  =====================  =======================

A and B carry W's logical axis names on the dimensions they share with W and ``lora_rank`` on
the rank (replicated by ``LOGICAL_AXIS_RULES``), so they are sharded exactly like their base
layer. B starts at zero, so before the first update the model computes exactly the base logits.

Trainable-variable filters (``nnx.Param`` matches its subclasses, so ``LoRAParam`` is a Param):

* ``TRAINABLE_FULL``  - every parameter, adapters included (full fine-tuning);
* ``TRAINABLE_LORA``  - only the adapters (LoRA fine-tuning: the base stays frozen);
* ``FROZEN_BASE``     - every parameter except the adapters (the base weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from harness.errors import CheckpointError, ConfigError
from harness.model.llama import DecoderStack


class LoRAParam(nnx.Param):
    """A LoRA adapter matrix: an ``nnx.Param`` that ``LoRAParam`` filters select on its own."""


TRAINABLE_FULL = nnx.Param
TRAINABLE_LORA = LoRAParam
FROZEN_BASE = nnx.All(nnx.Param, nnx.Not(LoRAParam))

# LoRA target names (as in PEFT's q_proj/k_proj/...) -> DecoderStack projection attributes.
TARGETS: dict[str, str] = {
    "q": "wq", "k": "wk", "v": "wv", "o": "wo", "gate": "w_gate", "up": "w_up", "down": "w_down",
}

# The einsum of each projection in DecoderStack.__call__; its lhs tells which of W's dims are
# inputs (contracted with the activations) and which are outputs.
_PROJECTION_SPECS: dict[str, str] = {
    "wq": "bld,dhk->blhk", "wk": "bld,dhk->blhk", "wv": "bld,dhk->blhk", "wo": "blhk,hkd->bld",
    "w_gate": "bld,df->blf", "w_up": "bld,df->blf", "w_down": "blf,fd->bld",
}


@dataclass(frozen=True)
class LoraConfig:
    """Rank, alpha (update scale ``alpha / rank``), dropout, targets and adapter dtype."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "v")
    dtype: str = "float32"  # adapters stay float32 (trainable master weights) whatever the base

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ConfigError(f"peft.rank={self.rank}: the LoRA rank must be positive")
        if self.alpha <= 0:
            raise ConfigError(f"peft.alpha={self.alpha}: LoRA alpha must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"peft.dropout={self.dropout}: expected 0 <= dropout < 1")
        targets = tuple(self.targets)
        if not targets:
            raise ConfigError("peft.targets is empty; name at least one of q, k, v, o, gate, up, down")
        unknown = [t for t in targets if t not in TARGETS]
        if unknown:
            raise ConfigError(f"peft.targets: unknown target {unknown[0]!r}; expected a subset of {', '.join(TARGETS)}")
        if len(set(targets)) != len(targets):
            raise ConfigError(f"peft.targets {list(targets)} names a target twice")
        object.__setattr__(self, "targets", targets)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_section(cls, peft) -> "LoraConfig":
        """From the run config's ``PeftSection`` (``method: lora``)."""
        return cls(rank=peft.rank, alpha=peft.alpha, dropout=peft.dropout, targets=tuple(peft.targets))


def _split_dims(name: str) -> tuple[int, int]:
    """(number of input dims, number of output dims) of projection ``name`` (layers axis excluded)."""
    lhs = _PROJECTION_SPECS[name].split("->")[0]
    x_spec, w_spec = lhs.split(",")
    n_in = sum(ch in x_spec for ch in w_spec)
    return n_in, len(w_spec) - n_in


def lora_shapes(base_shape: tuple[int, ...], base_axes: tuple[str, ...], name: str, rank: int):
    """((A shape, A axes), (B shape, B axes)) for base weight ``name`` of this shape and axes."""
    n_in, _ = _split_dims(name)
    layers, in_dims, out_dims = base_shape[:1], base_shape[1 : 1 + n_in], base_shape[1 + n_in :]
    layers_ax, in_ax, out_ax = base_axes[:1], base_axes[1 : 1 + n_in], base_axes[1 + n_in :]
    a = ((*layers, *in_dims, rank), (*layers_ax, *in_ax, "lora_rank"))
    b = ((*layers, rank, *out_dims), (*layers_ax, "lora_rank", *out_ax))
    return a, b


def apply_lora(model: nnx.Module, config: LoraConfig, rngs: nnx.Rngs) -> nnx.Module:
    """Add LoRA adapters to ``model.layers`` (in place) and return the model.

    A is drawn like PEFT's default (Kaiming-uniform with a = sqrt(5): U(-1/sqrt(fan_in),
    1/sqrt(fan_in)), fan_in = the product of W's input dims), independently per layer; B is zero.
    """
    layers: DecoderStack = model.layers
    if any(hasattr(layers, f"lora_a_{n}") for n in DecoderStack.PROJECTIONS):
        raise ConfigError("the model already has LoRA adapters; merge or remove them before adding new ones")
    dtype = jnp.dtype(config.dtype)
    for target in config.targets:
        name = TARGETS[target]
        base = getattr(layers, name)
        axes = base.get_metadata()["axes"]
        (a_shape, a_axes), (b_shape, b_axes) = lora_shapes(tuple(base.shape), tuple(axes), name, config.rank)
        fan_in = math.prod(a_shape[1:-1])
        bound = 1.0 / math.sqrt(fan_in)
        a = jax.random.uniform(rngs.params(), a_shape, jnp.float32, -bound, bound).astype(dtype)
        setattr(layers, f"lora_a_{name}", LoRAParam(a, axes=a_axes))
        setattr(layers, f"lora_b_{name}", LoRAParam(jnp.zeros(b_shape, dtype), axes=b_axes))
    layers.lora_scale = config.scale
    layers.lora_dropout = config.dropout
    layers.lora_config = config
    return model


def lora_targets(model: nnx.Module) -> tuple[str, ...]:
    """Projection names (``wq``...) of ``model.layers`` that carry adapters."""
    return tuple(n for n in DecoderStack.PROJECTIONS if hasattr(model.layers, f"lora_a_{n}"))


def lora_delta(a: jax.Array, b: jax.Array, name: str, scale: float) -> jax.Array:
    """``scale * A @ B`` in float32, shaped like the base weight ``name`` ([L, in..., out...])."""
    n_in, _ = _split_dims(name)
    layers, rank = a.shape[0], a.shape[-1]
    in_dims, out_dims = a.shape[1 : 1 + n_in], b.shape[2:]
    a2 = a.astype(jnp.float32).reshape(layers, math.prod(in_dims), rank)
    b2 = b.astype(jnp.float32).reshape(layers, rank, math.prod(out_dims))
    delta = jnp.einsum("lir,lro->lio", a2, b2, precision=jax.lax.Precision.HIGHEST)
    return scale * delta.reshape(layers, *in_dims, *out_dims)


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Fold ``scale * A @ B`` into the base weights and remove the adapters (in place).

    The merged model is a plain ``Llama`` again (``save_hf`` exports it unchanged).
    """
    layers = model.layers
    names = lora_targets(model)
    if not names:
        raise ConfigError("merge_lora: the model has no LoRA adapters")
    for name in names:
        base = getattr(layers, name)
        a = getattr(layers, f"lora_a_{name}")[...]
        b = getattr(layers, f"lora_b_{name}")[...]
        merged = base[...].astype(jnp.float32) + lora_delta(a, b, name, layers.lora_scale)
        base.set_value(merged.astype(base.dtype))
        delattr(layers, f"lora_a_{name}")
        delattr(layers, f"lora_b_{name}")
    layers.lora_scale = 0.0
    layers.lora_dropout = 0.0
    if hasattr(layers, "lora_config"):
        delattr(layers, "lora_config")
    return model


def lora_state(model: nnx.Module) -> nnx.State:
    """The adapters alone (an ``nnx.State`` of ``LoRAParam``), for adapter-only checkpoints."""
    state = nnx.state(model, LoRAParam)
    if not jax.tree_util.tree_leaves(state):
        raise ConfigError("lora_state: the model has no LoRA adapters")
    return state


def lora_pure_state(model: nnx.Module) -> dict:
    """The adapters as a nested dict of arrays (``{"layers": {"lora_a_wq": ...}}``)."""
    return nnx.to_pure_dict(lora_state(model))


def load_lora_state(model: nnx.Module, state) -> nnx.Module:
    """Load adapter values (an ``nnx.State`` or the nested dict of ``lora_pure_state``) in place.

    The model must already carry adapters of the same targets and shapes (``apply_lora`` with the
    run's LoraConfig); a missing, extra or mis-shaped adapter is a CheckpointError naming it.
    """
    current = nnx.to_pure_dict(lora_state(model))
    given = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
    flat_current = _flatten(current)
    flat_given = _flatten(given)
    missing = sorted(set(flat_current) - set(flat_given))
    extra = sorted(set(flat_given) - set(flat_current))
    if missing:
        raise CheckpointError(f"adapter checkpoint lacks {missing[0]} (the model has adapters {sorted(flat_current)})")
    if extra:
        raise CheckpointError(f"adapter checkpoint has {extra[0]}, which the model has no adapter for")
    for key, value in flat_given.items():
        want = flat_current[key]
        if tuple(value.shape) != tuple(want.shape):
            raise CheckpointError(
                f"adapter {key}: checkpoint shape {tuple(value.shape)} != model shape {tuple(want.shape)} "
                "(different rank or model?)"
            )
    layers = model.layers
    for key, value in flat_given.items():
        variable = getattr(layers, key.split("/")[-1])
        sharding = getattr(variable[...], "sharding", None)
        value = jnp.asarray(value, variable.dtype)
        variable.set_value(jax.device_put(value, sharding) if sharding is not None else value)
    return model


def _flatten(tree: dict, prefix: str = "") -> dict[str, jax.Array]:
    out: dict[str, jax.Array] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, path + "/"))
        else:
            out[path] = value
    return out


def count_trainable(model: nnx.Module, trainable=TRAINABLE_LORA) -> int:
    """Number of scalars of the variables ``trainable`` selects."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, trainable))))
