"""The frozen base of a LoRA run: how to rebuild it, and a fingerprint proving it is the same one.

Adapter-only checkpoints (``checkpoint.adapter_only``, the default for ``peft.method: lora``)
leave the frozen base weights out: they are whatever the run's ``model.init`` produces, which is
deterministic (a preset's random init with the run's seed, an ``hf:`` / ``gguf:`` file, or an
earlier run). The checkpoint's ``meta`` records a ``BaseSpec``: that init, the parameter dtype,
the seed, and per base tensor its shape, dtype, sum and sum of absolute values. Restoring rebuilds
the base (or takes the one the caller already built) and compares the fingerprint, so adapters are
never silently put onto a different base (an edited ``hf:`` directory, another seed or model).

Presets are rebuilt by the same eager initialiser the run used (``loading.init_model``: values
drawn from the seed, then placed), so a seed gives bitwise the same base on any mesh.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from harness.errors import CheckpointError

# Sums agree to float32 reduction-order noise when the weights are the same (they are bitwise
# equal in practice); any other base differs by orders of magnitude more.
FINGERPRINT_RTOL = 1e-4


class BaseMismatch(CheckpointError):
    """The base a checkpoint's adapters were trained on is not the one being restored onto."""


@dataclass(frozen=True)
class BaseSpec:
    """What an adapter-only checkpoint needs underneath it."""

    init: str  # model.init of the run, paths made absolute
    param_dtype: str
    seed: int
    fingerprint: dict[str, dict[str, Any]]  # "layers/wq" -> {"shape", "dtype", "sum", "abs_sum"}

    def to_meta(self) -> dict[str, Any]:
        """JSON-able form stored in the checkpoint's ``meta["base"]``."""
        return {"init": self.init, "param_dtype": self.param_dtype, "seed": self.seed, "fingerprint": self.fingerprint}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], where: str) -> "BaseSpec":
        """Read ``meta["base"]``; a checkpoint without it is a CheckpointError naming ``where``."""
        base = meta.get("base")
        if not isinstance(base, dict) or not {"init", "param_dtype", "seed", "fingerprint"} <= set(base):
            raise CheckpointError(f"{where}: adapter-only checkpoint without a complete 'base' record in its meta")
        return cls(init=base["init"], param_dtype=base["param_dtype"], seed=int(base["seed"]),
                   fingerprint=dict(base["fingerprint"]))


def absolute_init(init: str) -> str:
    """``model.init`` with a relative path made absolute (presets unchanged), so a checkpoint can
    be loaded from any working directory."""
    for prefix in ("hf:", "gguf:"):
        if init.startswith(prefix):
            return prefix + str(Path(init[len(prefix):]).expanduser().absolute())
    path = Path(init).expanduser()
    return str(path.absolute()) if path.exists() else init


def split_base(rest) -> tuple[nnx.State, nnx.State]:
    """(base parameters, everything else) of a TrainState's ``rest`` (adapters are in ``params``)."""
    return nnx.split_state(rest, nnx.Param, ...)


def join_base(base: nnx.State, extra: nnx.State | None) -> nnx.State:
    """Inverse of ``split_base``."""
    if extra is None or not jax.tree_util.tree_leaves(extra):
        return base
    return nnx.merge_state(base, extra)


def _flat(state: nnx.State) -> dict[str, Any]:
    """{"layers/wq": array or ShapeDtypeStruct} of a State."""
    out = {}
    for path, leaf in nnx.to_flat_state(state):
        out["/".join(str(k) for k in path)] = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
    return out


def fingerprint(base: nnx.State) -> dict[str, dict[str, Any]]:
    """Shape, dtype, sum and sum of |x| (float32, on device, one host transfer) per base tensor."""
    flat = _flat(base)
    names = sorted(flat)

    @jax.jit
    def sums(arrays):
        return [(jnp.sum(a.astype(jnp.float32)), jnp.sum(jnp.abs(a.astype(jnp.float32)))) for a in arrays]

    values = jax.device_get(sums([flat[n] for n in names]))
    return {
        n: {"shape": list(flat[n].shape), "dtype": str(flat[n].dtype), "sum": float(s), "abs_sum": float(a)}
        for n, (s, a) in zip(names, values)
    }


