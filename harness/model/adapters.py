"""LoRA adapters in the Hugging Face PEFT format: ``save_peft_adapter`` / ``load_peft_adapter``.

A PEFT LoRA directory holds ``adapter_config.json`` (``peft_type: LORA``, ``r``, ``lora_alpha``,
``lora_dropout``, ``target_modules`` as module names ``q_proj`` ... ``down_proj``) and
``adapter_model.safetensors`` with, per layer ``i`` and target module,

    base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight   [r, in]
    base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight   [out, r]

(PEFT's ``lora_A`` is ``nn.Linear(in, r)`` and ``lora_B`` is ``nn.Linear(r, out)``, whose weights
are ``[out_features, in_features]``). The harness keeps A as ``[L, in..., r]`` and B as
``[L, r, out...]`` with W's own (possibly split) dims, so one layer's A is ``A[i].reshape(in, r).T``
and B is ``B[i].reshape(r, out).T``; the ``in`` / ``out`` flattening is the one ``save_hf`` uses
for the base weight (``harness.model.convert_weights.hf_tensor``). PEFT scales the update by
``lora_alpha / r`` (no rsLoRA), as the harness does, and drops out the adapter input only.

``peft.PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir), adapter_dir)`` with
the base written by ``save_hf`` of the model without adapters gives the harness model's logits
(tested); ``load_peft_adapter`` reads adapters PEFT wrote.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from harness.atomic import write_json_atomic
from harness.errors import CheckpointError, ConfigError
from harness.model.convert_safetensors import TensorToWrite, write_file
from harness.model.peft import TARGETS, LoraConfig, apply_lora, load_lora_state, lora_targets

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model.model.layers"

# harness target -> the module path inside one Hugging Face LlamaDecoderLayer
HF_MODULES: dict[str, str] = {
    "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
}
_BY_HF_NAME = {path.split(".")[-1]: target for target, path in HF_MODULES.items()}
_PROJECTION_TARGET = {projection: target for target, projection in TARGETS.items()}

# adapter_config.json options this loader cannot honour, with the value that means "not used"
_UNSUPPORTED = {
    "use_dora": False, "use_rslora": False, "fan_in_fan_out": False, "bias": "none",
    "layers_to_transform": None, "layers_pattern": None, "modules_to_save": None,
    "rank_pattern": {}, "alpha_pattern": {},
}


def _key(layer: int, target: str, matrix: str) -> str:
    return f"{KEY_PREFIX}.{layer}.{HF_MODULES[target]}.lora_{matrix}.weight"


def _adapter_config(model: nnx.Module) -> LoraConfig:
    config = getattr(model.layers, "lora_config", None)
    names = lora_targets(model)
    if not names:
        raise ConfigError("save_peft_adapter: the model has no LoRA adapters")
    if config is None:  # adapters without their config: recover rank and alpha from the arrays
        rank = int(getattr(model.layers, f"lora_a_{names[0]}").shape[-1])
        config = LoraConfig(rank=rank, alpha=float(model.layers.lora_scale) * rank,
                            dropout=float(model.layers.lora_dropout),
                            targets=tuple(_PROJECTION_TARGET[n] for n in names))
    return config


def save_peft_adapter(model: nnx.Module, directory: str | os.PathLike, *,
                      base_model_name_or_path: str | None = None) -> Path:
    """Write ``model``'s LoRA adapters as a PEFT adapter directory (float32) and return it."""
    config = _adapter_config(model)
    layers = model.layers
    tensors: list[TensorToWrite] = []
    for projection in lora_targets(model):
        target = _PROJECTION_TARGET[projection]
        a = np.asarray(jax.device_get(getattr(layers, f"lora_a_{projection}")[...]), np.float32)
        b = np.asarray(jax.device_get(getattr(layers, f"lora_b_{projection}")[...]), np.float32)
        num_layers, rank = a.shape[0], a.shape[-1]
        a2 = a.reshape(num_layers, -1, rank)  # [L, in, r]
        b2 = b.reshape(num_layers, rank, -1)  # [L, r, out]
        for i in range(num_layers):
            for matrix, value in (("A", a2[i].T), ("B", b2[i].T)):
                tensors.append(TensorToWrite(_key(i, target, matrix), np.dtype(np.float32), value.shape,
                                             lambda value=value: value))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_file(directory / WEIGHTS_FILE, tensors)  # atomic, metadata {"format": "pt"}
    payload = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": sorted(HF_MODULES[t].split(".")[-1] for t in config.targets),
        "inference_mode": True,
        "init_lora_weights": True,
        **_UNSUPPORTED,
    }
    write_json_atomic(directory / CONFIG_FILE, payload)
    return directory


