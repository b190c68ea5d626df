"""Device meshes and the logical-axis rules that place parameters and activations on them.

The mesh has three named axes, ``data x fsdp x tensor``. Parameters and activations name their
dimensions logically (``embed``, ``heads``, ``batch``...); ``LOGICAL_AXIS_RULES`` is the one
table that says which mesh axis (or axes) each logical name is split over. A name mapped to
``None`` is replicated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from harness.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis name -> mesh axis / axes (None = replicated). Kept in one table (MaxText style).
LOGICAL_AXIS_RULES: dict[str, str | tuple[str, ...] | None] = {
    # parameters
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "layers": None,
    "norm": None,
    "lora_rank": None,
    # activations
    "batch": ("data", "fsdp"),
    "length": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
}


@dataclass(frozen=True)
class MeshShape:
    """Sizes of the ``data``, ``fsdp`` and ``tensor`` axes; one of them may be -1 (the rest)."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        if sizes.count(-1) > 1:
            raise ConfigError(f"mesh {self}: at most one axis may be -1")
        for name, size in zip(MESH_AXES, sizes):
            if size == 0 or size < -1:
                raise ConfigError(f"mesh.{name}={size}: sizes are positive (or -1 for the rest)")
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ConfigError(
                    f"mesh {dict(zip(MESH_AXES, sizes))}: the fixed axes ({known} devices) do not "
                    f"divide the {num_devices} devices; change the mesh sizes"
                )
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ConfigError(
                f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but "
                f"{num_devices} are available; make the product of the axes {num_devices} or set one axis to -1"
            )
        return tuple(sizes)  # type: ignore[return-value]


def make_mesh(shape: MeshShape | dict | None = None, devices: Iterable[Any] | None = None) -> Mesh:
    """A ``data x fsdp x tensor`` mesh over ``devices`` (default: every device of every process)."""
    if shape is None:
        shape = MeshShape()
    elif isinstance(shape, dict):
        unknown = set(shape) - set(MESH_AXES)
        if unknown:
            raise ConfigError(f"unknown mesh axis {sorted(unknown)[0]!r}; axes are {MESH_AXES}")
        shape = MeshShape(**shape)
    devices = list(jax.devices() if devices is None else devices)
    sizes = shape.resolve(len(devices))
    return Mesh(np.asarray(devices, dtype=object).reshape(sizes), MESH_AXES)


def logical_to_spec(axes: Iterable[str | None], rules: dict | None = None) -> PartitionSpec:
    """PartitionSpec of a value whose dimensions carry these logical names."""
    rules = LOGICAL_AXIS_RULES if rules is None else rules
    out = []
    used: set[str] = set()
    for name in axes:
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise ConfigError(f"logical axis {name!r} has no sharding rule in LOGICAL_AXIS_RULES")
        mesh_axes = rules[name]
        if isinstance(mesh_axes, str):
            mesh_axes = (mesh_axes,)
        # A mesh axis may shard only one dimension of a value; later dims stay replicated.
        mesh_axes = tuple(a for a in (mesh_axes or ()) if a not in used)
        used.update(mesh_axes)
        out.append(mesh_axes[0] if len(mesh_axes) == 1 else (mesh_axes or None))
    return PartitionSpec(*out)


def _current_mesh():
    get = getattr(jax.sharding, "get_abstract_mesh", None)
    mesh = get() if get is not None else None
    if mesh is None or getattr(mesh, "empty", True):
        return None
    return mesh


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
    """Sharding constraint on an activation when a mesh is set (``jax.set_mesh``); else identity."""
    mesh = _current_mesh()
    if mesh is None:
        return x
    spec = logical_to_spec(axes)
    spec = _drop_indivisible(spec, x.shape, dict(zip(mesh.axis_names, mesh.axis_sizes)))
    return jax.lax.with_sharding_constraint(x, spec)


def _drop_indivisible(spec: PartitionSpec, shape, sizes: dict[str, int]) -> PartitionSpec:
    # Activations such as a batch of 1 during decoding cannot split; keep them replicated there.
    out = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (entry,) if isinstance(entry, str) else tuple(entry or ())
        total = math.prod(sizes.get(n, 1) for n in names)
        out.append(entry if total and dim % total == 0 else None)
    return PartitionSpec(*out)


def variable_axes(variable) -> tuple[str, ...] | None:
    """Logical axis names stored on an ``nnx.Variable`` (metadata ``axes``)."""
    meta = variable.get_metadata() if hasattr(variable, "get_metadata") else {}
    return meta.get("axes")


def param_specs(state, rules: dict | None = None, mesh: Mesh | None = None):
    """PartitionSpec for every variable of an ``nnx.State``, checked against ``mesh``.

    Every variable must carry logical ``axes`` with one name per dimension and, with a mesh,
    every sharded dimension must divide by its mesh axes; otherwise a ConfigError names the
    parameter, the axis and the sizes.
    """
    from flax import nnx

    sizes = dict(zip(mesh.axis_names, mesh.devices.shape)) if mesh is not None else {}

    def spec_of(path, variable):
        name = "/".join(str(p) for p in path)
        axes = variable_axes(variable)
        value = variable.get_value() if hasattr(variable, "get_value") else variable.value
        shape = getattr(value, "shape", ())
        if axes is None:
            if len(shape) == 0:
                return PartitionSpec()
            raise ConfigError(f"parameter {name} (shape {tuple(shape)}) has no logical axes")
        if len(axes) != len(shape):
            raise ConfigError(f"parameter {name}: axes {axes} do not match its shape {tuple(shape)}")
        spec = logical_to_spec(axes, rules)
        for dim, logical, entry in zip(shape, axes, spec):
            names = (entry,) if isinstance(entry, str) else tuple(entry or ())
            total = math.prod(sizes.get(n, 1) for n in names)
            if total > 1 and dim % total:
                raise ConfigError(
                    f"parameter {name}: dimension {logical!r} of size {dim} does not divide over "
                    f"mesh axes {names} of size {total}; change the mesh or the sharding rule"
                )
        return spec

    return nnx.map_state(spec_of, state) if hasattr(nnx, "map_state") else jax.tree_util.tree_map_with_path(
        lambda p, v: spec_of(p, v), state, is_leaf=lambda v: isinstance(v, nnx.Variable)
    )


def named_shardings(state, mesh: Mesh, rules: dict | None = None):
    """NamedSharding for every variable of an ``nnx.State`` on ``mesh``."""
    specs = param_specs(state, rules, mesh)
    return jax.tree_util.tree_map(
        lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a [B, L] batch array: rows split over ``data`` and ``fsdp``."""
    return NamedSharding(mesh, logical_to_spec(("batch", "length")))


def shard_model(model, mesh: Mesh, rules: dict | None = None):
    """Place every variable of ``model`` on ``mesh`` by its logical axes (in place); returns it."""
    from flax import nnx

    state = nnx.state(model)
    shardings = named_shardings(state, mesh, rules)
    nnx.update(model, jax.device_put(state, shardings))
    return model
