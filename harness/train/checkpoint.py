"""Orbax checkpoints of a training run, resuming, and loading a trained model from a run.

Layout: ``<run_dir>/checkpoints/<step>/`` (an orbax ``CheckpointManager`` directory), items

* ``params``    the trainable variables (nnx.State),
* ``rest``      every other model variable (frozen base weights for LoRA, RNG state),
* ``opt_state`` the optax state (over ``params`` only),
* ``counters``  ``step`` and ``nonfinite_step``,
* ``data``      the data iterator's ``state()`` (JSON),
* ``meta``      JSON: step, seed, the model's LlamaConfig, the PEFT settings, the mesh.

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

from harness.errors import CheckpointError
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

    def __init__(self, directory: str | Path, *, keep: int, async_save: bool, every: int):
        self.directory = Path(directory).absolute()
        self.every = every
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
        # orbax refuses an empty tree (``rest`` of a full fine-tune holds nothing): leave it out
        items = {name: ocp.args.StandardSave(tree) for name, tree in _split_state(state).items() if _has_arrays(tree)}
        items["data"] = ocp.args.JsonSave(data_state or {})
        items["meta"] = ocp.args.JsonSave({**meta, "step": step})
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def wait(self) -> None:
        """Block until every pending asynchronous save is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()

    def restore(self, step: int, abstract: TrainState) -> Restored:
        """Restore ``step`` onto the shardings of ``abstract`` (ShapeDtypeStructs with shardings)."""
        trees = _split_state(abstract)
        items = {name: ocp.args.StandardRestore(tree) for name, tree in trees.items() if _has_arrays(tree)}
        items["data"] = ocp.args.JsonRestore()
        items["meta"] = ocp.args.JsonRestore()
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        state = _join_state({name: out[name] if name in items else trees[name] for name in STATE_ITEMS})
        data = out["data"] or None
        return Restored(step=step, state=state, data_state=data, meta=dict(out["meta"] or {}))

    def restore_latest(self, abstract: TrainState) -> Restored | None:
        """The newest readable checkpoint (older ones if the newest is corrupt), or None if none.

        Raises CheckpointError when checkpoints exist but none can be read.
        """
        steps = self.steps()
        failures = []
        for step in reversed(steps):
            try:
                return self.restore(step, abstract)
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
    items (``params``, ``rest``) are read, never the optimizer state. ``dtype`` casts floating
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

    wanted_items = {"params": params, "rest": rest}
    args = {name: ocp.args.StandardRestore(target(tree)) for name, tree in wanted_items.items() if _has_arrays(tree)}
    out = manager.restore(chosen, args=ocp.args.Composite(**args))
    manager.close()
    model = nnx.merge(graphdef, out["params"], out["rest"] if "rest" in args else rest)
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