def read_peft_config(directory: str | os.PathLike) -> LoraConfig:
    """The LoraConfig of a PEFT adapter directory; options the harness cannot apply are errors."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: not a PEFT adapter directory")
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if raw.get("peft_type") != "LORA":
        raise CheckpointError(f"{path}: peft_type {raw.get('peft_type')!r}; only LORA adapters can be loaded")
    for key, neutral in _UNSUPPORTED.items():
        value = raw.get(key, neutral)
        if value != neutral and not (neutral is None and value in ([], {})):
            raise CheckpointError(f"{path}: {key}={value!r} is not supported (expected {neutral!r})")
    modules = raw.get("target_modules")
    if not isinstance(modules, list):
        raise CheckpointError(f"{path}: target_modules must be a list of module names, got {modules!r}")
    unknown = [m for m in modules if m.split(".")[-1] not in _BY_HF_NAME]
    if unknown:
        raise CheckpointError(f"{path}: target module {unknown[0]!r} is not one of {sorted(_BY_HF_NAME)}")
    targets = tuple(t for t in HF_MODULES if any(m.split(".")[-1] == HF_MODULES[t].split(".")[-1] for m in modules))
    for key in ("r", "lora_alpha"):
        if not isinstance(raw.get(key), (int, float)):
            raise CheckpointError(f"{path}: {key} is missing or not a number")
    try:
        return LoraConfig(rank=int(raw["r"]), alpha=float(raw["lora_alpha"]),
                          dropout=float(raw.get("lora_dropout", 0.0)), targets=targets)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def load_peft_adapter(model: nnx.Module, directory: str | os.PathLike) -> nnx.Module:
    """Load a PEFT LoRA adapter directory into ``model`` (in place) and return it.

    A model without adapters gets them (``apply_lora`` with the file's r / alpha / targets); one
    with adapters must have the same targets and rank. Missing, extra or mis-shaped tensors are
    a CheckpointError naming the tensor.
    """
    from safetensors import safe_open

    directory = Path(directory)
    config = read_peft_config(directory)
    existing = lora_targets(model)
    wanted = tuple(TARGETS[t] for t in config.targets)
    if not existing:
        apply_lora(model, config, rngs=nnx.Rngs(0))  # A's draw is overwritten below
    elif set(existing) != set(wanted):
        raise CheckpointError(f"{directory}: the adapter targets {sorted(wanted)}, the model has adapters on {sorted(existing)}")
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} does not exist")
    layers = model.layers
    with safe_open(str(weights), framework="numpy") as f:
        available = set(f.keys())
        expected: set[str] = set()
        values: dict[str, np.ndarray] = {}
        for projection in wanted:
            target = _PROJECTION_TARGET[projection]
            a_var, b_var = getattr(layers, f"lora_a_{projection}"), getattr(layers, f"lora_b_{projection}")
            num_layers, rank = a_var.shape[0], a_var.shape[-1]
            n_in, n_out = math.prod(a_var.shape[1:-1]), math.prod(b_var.shape[2:])
            a_layers, b_layers = [], []
            for i in range(num_layers):
                for matrix, shape, out in (("A", (rank, n_in), a_layers), ("B", (n_out, rank), b_layers)):
                    key = _key(i, target, matrix)
                    expected.add(key)
                    if key not in available:
                        raise CheckpointError(f"{weights}: tensor {key} is missing")
                    tensor = f.get_tensor(key)
                    if tuple(tensor.shape) != shape:
                        raise CheckpointError(f"{weights}: tensor {key} is {list(tensor.shape)}, expected {list(shape)}")
                    out.append(tensor.astype(np.float32).T)
            values[f"lora_a_{projection}"] = np.stack(a_layers).reshape(a_var.shape)
            values[f"lora_b_{projection}"] = np.stack(b_layers).reshape(b_var.shape)
        extra = sorted(available - expected)
        if extra:
            raise CheckpointError(f"{weights}: tensor {extra[0]} has no place in this model")
    load_lora_state(model, {"layers": values})
    layers.lora_scale = config.scale
    layers.lora_dropout = config.dropout
    layers.lora_config = config
    return model
