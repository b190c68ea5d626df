"""Everything a run needs before its first step, each check failing with what to change.

``build_model`` loads the ``model.init`` (preset, ``hf:``/``gguf:`` weights, or an earlier run)
with the run's numerics and adapters; ``build_mesh`` places it, checking the batch against the
data-parallel axes; ``build_data`` makes this process's slice of the batch stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from harness.config import RunConfig
from harness.errors import ConfigError, DataError
from harness.model.sharding import MeshShape, batch_sharding, make_mesh


def build_tokenizer(config: RunConfig, loaded=None):
    """The run's tokenizer: ``model.tokenizer`` if set, else the init's own, else a default.

    The default for random-init presets is the embedded SmolLM2 tokenizer, except for ``tiny``
    (vocab 512), which gets the small test BPE so its ids fit the embedding.
    """
    from harness.model.tokenizer import load_tokenizer, tiny_tokenizer

    spec = config.model.tokenizer
    if spec == "tiny":
        return tiny_tokenizer()
    if spec is not None:
        return load_tokenizer(spec)
    if loaded is not None:
        return loaded
    if config.model.init == "tiny":
        return tiny_tokenizer()
    return load_tokenizer(None)


def _with_numerics(model, config: RunConfig):
    # compute dtype, remat and the attention kernel are static settings of the modules' config
    # (part of the graphdef), so replacing them changes the program, not the weights.
    changes = {
        "compute_dtype": config.model.compute_dtype,
        "remat": config.model.remat,
        "attention_impl": config.model.attention_impl,
    }
    new = model.config.replace(**changes)
    model.config = new
    model.layers.config = new
    return model


def load_init(init: str, *, param_dtype: str, seed: int, mesh: Mesh | None = None):
    """(model, tokenizer or None) that a ``model.init`` names: an earlier run or checkpoint, a
    preset (random init from ``seed``), ``hf:`` or ``gguf:`` weights, in ``param_dtype``; with
    ``mesh`` placed (or streamed) onto it. No numerics overrides, no adapters."""
    from harness.model.loading import load_model
    from harness.train.checkpoint import is_run_or_checkpoint, load_from_run

    if is_run_or_checkpoint(init):
        return load_from_run(init, dtype=param_dtype, mesh=mesh)
    return load_model(init, dtype=param_dtype, mesh=mesh, seed=seed)


def build_model(config: RunConfig, *, seed: int, mesh: Mesh | None = None):
    """(model, tokenizer or None) for ``model.init`` with the run's dtypes, remat and LoRA.

    With ``mesh`` the weights are created (or loaded) already sharded.
    """
    model, tokenizer = load_init(config.model.init, param_dtype=config.model.param_dtype, seed=seed, mesh=mesh)
    model = _with_numerics(model, config)
    if config.peft.method == "lora" and not _has_lora(model):
        from harness.model.peft import LoraConfig, apply_lora

        apply_lora(model, LoraConfig.from_section(config.peft), rngs=nnx.Rngs(seed + 1))
    return model, tokenizer


def _has_lora(model) -> bool:
    return any(name.startswith("lora_a_") for name in vars(model.layers))


def preset_config(config: RunConfig):
    """The LlamaConfig of a random-init preset (known before any weight exists), else None."""
    from harness.model.llama import PRESETS

    return PRESETS.get(config.model.init) if config.model.init != "smollm2-135m" else None


def check_vocab(model_config, tokenizer) -> None:
    """The tokenizer's ids must index the model's embedding."""
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary is "
            f"{model_config.vocab_size}; set model.tokenizer to a tokenizer of this model "
            "(model.tokenizer=tiny for the tiny preset)"
        )


def build_mesh(config: RunConfig) -> Mesh:
    """The ``data x fsdp x tensor`` mesh over every device, with batch divisibility checked."""
    m = config.mesh
    mesh = make_mesh(MeshShape(data=m.data, fsdp=m.fsdp, tensor=m.tensor))
    sizes = dict(zip(mesh.axis_names, mesh.devices.shape))
    rows = sizes["data"] * sizes["fsdp"]
    train = config.train
    micro = train.micro_batch or train.global_batch
    if train.global_batch % rows:
        raise ConfigError(
            f"train.global_batch={train.global_batch} does not divide over the {rows} data-parallel "
            f"devices (mesh data={sizes['data']} x fsdp={sizes['fsdp']}); make the batch a multiple of {rows}"
        )
    if micro % rows:
        raise ConfigError(
            f"train.micro_batch={micro} does not divide over the {rows} data-parallel devices "
            f"(mesh data={sizes['data']} x fsdp={sizes['fsdp']}); make the micro-batch a multiple of {rows}"
        )
    if train.global_batch % jax.process_count():
        raise ConfigError(
            f"train.global_batch={train.global_batch} does not divide over {jax.process_count()} processes"
        )
    return mesh


@dataclass
class DataStream:
    """This process's batches: ``next_batch()`` -> dict of numpy [local rows, L]; resumable."""

    iterator: Any
    local_rows: int
    batches_per_epoch: int | None

    def next_batch(self) -> dict[str, np.ndarray]:
        try:
            return next(self.iterator)
        except StopIteration:
            raise DataError("the data pipeline ran out of batches before the last step") from None

    def state(self) -> dict[str, Any]:
        return self.iterator.state()

    def restore(self, state: dict[str, Any]) -> None:
        self.iterator.restore(state)


