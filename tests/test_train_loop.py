"""The train loop in-process (8 CPU devices): whole-batch loss reduction, LoRA, NaN stop, bad input."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from harness.cli import main as cli_main
from harness.config import OptimizerSection, load_run_config
from harness.errors import ConfigError, DataError
from harness.model.llama import Llama, get_config
from harness.model.sharding import MeshShape, make_mesh
from harness.train import setup
from harness.train.checkpoint import Checkpointer, load_from_run
from harness.train.loop import TrainingDiverged, train
from harness.train.optim import make_optimizer
from harness.train.step import TrainStep, init_train_state, token_loss_sum, train_state_shardings

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "experiments" / "train_tiny.yaml"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)  # the experiment's data path is relative to the checkout
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))


def random_batch(rng, rows, length, vocab=512):
    tokens = rng.integers(0, vocab, (rows, length + 1)).astype(np.int32)
    mask = rng.random((rows, length)) < 0.3
    mask[0, :] = True  # very uneven counts per micro-batch: row 0 dominates
    return {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask,
            "segment_ids": np.ones((rows, length), np.int32),
            "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1))}


def test_accumulated_loss_is_whole_batch_token_mean():
    """Loss and update with 4 micro-batches equal one 16-row batch: sum(ce)/count over all rows."""
    mesh = make_mesh(MeshShape(data=2, fsdp=2, tensor=1), devices=jax.devices()[:4])
    tx = make_optimizer(OptimizerSection(), optax.constant_schedule(1e-2))
    batch = random_batch(np.random.default_rng(0), 16, 16)
    graphdef, state = init_train_state(Llama(get_config("tiny"), rngs=nnx.Rngs(0)), tx, nnx.Param)

    @jax.jit
    def sums(state, micro):
        return token_loss_sum(nnx.merge(graphdef, state.params, state.rest), micro)

    sum_loss, count = sums(state, batch)
    expected = float(sum_loss) / int(count)
    micro_means = [float(s) / int(c) for s, c in (sums(state, {k: v[i::4] for k, v in batch.items()}) for i in range(4))]
    assert abs(np.mean(micro_means) - expected) > 1e-3  # the two reductions really differ on this batch

    results = {}
    shardings = train_state_shardings(state, mesh)
    for accumulation in (1, 4):
        step = TrainStep(graphdef, tx, nnx.Param, accumulation_steps=accumulation, mesh=mesh, state_shardings=shardings)
        fresh = jax.tree_util.tree_map(lambda x: x.copy(), state)
        new_state, metrics = step(jax.device_put(fresh, shardings), batch)
        results[accumulation] = (float(metrics["loss"]), new_state.params["embed"][...])
    assert results[1][0] == pytest.approx(expected, rel=1e-5)
    assert results[4][0] == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(np.asarray(results[4][1]), np.asarray(results[1][1]), rtol=1e-5, atol=1e-6)


def test_lora_trains_only_adapters(tmp_path):
    config = load_run_config(TINY, ["peft.method=lora", "peft.rank=4", "peft.targets=[q,v,down]", "train.steps=3",
                                    "train.lr=1e-2", "train.warmup_steps=0", "checkpoint.every=0"])
    train(config, tmp_path / "lora")
    record = json.loads((tmp_path / "lora" / "run.json").read_text())
    c = get_config("tiny")
    lora_params = c.num_layers * 4 * (c.hidden_size + c.num_heads * c.dim_per_head)  # q
    lora_params += c.num_layers * 4 * (c.hidden_size + c.num_kv_heads * c.dim_per_head)  # v
    lora_params += c.num_layers * 4 * (c.intermediate_size + c.hidden_size)  # down
    assert record["trainable_params"] == lora_params
    assert record["params"] == c.num_params() + lora_params

    trained, _ = load_from_run(tmp_path / "lora")
    base, _ = setup.build_model(config, seed=0, mesh=setup.build_mesh(config))  # the run's own init
    np.testing.assert_array_equal(np.asarray(trained.layers.wq[...]), np.asarray(base.layers.wq[...]))
    np.testing.assert_array_equal(np.asarray(trained.embed[...]), np.asarray(base.embed[...]))
    assert float(jnp.abs(trained.layers.lora_b_wq[...]).max()) > 0  # B moved off zero

    restored = Checkpointer(tmp_path / "lora" / "checkpoints", keep=1, async_save=False, every=0)
    step = restored.steps()[-1]
    opt_dir = tmp_path / "lora" / "checkpoints" / str(step) / "opt_state"
    names = {p.name for p in opt_dir.rglob("*")}
    assert not any("wq" in n and "lora" not in n for n in names)  # no base weight in optimizer state


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = load_run_config(TINY, ["train.lr=1e30", "train.schedule=constant", "train.warmup_steps=0",
                                    "optimizer.clip_norm=null", "checkpoint.every=1", "checkpoint.keep=5"])
    run_dir = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match=r"NaN/inf at step (\d+).*last good checkpoint is step") as info:
        train(config, run_dir)
    bad_step = int(info.value.args[0].split("at step ")[1].split(" ")[0])
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and "NaN/inf" in record["error"]
    steps = Checkpointer(run_dir / "checkpoints", keep=5, async_save=False, every=1).steps()
    assert steps == list(range(1, bad_step))
    model, _ = load_from_run(run_dir)  # the last good checkpoint is intact and finite
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree_util.tree_leaves(nnx.state(model)))
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(losses[: bad_step - 1]))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.lrr=1"], "unknown key 'train.lrr'"),
        (["mesh.fsdp=3"], "do not divide the 8 devices"),
        (["train.global_batch=12", "train.micro_batch=12"], "global_batch=12 does not divide over the 8 data-parallel"),
        (["train.micro_batch=6"], "micro_batch=6 does not divide train.global_batch=16"),
        (["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=8"], "parameter layers/wk: dimension 'kv_heads' of size 2"),
        (["data.max_length=1024"], "data.max_length=1024 exceeds the model's context of 512"),
        (["model.tokenizer=null", "model.init=tiny", "model.tokenizer=smollm2-135m"], "set twice"),
        (["model.tokenizer=smollm2-135m"], "the tokenizer has 49152 tokens but the model's vocabulary is 512"),
    ],
)
def test_bad_input_fails_before_the_first_step(tmp_path, capsys, overrides, message):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", str(TINY), *overrides, "--run-dir", str(tmp_path / "bad")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_no_trainable_token_is_refused(tmp_path):
    # Rows shorter than the survey prompt: every assistant token is cut off.
    config = load_run_config(TINY, ["data.max_length=16"])
    # the pipeline drops examples without a trainable token, leaving no rows to batch
    with pytest.raises((DataError, ConfigError), match="0 rows|trainable"):
        train(config, tmp_path / "empty")
    assert json.loads((tmp_path / "empty" / "run.json").read_text())["status"] == "failed"
