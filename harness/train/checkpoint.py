"""Orbax checkpoints of a training run, resuming, and loading a trained model from a run.

Layout: ``<run_dir>/checkpoints/<step>/`` (an orbax ``CheckpointManager`` directory), items

* ``params``    the trainable variables (nnx.State; the adapters alone for LoRA),
* ``rest``      every other model variable (the frozen base weights), left out of adapter-only
                checkpoints except for non-parameter variables, if a model has any,
* ``opt_state`` the optax state (over ``params`` only),
* ``counters``  ``step`` and ``nonfinite_step``,
* ``data``      the data iterator's ``state()`` (JSON),
* ``meta``      JSON: step, seed, the model's LlamaConfig, the PEFT settings, the mesh,
                ``adapter_only``, and for LoRA runs ``base`` (``frozen_base.BaseSpec``: the
                ``model.init`` to rebuild the base from, and a fingerprint of its tensors).

Adapter-only checkpoints (``checkpoint.adapter_only``: null = on for LoRA runs) need the run's
configuration to know the base: ``Checkpointer(..., run_config=...)``, by default read from the
``config.yaml`` of the run directory that holds ``checkpoints/``. On restore the base is the one
the caller passes (``restore_latest(abstract, base=state.rest)``) or is rebuilt from
``meta["base"]``; a base whose fingerprint differs is a ``frozen_base.BaseMismatch``.

Orbax writes each step into a temporary directory and renames it when complete, so a process
killed mid-save leaves no step that looks complete; ``restore_latest`` additionally falls back
to the previous step, with a warning, when the latest cannot be read. Arrays are restored onto
whatever shardings the caller asks for, so a run saved on 8 devices resumes on 4.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from harness.errors import CheckpointError, ConfigError
from harness.train.frozen_base import BaseMismatch, BaseSpec, absolute_init, fingerprint, join_base, restore_base, split_base
from harness.train.step import TrainState

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
STATE_ITEMS = ("params", "rest", "opt_state", "counters")


@dataclass
class Restored:
    """A restored checkpoint: train state, data-iterator state, metadata, and its step."""

    step: int
    state: TrainState
    data_state: dict[str, Any] | None
    meta: dict[str, Any]


def _split_state(state: TrainState) -> dict[str, Any]:
    return {
        "params": state.params,
        "rest": state.rest,
        "opt_state": state.opt_state,
        "counters": {"step": state.step, "nonfinite_step": state.nonfinite_step},
    }


def _join_state(items: dict[str, Any]) -> TrainState:
    return TrainState(
        step=items["counters"]["step"],
        params=items["params"],
        rest=items["rest"],
        opt_state=items["opt_state"],
        nonfinite_step=items["counters"]["nonfinite_step"],
    )


def _has_arrays(tree) -> bool:
    return bool(jax.tree_util.tree_leaves(tree))


class Checkpointer:
    """Save every ``every`` steps (and at the end), keep the last ``keep``, optionally async."""

    def __init__(self, directory: str | Path, *, keep: int, async_save: bool, every: int, run_config=None):
        self.directory = Path(directory).absolute()
        self.every = every
        self.run_config = run_config if run_config is not None else _run_config_beside(self.directory)
        self.adapter_only = adapter_only_for(self.run_config)
        self._base_spec: BaseSpec | None = None  # computed at the first save: the base is frozen
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # half-written steps of a killed run
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """Complete checkpoint steps on disk, oldest first."""
        return sorted(self.manager.all_steps())

    def due(self, step: int) -> bool:
        """Whether the periodic schedule saves after ``step``."""
        return self.every > 0 and step % self.every == 0

    def save(self, step: int, state: TrainState, data_state: dict[str, Any] | None, meta: dict[str, Any]) -> None:
        """Start saving ``state`` as ``step`` (returns before the write ends when async)."""
        if step in self.manager.all_steps():
            return
        trees = _split_state(state)
        meta = {**meta, "step": step, "adapter_only": self.adapter_only}
        if self._is_lora():
            meta["base"] = self._base(state).to_meta()
        if self.adapter_only:
            trees["rest"] = split_base(state.rest)[1]  # the frozen base is rebuilt, not saved
        # orbax refuses an empty tree (``rest`` of a full fine-tune holds nothing): leave it out
        items = {name: ocp.args.StandardSave(tree) for name, tree in trees.items() if _has_arrays(tree)}
        items["data"] = ocp.args.JsonSave(data_state or {})
        items["meta"] = ocp.args.JsonSave(meta)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def _is_lora(self) -> bool:
        return self.run_config is not None and self.run_config.peft.method == "lora"

    def _base(self, state: TrainState) -> BaseSpec:
        if self._base_spec is None:
            model = self.run_config.model
            self._base_spec = BaseSpec(init=absolute_init(model.init), param_dtype=model.param_dtype,
                                       seed=self.run_config.seed, fingerprint=fingerprint(split_base(state.rest)[0]))
        return self._base_spec

    def wait(self) -> None:
        """Block until every pending asynchronous save is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()

    def restore(self, step: int, abstract: TrainState, base=None) -> Restored:
        """Restore ``step`` onto the shardings of ``abstract`` (ShapeDtypeStructs with shardings).

        For an adapter-only checkpoint the frozen base is ``base`` (the caller's ``state.rest``,
        real arrays) when given, else rebuilt from the checkpoint's ``meta["base"]``; either way
        its fingerprint is checked (BaseMismatch when it is not the base of the checkpoint).
        """
        trees = _split_state(abstract)
        meta = read_meta(self.directory, step)
        adapter_only = bool(meta.get("adapter_only"))
        if adapter_only:
            abstract_base, trees["rest"] = split_base(abstract.rest)
        items = {name: ocp.args.StandardRestore(tree) for name, tree in trees.items() if _has_arrays(tree)}
        items["data"] = ocp.args.JsonRestore()  # meta was read above: not restored a second time
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        restored = {name: out[name] if name in items else trees[name] for name in STATE_ITEMS}
        if adapter_only:
            where = str(self.directory / str(step))
            spec = BaseSpec.from_meta(meta, where)
            restored["rest"] = join_base(restore_base(spec, abstract_base, where, given=base), restored["rest"])
        data = out["data"] or None
        return Restored(step=step, state=_join_state(restored), data_state=data, meta=meta)

    def restore_latest(self, abstract: TrainState, base=None) -> Restored | None:
        """The newest readable checkpoint (older ones if the newest is corrupt), or None if none.

        ``base``: see ``restore``. Raises CheckpointError when checkpoints exist but none can be
        read, and BaseMismatch at once when the base is not the checkpoint's.
        """
        steps = self.steps()
        failures = []
        for step in reversed(steps):
            try:
                return self.restore(step, abstract, base=base)
            except BaseMismatch:  # not a damaged file: an older step has the same base
                raise
            except Exception as exc:  # orbax raises many types for truncated/missing files
                failures.append(f"step {step}: {type(exc).__name__}: {str(exc)[:200]}")
                older = [s for s in steps if s < step]
                fallback = f"falling back to step {older[-1]}" if older else "no older checkpoint"
                message = f"checkpoint {self.directory / str(step)} cannot be read ({exc!s:.200}); {fallback}"
                warnings.warn(message, stacklevel=2)
                log.warning(message)
        if steps:
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be read ({'; '.join(failures)}); "
                "delete the directory to start the run over"
            )
        return None


