"""The Hugging Face <-> harness weight layout, and building a ``Llama`` from any tensor source.

Hugging Face stores every projection as a ``[out, in]`` matrix per layer; the harness stores
``[in, ...out split]`` stacked over a leading ``layers`` axis (see ``harness.model.llama``).
``WEIGHT_MAP`` is the one table of that correspondence; loading (``load_hf``, ``load_gguf``) and
saving (``save_hf``) both read it.

``build_model`` creates the model abstractly (``nnx.eval_shape``: no random-init copy is ever
materialised) and fills each parameter from blocks that read just the rows and columns of the
source tensors they need. On one device a parameter is allocated once and written in place chunk
by chunk; with a mesh ``jax.make_array_from_callback`` asks for exactly the block each device
holds, so every tensor lands straight in its sharded placement. Either way the host holds at most
one chunk or device block beyond the model itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from harness.errors import CheckpointError
from harness.model.llama import Llama, LlamaConfig


class TensorSource(Protocol):
    """Tensors in Hugging Face names and layout, readable a row/column block at a time."""

    def names(self) -> set[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, name: str, rows: slice | None = None, cols: slice | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class WeightMap:
    """One harness parameter and the Hugging Face tensor(s) it comes from.

    The HF tensor is ``[R, C]`` (or ``[R]``); ``rows``/``cols`` give how R and C split into harness
    dimensions. The harness tensor (one layer of it when ``stacked``) has dimensions
    ``cols + rows`` when ``transpose`` else ``rows + cols``.
    """

    path: tuple[str, ...]
    hf_name: str  # "{i}" stands for the layer index when stacked
    stacked: bool
    transpose: bool
    rows: tuple[str, ...]  # names of config sizes, resolved by _sizes
    cols: tuple[str, ...] = ()

    def hf_names(self, config: LlamaConfig) -> list[str]:
        if self.stacked:
            return [self.hf_name.format(i=i) for i in range(config.num_layers)]
        return [self.hf_name]

    def row_dims(self, config: LlamaConfig) -> tuple[int, ...]:
        return tuple(_sizes(config)[n] for n in self.rows)

    def col_dims(self, config: LlamaConfig) -> tuple[int, ...]:
        return tuple(_sizes(config)[n] for n in self.cols)

    def hf_shape(self, config: LlamaConfig) -> tuple[int, ...]:
        shape = (math.prod(self.row_dims(config)),)
        return shape + ((math.prod(self.col_dims(config)),) if self.cols else ())


def _sizes(c: LlamaConfig) -> dict[str, int]:
    return {
        "vocab": c.vocab_size, "embed": c.hidden_size, "heads": c.num_heads,
        "kv_heads": c.num_kv_heads, "head_dim": c.dim_per_head, "mlp": c.intermediate_size,
    }


_ATTN = "model.layers.{i}.self_attn."
_MLP = "model.layers.{i}.mlp."
# In the order Hugging Face checkpoints list them (save_hf writes this order).
WEIGHT_MAP: tuple[WeightMap, ...] = (
    WeightMap(("embed",), "model.embed_tokens.weight", False, False, ("vocab",), ("embed",)),
    WeightMap(("layers", "attn_norm"), "model.layers.{i}.input_layernorm.weight", True, False, ("embed",)),
    WeightMap(("layers", "wq"), _ATTN + "q_proj.weight", True, True, ("heads", "head_dim"), ("embed",)),
    WeightMap(("layers", "wk"), _ATTN + "k_proj.weight", True, True, ("kv_heads", "head_dim"), ("embed",)),
    WeightMap(("layers", "wv"), _ATTN + "v_proj.weight", True, True, ("kv_heads", "head_dim"), ("embed",)),
    WeightMap(("layers", "wo"), _ATTN + "o_proj.weight", True, True, ("embed",), ("heads", "head_dim")),
    WeightMap(("layers", "mlp_norm"), "model.layers.{i}.post_attention_layernorm.weight", True, False, ("embed",)),
    WeightMap(("layers", "w_gate"), _MLP + "gate_proj.weight", True, True, ("mlp",), ("embed",)),
    WeightMap(("layers", "w_up"), _MLP + "up_proj.weight", True, True, ("mlp",), ("embed",)),
    WeightMap(("layers", "w_down"), _MLP + "down_proj.weight", True, True, ("embed",), ("mlp",)),
    WeightMap(("final_norm",), "model.norm.weight", False, False, ("embed",)),
    WeightMap(("lm_head",), "lm_head.weight", False, True, ("vocab",), ("embed",)),
)

# Tensors some checkpoints carry that the model does not need: RoPE's cached inverse
# frequencies (recomputed from rope_theta) and, when embeddings are tied, a copy of the embedding.
_IGNORABLE_SUFFIXES = (".rotary_emb.inv_freq",)


def weight_maps(config: LlamaConfig) -> list[WeightMap]:
    """The entries of ``WEIGHT_MAP`` that this config has (no ``lm_head`` when tied)."""
    return [m for m in WEIGHT_MAP if not (m.path == ("lm_head",) and config.tie_embeddings)]


def check_source(config: LlamaConfig, source: TensorSource, where: str) -> None:
    """Fail, naming the tensor, on a missing, unexpected or wrongly shaped tensor; read nothing."""
    expected: dict[str, tuple[int, ...]] = {}
    for m in weight_maps(config):
        for name in m.hf_names(config):
            expected[name] = m.hf_shape(config)
    present = source.names()
    missing = [n for n in expected if n not in present]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{where}: missing tensor {missing[0]}{more}")
    extra = sorted(
        n for n in present - set(expected)
        if not n.endswith(_IGNORABLE_SUFFIXES) and not (n == "lm_head.weight" and config.tie_embeddings)
    )
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointError(
            f"{where}: unexpected tensor {extra[0]}{more}: not part of a LLaMA model with this config"
        )
    for name, shape in expected.items():
        got = tuple(source.shape(name))
        if got != shape:
            raise CheckpointError(f"{where}: tensor {name} has shape {list(got)}, the config needs {list(shape)}")


def _selection(index: tuple[slice, ...], dims: tuple[int, ...]) -> tuple[np.ndarray | None, slice]:
    """Flat indices into the product of ``dims`` that ``index`` selects, and their bounding range.

    The flat indices are None when the selection is the whole contiguous bounding range.
    """
    ranges = [np.arange(*s.indices(n)) for s, n in zip(index, dims)]
    if not ranges:
        return None, slice(None)
    grids = np.meshgrid(*ranges, indexing="ij")
    flat = np.ravel_multi_index(tuple(g.ravel() for g in grids), dims) if ranges[0].size else np.zeros(0, int)
    if flat.size == 0:
        return flat, slice(0, 0)
    start, stop = int(flat.min()), int(flat.max()) + 1
    if flat.size == stop - start and np.all(np.diff(flat) == 1):
        return None, slice(start, stop)
    return flat - start, slice(start, stop)


def read_block(source: TensorSource, m: WeightMap, name: str, index: tuple[slice, ...], config: LlamaConfig) -> np.ndarray:
    """The block ``index`` of one layer's harness tensor, read from HF tensor ``name``."""
    rows, cols = m.row_dims(config), m.col_dims(config)
    if m.transpose:
        col_index, row_index = index[: len(cols)], index[len(cols):]
    else:
        row_index, col_index = index[: len(rows)], index[len(rows):]
    row_pick, row_box = _selection(row_index, rows)
    col_pick, col_box = _selection(col_index, cols)
    box = source.read(name, row_box, col_box if cols else None)
    if row_pick is not None:
        box = box[row_pick]
    if cols and col_pick is not None:
        box = box[:, col_pick]
    if m.transpose:
        box = box.T
    block_shape = tuple(len(range(*s.indices(n))) for s, n in zip(index, (cols + rows) if m.transpose else (rows + cols)))
    return box.reshape(block_shape)