def build_data(config: RunConfig, tokenizer) -> DataStream:
    """This process's slice of the global batch stream (``harness.data.pipeline``)."""
    from harness.data.pipeline import build_batches

    iterator = build_batches(
        config.data,
        config.mixture,
        tokenizer,
        config.train.global_batch,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        seed=config.seed,
    )
    return DataStream(iterator=iterator, local_rows=iterator.local_batch, batches_per_epoch=iterator.steps_per_epoch)


def check_length(config: RunConfig, model_config) -> None:
    """Rows must fit the model's context."""
    if config.data.max_length > model_config.max_seq_len:
        raise ConfigError(
            f"data.max_length={config.data.max_length} exceeds the model's context of "
            f"{model_config.max_seq_len} tokens; lower data.max_length"
        )


def total_steps(config: RunConfig, data: DataStream) -> int:
    """train.steps, or epochs x batches per epoch (rounded up)."""
    if config.train.steps is not None:
        return config.train.steps
    if not data.batches_per_epoch:
        raise ConfigError("train.epochs needs a data pipeline that knows its epoch length; set train.steps")
    return math.ceil(config.train.epochs * data.batches_per_epoch)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, global_rows: int) -> dict[str, jax.Array]:
    """Assemble the global batch from every process's local rows (no copy between hosts)."""
    sharding = batch_sharding(mesh)
    out = {}
    for key, value in local.items():
        if key not in ("tokens", "targets", "loss_mask", "segment_ids", "positions"):
            continue
        value = np.asarray(value)
        shape = (global_rows, *value.shape[1:])
        out[key] = jax.make_array_from_process_local_data(sharding, value, shape)
    return out


def check_batch_keys(local: dict[str, np.ndarray]) -> None:
    """The pipeline's batch must have every key of the Batch contract."""
    missing = [k for k in ("tokens", "targets", "loss_mask", "segment_ids", "positions") if k not in local]
    if missing:
        raise DataError(
            f"the data pipeline's batch lacks {missing}; a Batch has tokens, targets, loss_mask, segment_ids, positions"
        )


def check_trainable_tokens(batch: dict[str, jax.Array]) -> None:
    """Stop before the first step when the (global) first batch has nothing to learn from."""
    import jax.numpy as jnp

    if not bool(jnp.any(batch["loss_mask"])):
        raise DataError(
            "the first batch has no trainable token (loss_mask is False everywhere): the mixture's "
            "examples have no assistant turn the template marks for the loss, or packing cut them "
            "off; check data.template and the sources (harness data inspect shows the mask)"
        )


def mesh_description(mesh: Mesh) -> dict[str, int]:
    """{"data": n, "fsdp": n, "tensor": n} of a mesh."""
    return {name: int(size) for name, size in zip(mesh.axis_names, mesh.devices.shape)}


def device_summary() -> dict[str, Any]:
    """Devices and processes this run uses."""
    devices = jax.devices()
    return {
        "count": len(devices),
        "kind": devices[0].device_kind,
        "platform": devices[0].platform,
        "processes": jax.process_count(),
        "local_count": jax.local_device_count(),
    }