def check_fingerprint(expected: dict[str, dict[str, Any]], actual: dict[str, dict[str, Any]], where: str) -> None:
    """BaseMismatch naming the first tensor whose shape, dtype or sums differ."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has an extra tensor {extra[0]}"
        raise BaseMismatch(f"{where}: the base model {what} compared with the one the adapters were trained on")
    for name in sorted(expected):
        want, got = expected[name], actual[name]
        if list(want["shape"]) != list(got["shape"]) or want["dtype"] != got["dtype"]:
            raise BaseMismatch(
                f"{where}: base tensor {name} is {got['dtype']}{list(got['shape'])}, the adapters were "
                f"trained on {want['dtype']}{list(want['shape'])}"
            )
        scale = max(abs(want["abs_sum"]), 1e-30)
        if (abs(want["sum"] - got["sum"]) > FINGERPRINT_RTOL * scale
                or abs(want["abs_sum"] - got["abs_sum"]) > FINGERPRINT_RTOL * scale):
            raise BaseMismatch(
                f"{where}: base tensor {name} differs from the one the adapters were trained on "
                f"(sum {got['sum']:.6g} vs {want['sum']:.6g}, sum|x| {got['abs_sum']:.6g} vs "
                f"{want['abs_sum']:.6g}): the model.init weights changed since training"
            )


def load_base_model(init: str, *, param_dtype: str, seed: int, mesh=None):
    """The model ``model.init`` gives (``harness.train.setup.load_init``: before any numerics or
    adapters), placed on ``mesh`` (default: the first device)."""
    from harness.train.setup import load_init

    return load_init(init, param_dtype=param_dtype, seed=seed, mesh=mesh)[0]


def _mesh_of(abstract: nnx.State):
    for leaf in jax.tree_util.tree_leaves(abstract):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return sharding.mesh
    return None


def restore_base(spec: BaseSpec, abstract_base: nnx.State, where: str, given: nnx.State | None = None) -> nnx.State:
    """The base parameters for ``abstract_base`` (ShapeDtypeStructs with shardings), checked.

    ``given``: base values the caller already holds (no rebuild); otherwise ``spec.init`` is
    loaded again. Either way the fingerprint must match ``spec``'s and the tensors must be the
    ones ``abstract_base`` expects, else BaseMismatch.
    """
    expected_layout = {n: (tuple(s.shape), str(s.dtype)) for n, s in _flat(abstract_base).items()}
    recorded_layout = {n: (tuple(f["shape"]), f["dtype"]) for n, f in spec.fingerprint.items()}
    if expected_layout != recorded_layout:
        first = min(n for n in set(expected_layout) | set(recorded_layout)
                    if expected_layout.get(n) != recorded_layout.get(n))
        raise BaseMismatch(
            f"{where}: base tensor {first} is {expected_layout.get(first, 'absent')} in this model but "
            f"{recorded_layout.get(first, 'absent')} in the checkpoint (the architecture or param_dtype changed)"
        )
    if given is None:
        model = load_base_model(spec.init, param_dtype=spec.param_dtype, seed=spec.seed, mesh=_mesh_of(abstract_base))
        from harness.model.peft import FROZEN_BASE

        given = nnx.state(model, FROZEN_BASE)
        del model
    else:
        given, _ = split_base(given)
    check_fingerprint(spec.fingerprint, fingerprint(given), f"{where} (base {spec.init})")
    # Place by path onto the abstract's shardings (pure dicts: the rebuilt model's Variable
    # metadata need not be identical to the abstract one's for the values to be the same).
    target = nnx.to_pure_dict(abstract_base)
    placed = jax.tree_util.tree_map(lambda x, s: jax.device_put(x, getattr(s, "sharding", None)),
                                    nnx.to_pure_dict(given), target)
    out = jax.tree_util.tree_map(lambda s: s, abstract_base)
    nnx.replace_by_pure_dict(out, placed)
    return out

