"""Hugging Face LLaMA directories in and out: ``load_hf`` and ``save_hf``.

A directory holds ``config.json`` and either ``model.safetensors`` or several shards listed by
``model.safetensors.index.json``. Loading checks the config (architecture, activation, biases,
RoPE scaling) and every tensor name and shape before reading any data, then streams tensor blocks
into a model created abstractly (see ``harness.model.convert_weights``). Saving streams each
tensor to disk in shards of at most 5 GB, so neither direction holds a second copy of the model.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from harness.atomic import write_json_atomic
from harness.errors import CheckpointError
from harness.model.convert_safetensors import SafetensorsReader, TensorToWrite, write_file
from harness.model.convert_weights import WeightMap, build_model, hf_tensor, weight_maps
from harness.model.llama import Llama, LlamaConfig

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
MAX_SHARD_BYTES = 5 * 10**9  # Hugging Face's default max_shard_size, "5GB"
_TORCH_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _require(raw: dict, key: str, where: Path):
    if key not in raw:
        raise CheckpointError(f"{where}: field {key!r} is missing")
    return raw[key]


def _rope_theta(raw: dict, where: Path) -> float:
    """RoPE base, rejecting any scaling the harness's RoPE does not implement."""
    for key in ("rope_scaling", "rope_parameters"):
        params = raw.get(key)
        if params is None:
            continue
        if not isinstance(params, dict):
            raise CheckpointError(f"{where}: field {key!r} must be an object, got {params!r}")
        kind = params.get("rope_type", params.get("type", "default"))
        factor = params.get("factor", 1.0)
        if kind not in ("default", None) and not (kind == "linear" and factor == 1.0):
            raise CheckpointError(
                f"{where}: field {key!r} has rope_type {kind!r}; only unscaled RoPE (rope_type "
                f"'default') is supported"
            )
        if "rope_theta" in params:
            return float(params["rope_theta"])
    return float(raw.get("rope_theta", 10000.0))


def config_from_hf(raw: dict[str, Any], where: Path, *, dtype: str = "float32", compute_dtype: str | None = None) -> LlamaConfig:
    """The ``LlamaConfig`` of a Hugging Face ``config.json`` (already parsed), validated.

    Anything that is not a plain LLaMA (another ``model_type`` or architecture, a non-SiLU
    activation, attention or MLP biases, scaled RoPE) is a CheckpointError naming the field.
    """
    model_type = raw.get("model_type")
    if model_type != "llama":
        raise CheckpointError(f"{where}: field 'model_type' is {model_type!r}; only 'llama' checkpoints are supported")
    architectures = raw.get("architectures") or ["LlamaForCausalLM"]
    if "LlamaForCausalLM" not in architectures:
        raise CheckpointError(
            f"{where}: field 'architectures' is {architectures!r}; only LlamaForCausalLM is supported"
        )
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{where}: field 'hidden_act' is {act!r}; the harness's LLaMA uses 'silu'")
    for key in ("attention_bias", "mlp_bias"):
        if raw.get(key):
            raise CheckpointError(f"{where}: field {key!r} is true; the harness's LLaMA has no biases")
    heads = int(_require(raw, "num_attention_heads", where))
    hidden = int(_require(raw, "hidden_size", where))
    head_dim = raw.get("head_dim")
    try:
        return LlamaConfig(
            vocab_size=int(_require(raw, "vocab_size", where)),
            hidden_size=hidden,
            num_layers=int(_require(raw, "num_hidden_layers", where)),
            num_heads=heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or heads),
            intermediate_size=int(_require(raw, "intermediate_size", where)),
            rope_theta=_rope_theta(raw, where),
            norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            max_seq_len=int(raw.get("max_position_embeddings", 2048)),
            tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
            head_dim=None if head_dim in (None, hidden // heads) else int(head_dim),
            param_dtype=dtype,
            compute_dtype=compute_dtype or dtype,
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: {exc}") from None


def config_to_hf(config: LlamaConfig, dtype: str, tokenizer=None) -> dict[str, Any]:
    """A ``config.json`` for ``LlamaForCausalLM`` (legacy and current key names both written)."""
    raw: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.dim_per_head,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        # rope_theta/rope_scaling for vLLM and transformers 4.x; rope_parameters for 5.x.
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": _TORCH_DTYPES[dtype],
        "dtype": _TORCH_DTYPES[dtype],
        "use_cache": True,
    }
    if tokenizer is not None:
        raw["bos_token_id"] = tokenizer.bos_id
        raw["eos_token_id"] = tokenizer.eos_id
        raw["pad_token_id"] = tokenizer.pad_id
    return raw


def _safetensors_files(directory: Path) -> list[Path]:
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index ({exc})") from None
        files = sorted(set(weight_map.values()))
        for name in files:
            if not (directory / name).is_file():
                raise CheckpointError(f"{index}: lists shard {name}, which does not exist")
        return [directory / name for name in files]
    if (directory / SINGLE_FILE).is_file():
        return [directory / SINGLE_FILE]
    if any(directory.glob("*.bin")):
        raise CheckpointError(f"{directory}: only PyTorch .bin weights found; convert them to safetensors")
    raise CheckpointError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE}")