def adapter_only_for(run_config) -> bool:
    """Whether a run's checkpoints leave the frozen base out (``checkpoint.adapter_only``,
    null = exactly when the run trains LoRA adapters). Without a run config: never."""
    if run_config is None:
        return False
    setting = run_config.checkpoint.adapter_only
    return run_config.peft.method == "lora" if setting is None else bool(setting)


def _run_config_beside(directory: Path):
    """The run config of the run directory holding ``directory`` (``<run>/checkpoints``), or None."""
    path = directory.parent / "config.yaml"
    if directory.name != CHECKPOINT_DIR or not path.is_file():
        return None
    from harness.config import load_run_config

    try:
        return load_run_config(path)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: the run's config cannot be read for its checkpoints: {exc}") from None


# --------------------------------------------------------------------------- loading a trained model


def _checkpoint_location(path: Path) -> tuple[Path, int | None, Path | None]:
    """(checkpoints dir, step or None for the latest, run dir or None) for a user-given path."""
    path = path.absolute()
    if (path / CHECKPOINT_DIR).is_dir():
        return path / CHECKPOINT_DIR, None, path
    if (path / "meta").is_dir() and path.name.isdigit():  # one step directory
        run_dir = path.parent.parent if path.parent.name == CHECKPOINT_DIR else None
        return path.parent, int(path.name), run_dir
    if any(child.name.isdigit() and (child / "meta").is_dir() for child in path.iterdir()):
        run_dir = path.parent if path.name == CHECKPOINT_DIR else None
        return path, None, run_dir
    raise CheckpointError(f"{path} is neither a run directory, a checkpoints directory nor a checkpoint step")


