"""Orbax checkpoints: incomplete / corrupt latest skipped, restore onto another mesh, load a run."""

import warnings

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from harness.config import OptimizerSection
from harness.errors import CheckpointError
from harness.model.llama import Llama, get_config
from harness.model.sharding import MeshShape, make_mesh
from harness.train.checkpoint import Checkpointer, load_from_run
from harness.train.optim import make_optimizer
from harness.train.step import init_train_state, train_state_shardings, with_shardings

CONFIG = get_config("tiny")


def sharded_state(mesh, seed=0):
    tx = make_optimizer(OptimizerSection(), optax.constant_schedule(1e-3))
    model = Llama(CONFIG, rngs=nnx.Rngs(seed))
    graphdef, state = init_train_state(model, tx, nnx.Param)
    shardings = train_state_shardings(state, mesh)
    return graphdef, jax.device_put(state, shardings), shardings


def meta():
    import dataclasses

    return {"seed": 0, "model_config": dataclasses.asdict(CONFIG), "peft": {"method": "none"}}


def abstract_of(state, shardings):
    return with_shardings(jax.eval_shape(lambda: state), shardings)


def assert_state_equal(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def mesh8():
    return make_mesh(MeshShape(data=1, fsdp=8, tensor=1))


def test_restore_onto_a_smaller_mesh(tmp_path, mesh8):
    _, state, _ = sharded_state(mesh8)
    saver = Checkpointer(tmp_path / "checkpoints", keep=2, async_save=True, every=1)
    saver.save(3, state, {"epoch": 0, "step": 3}, meta())
    saver.close()

    mesh4 = make_mesh(MeshShape(data=1, fsdp=2, tensor=2), devices=jax.devices()[:4])
    _, template, shardings4 = sharded_state(mesh4, seed=1)
    restored = Checkpointer(tmp_path / "checkpoints", keep=2, async_save=False, every=1).restore_latest(
        abstract_of(template, shardings4)
    )
    assert restored.step == 3 and restored.data_state == {"epoch": 0, "step": 3}
    assert_state_equal(restored.state, state)
    wq = restored.state.params["layers"]["wq"][...]
    assert len(wq.sharding.device_set) == 4
    assert wq.sharding.spec == shardings4.params["layers"]["wq"].spec


def test_corrupt_latest_falls_back_with_warning(tmp_path, mesh8):
    _, state, shardings = sharded_state(mesh8)
    saver = Checkpointer(tmp_path / "checkpoints", keep=3, async_save=False, every=1)
    saver.save(1, state, {"step": 1}, meta())
    later = jax.tree_util.tree_map(lambda x: x + 1 if x.dtype == np.float32 else x, state)
    saver.save(2, later, {"step": 2}, meta())
    saver.close()
    # a save killed mid-write leaves only orbax's temporary directory: not a step at all
    (tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1234").mkdir()
    # and the newest complete step loses its array data (disk error, partial copy)
    for file in (tmp_path / "checkpoints" / "2" / "params").rglob("*"):
        if file.is_file() and file.name != "commit_success.txt":
            file.write_bytes(b"garbage")

    reader = Checkpointer(tmp_path / "checkpoints", keep=3, async_save=False, every=1)
    assert reader.steps() == [1, 2]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restored = reader.restore_latest(abstract_of(state, shardings))
    assert restored.step == 1 and restored.data_state == {"step": 1}
    assert_state_equal(restored.state, state)
    assert any("checkpoints/2 cannot be read" in str(w.message) and "falling back to step 1" in str(w.message)
               for w in caught)


def test_no_readable_checkpoint_is_an_error(tmp_path, mesh8):
    _, state, shardings = sharded_state(mesh8)
    saver = Checkpointer(tmp_path / "checkpoints", keep=3, async_save=False, every=1)
    saver.save(1, state, None, meta())
    saver.close()
    for file in (tmp_path / "checkpoints" / "1" / "params").rglob("*"):
        if file.is_file():
            file.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match="no checkpoint in .* can be read"):
            Checkpointer(tmp_path / "checkpoints", keep=3, async_save=False, every=1).restore_latest(
                abstract_of(state, shardings)
            )


def test_keep_last_k_and_load_from_run(tmp_path, mesh8):
    graphdef, state, _ = sharded_state(mesh8)
    saver = Checkpointer(tmp_path / "run" / "checkpoints", keep=2, async_save=True, every=2)
    assert [s for s in range(1, 7) if saver.due(s)] == [2, 4, 6]
    for step in (2, 4, 6):
        saver.save(step, state, None, meta())
    saver.close()
    assert Checkpointer(tmp_path / "run" / "checkpoints", keep=2, async_save=False, every=2).steps() == [4, 6]

    expected = nnx.merge(graphdef, state.params, state.rest)
    for path in (tmp_path / "run", tmp_path / "run" / "checkpoints", tmp_path / "run" / "checkpoints" / "4"):
        model, tokenizer = load_from_run(path)
        assert tokenizer is None  # this run saved no tokenizer directory
        np.testing.assert_array_equal(np.asarray(model.embed[...]), np.asarray(expected.embed[...]))
    tokens = np.arange(12, dtype=np.int32).reshape(2, 6)
    np.testing.assert_allclose(np.asarray(model(tokens)), np.asarray(expected(tokens)), rtol=1e-6, atol=1e-6)
    bf16, _ = load_from_run(tmp_path / "run", dtype="bfloat16")
    assert bf16.embed[...].dtype == np.dtype("bfloat16") or str(bf16.embed[...].dtype) == "bfloat16"
    with pytest.raises(CheckpointError, match="neither a run directory"):
        load_from_run(tmp_path)
