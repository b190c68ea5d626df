"""Optimizer, learning-rate schedule and the trainable-parameter filter (optax, Flax NNX).

AdamW with decoupled weight decay masked off the usual no-decay set (norm scales, biases),
global-norm gradient clipping, and a warm-up + cosine / linear / constant schedule. Gradient
accumulation is not done here: the train step (``harness.train.step``) sums the micro-batch
gradients of one whole-batch loss before a single optimizer update, which keeps the loss
normalisation exact (see ``harness.train.step``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from harness.config import OptimizerSection, PeftSection, TrainSection
from harness.errors import ConfigError


def make_schedule(train: TrainSection, total_steps: int) -> optax.Schedule:
    """Peak ``train.lr`` after a linear warm-up from 0, then decay to ``final_lr_ratio * lr``.

    The warm-up is ``train.warmup_steps`` or ``ceil(warmup_ratio * total_steps)`` steps (the
    survey: ratio 0.03, as Stanford Alpaca and HF's Trainer). Step ``s`` of the optimizer uses
    ``schedule(s)``; the first update (s = 0) therefore has lr 0 when there is a warm-up, as in
    HF's ``get_cosine_schedule_with_warmup``.
    """
    if total_steps <= 0:
        raise ConfigError(f"the run has {total_steps} steps; set train.steps or train.epochs so it has at least one")
    warmup = train.warmup_for(total_steps)
    if warmup > total_steps:
        raise ConfigError(
            f"train.warmup_steps={warmup} is longer than the run ({total_steps} steps); shorten the warm-up"
        )
    peak, final = train.lr, train.lr * train.final_lr_ratio
    decay_steps = max(total_steps - warmup, 1)
    if train.schedule == "constant":
        decay = optax.constant_schedule(peak)
    elif train.schedule == "linear":
        decay = optax.linear_schedule(peak, final, decay_steps)
    else:
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=train.final_lr_ratio)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def path_name(path) -> str:
    """``layers/wq`` style name of a pytree key path (NNX state paths, optax state paths)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def decay_mask(params, no_decay: list[str]):
    """Pytree of bools like ``params``: True where weight decay applies.

    A parameter gets no decay when any ``/``-separated component of its path contains one of
    the ``no_decay`` names (``attn_norm``, ``final_norm`` contain ``norm``).
    """

    def decays(path, _leaf) -> bool:
        components = path_name(path).split("/")
        return not any(word in component for word in no_decay for component in components)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(
    opt: OptimizerSection, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """Clip by global norm (if set), then AdamW with the no-decay mask; moments in param dtype."""
    adamw = optax.adamw(
        learning_rate=schedule,
        b1=opt.b1,
        b2=opt.b2,
        eps=opt.eps,
        weight_decay=opt.weight_decay,
        mask=lambda params: decay_mask(params, opt.no_decay),
    )
    if opt.clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(opt.clip_norm), adamw)


def trainable_filter(peft: PeftSection):
    """The NNX filter of the trained variables: every ``nnx.Param``, or only LoRA's for LoRA."""
    if peft.method == "none":
        return nnx.Param
    from harness.model.peft import LoRAParam

    return LoRAParam


def count_params(state) -> int:
    """Number of scalars in a state / pytree of arrays."""
    return int(sum(int(jnp.size(leaf)) for leaf in jax.tree_util.tree_leaves(state)))