def _param_callback(source: TensorSource, m: WeightMap, config: LlamaConfig, shape, dtype):
    names = m.hf_names(config)

    def fetch(index: tuple[slice, ...]) -> np.ndarray:
        index = tuple(index) + (slice(None),) * (len(shape) - len(index))
        if not m.stacked:
            return np.ascontiguousarray(read_block(source, m, names[0], index, config), dtype=dtype)
        layers = range(*index[0].indices(shape[0]))
        inner = index[1:]
        block_shape = tuple(len(range(*s.indices(n))) for s, n in zip(inner, shape[1:]))
        out = np.empty((len(layers), *block_shape), dtype)  # one preallocated block per device
        for j, layer in enumerate(layers):
            out[j] = read_block(source, m, names[layer], inner, config)
        return out

    return fetch


# Host bytes of one chunk written into a single-device parameter (see _fill_in_chunks).
CHUNK_BYTES = 16 << 20


@partial(jax.jit, donate_argnums=0, static_argnums=3)
def _write_block(array: jax.Array, block: jax.Array, start: jax.Array, axis: int) -> jax.Array:
    return jax.lax.dynamic_update_slice_in_dim(array, block, start, axis=axis)


def _fill_in_chunks(shape: tuple[int, ...], dtype, fetch, axis: int = 0) -> jax.Array:
    """A device array of ``shape`` filled from ``fetch`` a few slices (along ``axis``) at a time.

    The array is allocated on the device once and each chunk is written in place (its buffer is
    donated), so the host holds one chunk of at most ``CHUNK_BYTES`` rather than the whole
    parameter: on CPU, where device memory is host memory, a whole stacked parameter staged in
    numpy would cost its size a second time. Each write is waited for, so chunks do not queue up.
    """
    if math.prod(shape) * np.dtype(dtype).itemsize <= CHUNK_BYTES:  # small: one block, no compile
        return jax.device_put(fetch(tuple(slice(0, n) for n in shape)))
    array = jnp.zeros(shape, dtype)
    slice_bytes = max(1, math.prod(shape) // max(shape[axis], 1) * np.dtype(dtype).itemsize)
    step = max(1, CHUNK_BYTES // slice_bytes)
    for start in range(0, shape[axis], step):
        index = [slice(0, n) for n in shape]
        index[axis] = slice(start, min(shape[axis], start + step))
        block = fetch(tuple(index))
        array = _write_block(array, block, jnp.int32(start), axis)
        array.block_until_ready()
        del block
    return array


def build_model(config: LlamaConfig, source: TensorSource, where: str, mesh=None) -> Llama:
    """A ``Llama`` with every parameter read from ``source`` (checked first; see ``check_source``).

    Without a mesh each parameter is written into its device array in chunks (``_fill_in_chunks``);
    with one, each device block is read and placed by the parameter's ``NamedSharding`` from
    ``harness.model.sharding`` (``jax.make_array_from_callback``).
    """
    check_source(config, source, where)
    abstract = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    shardings = None
    if mesh is not None:
        from harness.model.sharding import named_shardings

        shardings = dict(nnx.to_flat_state(named_shardings(state, mesh)))
    by_path = {m.path: m for m in weight_maps(config)}
    for path, variable in nnx.to_flat_state(state):
        path = tuple(str(p) for p in path)
        if path not in by_path:
            raise CheckpointError(f"{where}: the model has a parameter {'/'.join(path)} with no source tensor")
        abstract_value = variable.get_value()
        shape, dtype = abstract_value.shape, abstract_value.dtype
        fetch = _param_callback(source, by_path[path], config, shape, dtype)
        if shardings is None:
            # Chunk a transposed matrix (lm_head [d, V]) along the axis that is contiguous in the
            # file (HF rows), so each chunk reads its own rows instead of a column strip of all.
            m = by_path[path]
            axis = len(shape) - 1 if m.transpose and not m.stacked else 0
            value = _fill_in_chunks(shape, dtype, fetch, axis)
        else:
            sharding = shardings[path]
            if isinstance(sharding, nnx.Variable):
                sharding = sharding.get_value()
            value = jax.make_array_from_callback(shape, sharding, fetch, dtype=dtype)
        variable.set_value(value)
    return nnx.merge(graphdef, state)


def hf_tensor(value: np.ndarray, m: WeightMap, config: LlamaConfig) -> np.ndarray:
    """One layer's (or an unstacked) harness array back in Hugging Face ``[out, in]`` layout."""
    rows, cols = math.prod(m.row_dims(config)), math.prod(m.col_dims(config))
    if not m.cols:
        return value.reshape(rows)
    if m.transpose:
        return np.ascontiguousarray(value.reshape(cols, rows).T)
    return value.reshape(rows, cols)