class _IndexedSource:
    """A SafetensorsReader checked against the index's weight map (names in both must agree)."""

    def __init__(self, directory: Path):
        self.reader = SafetensorsReader(_safetensors_files(directory))
        index = directory / INDEX_FILE
        if index.is_file():
            listed = set(json.loads(index.read_text())["weight_map"])
            absent = sorted(listed - set(self.reader.tensors))
            if absent:
                raise CheckpointError(f"{index}: lists tensor {absent[0]}, which no shard contains")

    def names(self) -> set[str]:
        return set(self.reader.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.reader.shape(name)

    def read(self, name, rows=None, cols=None):
        return self.reader.read(name, rows, cols)


def load_hf(path: str | os.PathLike, *, dtype: str = "float32", mesh=None, compute_dtype: str | None = None) -> Llama:
    """A ``Llama`` from a Hugging Face LLaMA directory, streamed tensor block by tensor block.

    ``dtype`` is the parameter dtype (and the compute dtype unless ``compute_dtype`` is given).
    With ``mesh`` every parameter is assembled shard by shard in its ``NamedSharding``. Host
    memory peaks near the model's size in ``dtype``. A missing, unexpected or wrongly shaped
    tensor, or a config of another architecture, raises CheckpointError naming it.
    """
    directory = Path(path)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: no config.json (not a Hugging Face model directory)")
    try:
        raw = json.loads(config_path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{config_path}: invalid JSON ({exc})") from None
    config = config_from_hf(raw, config_path, dtype=dtype, compute_dtype=compute_dtype)
    source = _IndexedSource(directory)
    try:
        return build_model(config, source, str(directory), mesh=mesh)
    finally:
        source.reader.close()


def _layer_array(variable, layer: int | None) -> np.ndarray:
    value = variable[...] if layer is None else variable[...][layer]
    return np.asarray(jax.device_get(value))


def _merged_getter(model: Llama):
    """``get(path, layer) -> host array``, with LoRA adapters (if any) folded into their base."""
    targets: tuple[str, ...] = ()
    if any(hasattr(model.layers, f"lora_a_{n}") for n in model.layers.PROJECTIONS):
        from harness.model.peft import lora_delta, lora_targets

        targets = lora_targets(model)

    def get(path: tuple[str, ...], layer: int | None) -> np.ndarray:
        owner = model.layers if path[0] == "layers" else model
        variable = getattr(owner, path[-1])
        if path[0] != "layers" or path[-1] not in targets:
            return _layer_array(variable, layer)
        a = getattr(model.layers, f"lora_a_{path[-1]}")[...][layer : layer + 1]
        b = getattr(model.layers, f"lora_b_{path[-1]}")[...][layer : layer + 1]
        delta = lora_delta(a, b, path[-1], model.layers.lora_scale)[0]
        base = variable[...][layer]
        return np.asarray(jax.device_get((base.astype(jnp.float32) + delta).astype(base.dtype)))

    return get


def _tensors_to_write(model: Llama, dtype: np.dtype) -> list[TensorToWrite]:
    config = model.config
    get = _merged_getter(model)
    out = []
    for m in weight_maps(config):
        layers: list[int | None] = list(range(config.num_layers)) if m.stacked else [None]
        for layer, name in zip(layers, m.hf_names(config)):
            def produce(m: WeightMap = m, layer: int | None = layer) -> np.ndarray:
                return hf_tensor(get(m.path, layer), m, config).astype(dtype)

            out.append(TensorToWrite(name, dtype, m.hf_shape(config), produce))
    return out


def _shards(tensors: list[TensorToWrite], max_bytes: int) -> list[list[TensorToWrite]]:
    shards: list[list[TensorToWrite]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def save_hf(
    model: Llama,
    path: str | os.PathLike,
    tokenizer=None,
    *,
    dtype: str | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Write ``model`` as a Hugging Face ``LlamaForCausalLM`` directory and return its path.

    config.json, safetensors shards of at most ``max_shard_bytes`` (one ``model.safetensors``, or
    ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``) and, when given,
    the tokenizer's files. LoRA adapters are merged into the written weights (the model itself is
    not changed). ``dtype`` defaults to the model's parameter dtype.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = dtype or model.config.param_dtype
    if dtype not in _TORCH_DTYPES:
        raise CheckpointError(f"save_hf: dtype {dtype!r} is not one of {sorted(_TORCH_DTYPES)}")
    tensors = _tensors_to_write(model, np.dtype(jnp.dtype(dtype)))
    shards = _shards(tensors, max_shard_bytes)
    for stale in list(directory.glob("model*.safetensors")) + [directory / INDEX_FILE]:
        stale.unlink(missing_ok=True)  # shards of an earlier save would confuse loaders
    if len(shards) == 1:
        write_file(directory / SINGLE_FILE, shards[0])
    else:
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            write_file(directory / name, shard)
            weight_map.update({t.name: name for t in shard})
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
        write_json_atomic(directory / INDEX_FILE, index)
    write_json_atomic(directory / "config.json", config_to_hf(model.config, dtype, tokenizer))
    if tokenizer is not None:
        tokenizer.save(directory)
        write_json_atomic(directory / "generation_config.json", _generation_config(tokenizer))
    return directory


def _generation_config(tokenizer) -> dict[str, Any]:
    # Stop on every end-of-turn token, so a chat model's reply ends where the harness's does.
    eos = [i for i in dict.fromkeys([tokenizer.eos_id, *tokenizer.eot_ids]) if i is not None]
    return {"bos_token_id": tokenizer.bos_id, "eos_token_id": eos if len(eos) != 1 else eos[0], "pad_token_id": tokenizer.pad_id}


def checkpoint_nbytes(directory: str | os.PathLike) -> int:
    """Total bytes of tensor data in a Hugging Face directory's safetensors files."""
    reader = SafetensorsReader(_safetensors_files(Path(directory)))
    return sum(math.prod(i.shape) * i.dtype.itemsize for i in reader.tensors.values())
