"""The compiled train step: one ``jax.jit`` function of arrays around ``nnx.split`` / ``nnx.merge``.

``TrainState`` is a pytree of arrays (trainable variables, the rest of the model's state,
optimizer state, step counter, the first non-finite step). ``TrainStep`` is the jitted
``(state, batch) -> (state, metrics)`` with the state donated; it enters the mesh context
(``jax.set_mesh``) so the model's activation sharding constraints apply, both when called and
when lowered ahead of time (``harness.train.plan`` calls ``TrainStep.lower`` with
``jax.ShapeDtypeStruct`` arguments from ``abstract_train_state``).

Loss reduction (``LOSS_REDUCTION``, recorded in run.json): token cross-entropy summed over the
``loss_mask`` tokens of the WHOLE global batch (every micro-batch, every host) divided by the
number of ``loss_mask`` tokens of that batch. Each micro-batch contributes
``sum(ce * mask) / total_count`` and its gradient, and these are summed, so accumulation changes
nothing but memory (a mean of per-micro-batch means would weight short-answer micro-batches up).

Non-finite loss or gradient norm: the update is not applied (the state stays the last finite
one) and ``nonfinite_step`` records the step; the host reads it only at logging and checkpoint
steps, so the step loop itself never waits on the device.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from harness.model.sharding import batch_sharding, constrain, param_specs

LOSS_REDUCTION = (
    "sum of token cross-entropy over loss_mask tokens of the whole accumulated global batch, "
    "divided by the count of loss_mask tokens in that batch (not a mean of micro-batch means)"
)
BATCH_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything the step reads and writes; all leaves are arrays (checkpointed as is)."""

    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any  # nnx.State of the trainable variables
    rest: Any  # nnx.State of every other model variable (frozen base weights, RNG state...)
    opt_state: Any  # optax state over ``params`` only
    nonfinite_step: jax.Array  # int32 scalar: first step with a non-finite loss/grad, -1 if none

    def as_dict(self) -> dict[str, Any]:
        """Plain dict view (the checkpoint's item layout)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def init_train_state(model: nnx.Module, tx: optax.GradientTransformation, trainable) -> tuple[Any, TrainState]:
    """Split ``model`` into (graphdef, TrainState) with a fresh optimizer state over ``trainable``."""
    graphdef, params, rest = nnx.split(model, trainable, ...)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        rest=rest,
        opt_state=tx.init(params),
        nonfinite_step=jnp.full((), -1, jnp.int32),
    )
    return graphdef, state


def place_train_state(model: nnx.Module, tx: optax.GradientTransformation, trainable, mesh: Mesh):
    """(graphdef, TrainState on ``mesh``, its shardings): the model placed by its logical axes
    and the optimizer state created directly sharded by one jitted ``tx.init``."""
    graphdef, params, rest = nnx.split(model, trainable, ...)
    abstract = jax.eval_shape(lambda p, r: init_train_state(nnx.merge(graphdef, p, r), tx, trainable)[1], params, rest)
    shardings = train_state_shardings(abstract, mesh)
    params = jax.device_put(params, shardings.params)
    rest = jax.device_put(rest, shardings.rest)
    state = TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step),
        params=params,
        rest=rest,
        opt_state=jax.jit(tx.init, out_shardings=shardings.opt_state)(params),
        nonfinite_step=jax.device_put(jnp.full((), -1, jnp.int32), shardings.nonfinite_step),
    )
    return graphdef, state, shardings


def tree_shardings(tree, mesh: Mesh):
    """NamedShardings for a state pytree: variables by their logical ``axes``, arrays replicated.

    Optimizer moments are nnx Variables carrying the same ``axes`` as their parameters, so they
    shard exactly like them (FSDP shards the moments too). Bad axes raise ConfigError naming
    the parameter (``harness.model.sharding.param_specs``).
    """

    def one(path, leaf):
        if isinstance(leaf, nnx.Variable):
            specs = param_specs(nnx.State({"v": leaf}), mesh=mesh)
            spec = jax.tree_util.tree_leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))[0]
            return NamedSharding(mesh, spec)
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def train_state_shardings(state: TrainState, mesh: Mesh) -> TrainState:
    """A TrainState-shaped tree of NamedShardings (for jit, device_put and checkpoint restore)."""
    return TrainState(
        step=NamedSharding(mesh, PartitionSpec()),
        params=named_variable_shardings(state.params, mesh),
        rest=named_variable_shardings(state.rest, mesh),
        opt_state=tree_shardings(state.opt_state, mesh),
        nonfinite_step=NamedSharding(mesh, PartitionSpec()),
    )


def named_variable_shardings(state, mesh: Mesh):
    """NamedSharding per variable of an nnx.State, with error messages naming the full path."""
    specs = param_specs(state, mesh=mesh)
    return jax.tree_util.tree_map(
        lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )


def abstract_train_state(
    model_fn, tx: optax.GradientTransformation, trainable, mesh: Mesh
) -> tuple[Any, TrainState, TrainState]:
    """(graphdef, abstract TrainState of ShapeDtypeStructs with shardings, shardings) - no memory.

    ``model_fn()`` builds the model (e.g. ``lambda: Llama(config, rngs=nnx.Rngs(0))``); it runs
    under ``jax.eval_shape`` so a 13B model costs nothing.
    """
    graphdef, shapes = _eval_state(model_fn, tx, trainable)
    shardings = train_state_shardings(shapes, mesh)
    return graphdef, with_shardings(shapes, shardings), shardings


def with_shardings(shapes, shardings):
    """ShapeDtypeStructs of ``shapes`` carrying ``shardings`` (a prefix tree of NamedShardings)."""

    def attach(sharding, subtree):
        return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), subtree)

    return jax.tree_util.tree_map(attach, shardings, shapes, is_leaf=lambda x: isinstance(x, NamedSharding))


def _eval_state(model_fn, tx, trainable):
    holder = {}

    def build():
        graphdef, state = init_train_state(model_fn(), tx, trainable)
        holder["graphdef"] = graphdef
        return state

    shapes = jax.eval_shape(build)
    return holder["graphdef"], shapes


def token_loss_sum(model, micro: dict[str, jax.Array], dropout_key=None) -> tuple[jax.Array, jax.Array]:
    """(sum of cross-entropy over loss_mask tokens, number of those tokens) of one micro-batch.

    ``dropout_key`` enables training-time LoRA dropout (a no-op for models without it).
    """
    logits = model(micro["tokens"], micro["positions"], micro["segment_ids"], dropout_key=dropout_key)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), micro["targets"])
    mask = micro["loss_mask"].astype(bool)
    return jnp.sum(jnp.where(mask, ce, 0.0)), jnp.sum(mask, dtype=jnp.int32)


def _split_micro(batch: dict[str, jax.Array], accumulation_steps: int) -> dict[str, jax.Array]:
    # Row r of the global batch goes to micro-batch r % n: reshaping [G] -> [G/n, n] keeps the
    # data-parallel sharding on the leading dim, so no rows move between devices.
    def split(x):
        g = x.shape[0]
        x = x.reshape(g // accumulation_steps, accumulation_steps, *x.shape[1:]).swapaxes(0, 1)
        return constrain(x, (None, "batch", "length"))

    return {k: split(batch[k]) for k in BATCH_KEYS}


def make_step_fn(
    graphdef, tx: optax.GradientTransformation, trainable, accumulation_steps: int, schedule=None,
    dropout_seed: int | None = None,
):
    """The pure step function ``(state, batch) -> (state, metrics)`` (not yet jitted).

    ``metrics``: loss, grad_norm (before clipping), loss_tokens, and with ``schedule`` the lr
    this step's update used. With ``dropout_seed`` the dropout key of a step is
    ``fold_in(fold_in(key(seed), step), micro_batch)``: a function of the step alone, so a
    resumed run draws the same masks as an uninterrupted one.
    """

    def dropout_key(step, micro_index):
        if dropout_seed is None:
            return None
        return jax.random.fold_in(jax.random.fold_in(jax.random.key(dropout_seed), step), micro_index)

    def loss_fn(params, rest, micro, total, key):
        model = nnx.merge(graphdef, params, rest)
        loss_sum, _ = token_loss_sum(model, micro, key)
        _, _, new_rest = nnx.split(model, trainable, ...)
        return loss_sum / total, new_rest

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch: dict[str, jax.Array]):
        total = jnp.maximum(jnp.sum(batch["loss_mask"].astype(bool), dtype=jnp.int32), 1).astype(jnp.float32)
        if accumulation_steps == 1:
            (loss, rest), grads = grad_fn(state.params, state.rest, batch, total, dropout_key(state.step, 0))
        else:
            micros = _split_micro(batch, accumulation_steps)
            zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)

            def body(carry, indexed_micro):
                grad_acc, loss_acc, rest = carry
                index, micro = indexed_micro
                (loss, rest), grads = grad_fn(state.params, rest, micro, total, dropout_key(state.step, index))
                grad_acc = jax.tree_util.tree_map(lambda a, g: a + g.astype(jnp.float32), grad_acc, grads)
                return (grad_acc, loss_acc + loss, rest), None

            (grads, loss, rest), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32), state.rest), (jnp.arange(accumulation_steps), micros))
            grads = jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grads, state.params)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (state.nonfinite_step < 0)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        def keep_finite(new, old):
            return jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)

        new_state = TrainState(
            step=state.step + 1,
            params=keep_finite(params, state.params),
            rest=keep_finite(rest, state.rest),
            opt_state=keep_finite(opt_state, state.opt_state),
            nonfinite_step=jnp.where(
                (state.nonfinite_step < 0) & ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm)),
                state.step,
                state.nonfinite_step,
            ),
        )
        metrics = {"loss": loss, "grad_norm": grad_norm, "loss_tokens": total.astype(jnp.int32)}
        if schedule is not None:
            metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        return new_state, metrics

    return step


class TrainStep:
    """The jitted train step on a mesh; ``__call__`` runs it, ``lower`` compiles it ahead of time."""

    def __init__(
        self,
        graphdef,
        tx: optax.GradientTransformation,
        trainable,
        *,
        accumulation_steps: int,
        mesh: Mesh,
        state_shardings: TrainState,
        donate: bool = True,
        schedule=None,
        dropout_seed: int | None = None,
    ):
        self.mesh = mesh
        replicated = NamedSharding(mesh, PartitionSpec())
        batch_shardings = {k: batch_sharding(mesh) for k in BATCH_KEYS}
        self._jitted = jax.jit(
            make_step_fn(graphdef, tx, trainable, accumulation_steps, schedule, dropout_seed),
            in_shardings=(state_shardings, batch_shardings),
            out_shardings=(state_shardings, replicated),
            donate_argnums=(0,) if donate else (),
        )

    def __call__(self, state: TrainState, batch: dict[str, jax.Array]):
        with jax.set_mesh(self.mesh):
            return self._jitted(state, batch)

    def lower(self, state, batch):
        """``jax.jit(...).lower`` under the mesh (arguments may be ShapeDtypeStructs)."""
        with jax.set_mesh(self.mesh):
            return self._jitted.lower(state, batch)


def abstract_batch(mesh: Mesh, global_batch: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
    """ShapeDtypeStructs of a global Batch on ``mesh`` (for ahead-of-time lowering)."""
    sharding = batch_sharding(mesh)
    dtypes = {"tokens": jnp.int32, "targets": jnp.int32, "loss_mask": jnp.bool_,
              "segment_ids": jnp.int32, "positions": jnp.int32}
    return {k: jax.ShapeDtypeStruct((global_batch, seq_len), dtypes[k], sharding=sharding) for k in BATCH_KEYS}


__all__ = [
    "LOSS_REDUCTION", "TrainState", "TrainStep", "abstract_batch", "abstract_train_state",
    "init_train_state", "make_step_fn", "place_train_state", "token_loss_sum", "train_state_shardings",
    "with_shardings",
]