def is_run_or_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is something ``load_from_run`` can load."""
    try:
        _checkpoint_location(Path(path))
    except (CheckpointError, OSError):
        return False
    return True


def read_meta(directory: Path, step: int) -> dict[str, Any]:
    """The ``meta`` item of one checkpoint step."""
    meta_dir = directory / str(step) / "meta"
    files = sorted(meta_dir.glob("*")) if meta_dir.is_dir() else []
    for file in files:
        try:
            return json.loads(file.read_text())
        except (OSError, ValueError):
            continue
    raise CheckpointError(f"checkpoint {directory / str(step)} has no readable meta item")


def run_meta(path: str | Path, *, step: int | None = None) -> dict[str, Any]:
    """The ``meta`` of a run directory's newest (or ``step``'s) complete checkpoint."""
    directory, wanted, _ = _checkpoint_location(Path(path))
    wanted = step if step is not None else wanted
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
    steps = sorted(manager.all_steps())
    manager.close()
    if not steps:
        raise CheckpointError(f"{directory} holds no complete checkpoint")
    return read_meta(directory, wanted if wanted is not None else steps[-1])


def build_model_from_meta(meta: dict[str, Any], *, seed: int = 0):
    """An (uninitialised-weights) model with the architecture and adapters recorded in ``meta``."""
    from flax import nnx

    from harness.model.llama import Llama, LlamaConfig

    fields = {f.name for f in dataclasses.fields(LlamaConfig)}
    config = LlamaConfig(**{k: v for k, v in meta["model_config"].items() if k in fields})
    model = Llama(config, rngs=nnx.Rngs(seed))
    peft = meta.get("peft") or {}
    if peft.get("method") == "lora":
        from harness.model.peft import LoraConfig, apply_lora

        lora = LoraConfig(rank=peft["rank"], alpha=peft["alpha"], dropout=peft["dropout"], targets=tuple(peft["targets"]))
        apply_lora(model, lora, rngs=nnx.Rngs(seed))
    return model


def load_from_run(path: str | Path, *, dtype: str | None = None, mesh=None, step: int | None = None):
    """(model, tokenizer) from a run directory, its ``checkpoints/`` or one checkpoint step.

    The architecture (and LoRA adapters) come from the checkpoint's metadata; only the model
    items (``params``, ``rest``) are read, never the optimizer state. An adapter-only checkpoint's
    base is rebuilt from its ``meta["base"]`` and checked against the recorded fingerprint. ``dtype`` casts floating
    parameters (e.g. "bfloat16" for evaluation); ``mesh`` places them by their logical axes
    (default: the first device); ``step`` picks a checkpoint (default: the path's step, else the
    newest). The tokenizer is the one the run saved in ``<run>/tokenizer`` (None when the run
    saved none).
    """
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import SingleDeviceSharding

    from harness.model.sharding import named_shardings

    directory, wanted, run_dir = _checkpoint_location(Path(path))
    wanted = step if step is not None else wanted
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
    steps = sorted(manager.all_steps())
    if not steps:
        raise CheckpointError(f"{directory} holds no complete checkpoint")
    chosen = wanted if wanted is not None else steps[-1]
    if chosen not in steps:
        raise CheckpointError(f"{directory} has no complete checkpoint {chosen}; it has {steps}")
    meta = read_meta(directory, chosen)
    trainable = _trainable_from_meta(meta)

    abstract_model = nnx.eval_shape(lambda: build_model_from_meta(meta))
    graphdef, params, rest = nnx.split(abstract_model, trainable, ...)

    def target(tree):
        if mesh is not None:
            shardings = named_shardings(tree, mesh)
        else:
            one = SingleDeviceSharding(jax.local_devices()[0])
            shardings = jax.tree_util.tree_map(lambda _: one, tree)
        return jax.tree_util.tree_map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree, shardings
        )

    adapter_only = bool(meta.get("adapter_only"))
    if adapter_only:
        abstract_base, rest = split_base(rest)
    wanted_items = {"params": params, "rest": rest}
    args = {name: ocp.args.StandardRestore(target(tree)) for name, tree in wanted_items.items() if _has_arrays(tree)}
    out = manager.restore(chosen, args=ocp.args.Composite(**args))
    manager.close()
    rest = out["rest"] if "rest" in args else rest
    if adapter_only:
        where = str(directory / str(chosen))
        base = restore_base(BaseSpec.from_meta(meta, where), target(abstract_base), where)
        rest = join_base(base, rest)
    model = nnx.merge(graphdef, out["params"], rest)
    if dtype is not None:
        wanted_dtype = jnp.dtype(dtype)

        def cast(x):
            return x.astype(wanted_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

        nnx.update(model, jax.tree_util.tree_map(cast, nnx.state(model)))
    return model, _run_tokenizer(run_dir)


def _trainable_from_meta(meta: dict[str, Any]):
    from flax import nnx

    if (meta.get("peft") or {}).get("method") == "lora":
        from harness.model.peft import LoRAParam

        return LoRAParam
    return nnx.Param


def _run_tokenizer(run_dir: Path | None):
    if run_dir is None or not (run_dir / "tokenizer").is_dir():
        return None
    from harness.model.tokenizer import load_tokenizer

    return load_tokenizer(str(run_dir / "tokenizer"))
