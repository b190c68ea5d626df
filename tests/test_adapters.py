"""Adapter-only LoRA checkpoints (base rebuilt from model.init and fingerprint-checked, exact
resumption) and the Hugging Face PEFT adapter format (parity against the real ``peft``)."""

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from harness.config import load_run_config
from harness.errors import CheckpointError, ConfigError
from harness.model.adapters import load_peft_adapter, save_peft_adapter
from harness.model.convert_hf import save_hf
from harness.model.llama import Llama, get_config
from harness.model.peft import LoraConfig, apply_lora
from harness.train import optim, setup
from harness.train.checkpoint import Checkpointer, load_from_run
from harness.train.frozen_base import BaseMismatch, load_base_model
from harness.train.step import place_train_state, with_shardings

REPO = Path(__file__).resolve().parents[1]
LORA_YAML = REPO / "experiments" / "train_tiny_lora.yaml"
SHORT = ["train.steps=4", "train.global_batch=8", "train.micro_batch=8", "checkpoint.every=2",
         "checkpoint.async=false"]
ALL_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
TOKENS = (np.arange(24, dtype=np.int32).reshape(2, 12) * 37) % 512


def flat_arrays(tree) -> dict:
    return {str(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def assert_trees_equal(a, b):
    fa, fb = flat_arrays(a), flat_arrays(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def lora_train_state(run_dir: Path, *overrides: str):
    """(config, graphdef, TrainState with non-zero adapters, shardings) of a LoRA run whose
    config.yaml is in ``run_dir`` (as ``harness train`` writes it), built like the train loop does."""
    config = load_run_config(LORA_YAML, [*SHORT, *overrides])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config.to_yaml())
    mesh = setup.build_mesh(config)
    model, _ = setup.build_model(config, seed=config.seed, mesh=mesh)
    tx = optim.make_optimizer(config.optimizer, optim.make_schedule(config.train, 4))
    graphdef, state, shardings = place_train_state(model, tx, optim.trainable_filter(config.peft), mesh)
    state.params = jax.tree_util.tree_map(lambda x: x + 0.01, state.params)  # B != 0, as after training
    meta = {"seed": 0, "model_config": dataclasses.asdict(model.config), "peft": config.peft.model_dump(mode="json")}
    return config, graphdef, state, shardings, meta


def test_adapter_only_checkpoint_leaves_out_the_base_and_restores_it(tmp_path):
    config, graphdef, state, shardings, meta = lora_train_state(tmp_path / "lora")
    (tmp_path / "full").mkdir()
    full_config = load_run_config(LORA_YAML, [*SHORT, "checkpoint.adapter_only=false"])
    (tmp_path / "full" / "config.yaml").write_text(full_config.to_yaml())
    for name in ("lora", "full"):
        saver = Checkpointer(tmp_path / name / "checkpoints", keep=2, async_save=False, every=1)
        saver.save(2, state, {"step": 2}, meta)
        saver.close()
    lora_step, full_step = tmp_path / "lora" / "checkpoints" / "2", tmp_path / "full" / "checkpoints" / "2"
    assert not (lora_step / "rest").exists() and (full_step / "rest").is_dir()
    base_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(state.rest))
    saved = dir_bytes(full_step) - dir_bytes(lora_step)
    # Orbax compresses, so the saving is below the raw base bytes (0.79-0.9x seen, the norms
    # being ones); any base array stored elsewhere would bring it near zero.
    assert saved > 0.5 * base_bytes, (saved, base_bytes)
    recorded = json.loads(next((lora_step / "meta").glob("*")).read_text())
    assert recorded["adapter_only"] is True and recorded["base"]["init"] == "tiny"
    assert set(recorded["base"]["fingerprint"]) >= {"embed", "layers/wq", "lm_head"}

    abstract = with_shardings(jax.eval_shape(lambda: state), shardings)
    reader = Checkpointer(tmp_path / "lora" / "checkpoints", keep=2, async_save=False, every=1)
    rebuilt = reader.restore_latest(abstract)  # the base rebuilt from model.init
    given = reader.restore_latest(abstract, base=state.rest)  # the caller's base, checked
    for restored in (rebuilt, given):
        assert restored.step == 2 and restored.data_state == {"step": 2}
        assert_trees_equal(restored.state, state)
        assert jax.tree_util.tree_structure(restored.state) == jax.tree_util.tree_structure(state)
    wq = rebuilt.state.rest["layers"]["wq"][...]
    assert wq.sharding.spec == shardings.rest["layers"]["wq"].spec

    model, _ = load_from_run(tmp_path / "lora")
    expected = nnx.merge(graphdef, state.params, state.rest)
    assert_trees_equal(nnx.state(model), nnx.state(expected))  # bitwise: base rebuilt exactly


def test_restoring_onto_a_different_base_is_a_checkpoint_error(tmp_path):
    base_dir = tmp_path / "base"
    save_hf(Llama(get_config("tiny"), rngs=nnx.Rngs(0)), base_dir)
    run = tmp_path / "run"
    _, _, state, shardings, meta = lora_train_state(run, f"model.init=hf:{base_dir}")
    saver = Checkpointer(run / "checkpoints", keep=2, async_save=False, every=1)
    saver.save(2, state, None, meta)
    saver.close()
    load_from_run(run)  # the unchanged base loads

    save_hf(Llama(get_config("tiny"), rngs=nnx.Rngs(1)), base_dir)  # the base directory is replaced
    with pytest.raises(CheckpointError, match=r"base tensor \S+ differs from the one the adapters were trained on"):
        load_from_run(run)
    abstract = with_shardings(jax.eval_shape(lambda: state), shardings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not mistaken for a damaged step (no fallback warning)
        with pytest.raises(BaseMismatch, match="model.init weights changed"):
            Checkpointer(run / "checkpoints", keep=2, async_save=False, every=1).restore_latest(abstract)
    other = jax.tree_util.tree_map(lambda x: x * 2, state.rest)
    with pytest.raises(BaseMismatch):
        Checkpointer(run / "checkpoints", keep=2, async_save=False, every=1).restore_latest(abstract, base=other)


@pytest.fixture(scope="module")
def trained_lora_run(tmp_path_factory):
    """A 4-step LoRA run (adapter-only checkpoints at steps 2 and 4), never interrupted."""
    from harness.train.loop import train

    run = tmp_path_factory.mktemp("lora_run") / "run"
    config = load_run_config(LORA_YAML, SHORT)
    train(config, run)
    return config, run


def test_lora_resume_from_adapter_only_checkpoint_is_exact(trained_lora_run, tmp_path):
    from harness.train.loop import train

    config, reference = trained_lora_run
    assert not (reference / "checkpoints" / "4" / "rest").exists()
    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)
    shutil.rmtree(resumed / "checkpoints" / "4")  # as if killed between the checkpoints of 2 and 4
    result = train(config, resumed)
    assert result.resumed_from == 2

    def metrics(run):
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    ref, got = metrics(reference), metrics(resumed)
    assert [r["step"] for r in got] == [r["step"] for r in ref] == [1, 2, 3, 4]
    for a, b in zip(ref, got):
        for key in ("loss", "grad_norm", "lr", "loss_tokens"):
            assert a[key] == b[key], (a["step"], key)
    model_a, _ = load_from_run(reference)
    model_b, _ = load_from_run(resumed)
    assert_trees_equal(nnx.state(model_a), nnx.state(model_b))


def random_lora_model(seed=0, rank=4):
    """(base model, the same with adapters on every projection and non-zero B)."""
    base = Llama(get_config("tiny"), rngs=nnx.Rngs(seed))
    model = Llama(get_config("tiny"), rngs=nnx.Rngs(seed))
    apply_lora(model, LoraConfig(rank=rank, alpha=2.0 * rank, dropout=0.1, targets=ALL_TARGETS), nnx.Rngs(1))
    key = jax.random.key(7)
    for name in sorted(vars(model.layers)):
        if name.startswith("lora_b_"):
            key, sub = jax.random.split(key)
            variable = getattr(model.layers, name)
            variable.set_value(0.05 * jax.random.normal(sub, variable.shape, jnp.float32))
    return base, model


def test_peft_export_matches_peft_library(tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import LlamaForCausalLM

    base, model = random_lora_model()
    save_hf(base, tmp_path / "base")
    save_peft_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8.0
    assert config["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    hf = LlamaForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    layer0 = peft_model.base_model.model.model.layers[0].self_attn.o_proj
    assert tuple(layer0.lora_A["default"].weight.shape) == (4, 64)  # [r, in]
    assert tuple(layer0.lora_B["default"].weight.shape) == (64, 4)  # [out, r]
    with torch.no_grad():
        theirs = peft_model(torch.tensor(TOKENS, dtype=torch.long)).logits.numpy()
    ours = np.asarray(model(TOKENS))
    assert np.abs(ours - np.asarray(base(TOKENS))).max() > 1e-2  # the adapters matter
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)

    fresh = Llama(get_config("tiny"), rngs=nnx.Rngs(0))
    load_peft_adapter(fresh, tmp_path / "adapter")
    np.testing.assert_array_equal(np.asarray(fresh(TOKENS)), ours)
    assert fresh.layers.lora_dropout == 0.1


def test_load_adapter_written_by_peft(tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import LlamaForCausalLM

    from harness.model.convert_hf import load_hf

    save_hf(Llama(get_config("tiny"), rngs=nnx.Rngs(3)), tmp_path / "base")
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    lora = peft.LoraConfig(r=2, lora_alpha=5, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
    peft_model = peft.get_peft_model(hf, lora)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        theirs = peft_model.eval()(torch.tensor(TOKENS, dtype=torch.long)).logits.numpy()

    model = load_peft_adapter(load_hf(tmp_path / "base"), tmp_path / "adapter")
    assert model.layers.lora_scale == 2.5
    np.testing.assert_allclose(np.asarray(model(TOKENS)), theirs, atol=1e-4, rtol=0)


def test_bad_adapters_and_config_are_errors(tmp_path):
    _, model = random_lora_model()
    save_peft_adapter(model, tmp_path / "a")
    config_file = tmp_path / "a" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(CheckpointError, match="use_dora=True is not supported"):
        load_peft_adapter(Llama(get_config("tiny"), rngs=nnx.Rngs(0)), tmp_path / "a")
    config_file.write_text(json.dumps({**config, "target_modules": ["q_proj", "lm_head"]}))
    with pytest.raises(CheckpointError, match="target module 'lm_head'"):
        load_peft_adapter(Llama(get_config("tiny"), rngs=nnx.Rngs(0)), tmp_path / "a")
    other = Llama(get_config("tiny"), rngs=nnx.Rngs(0))
    apply_lora(other, LoraConfig(rank=4, targets=("q",)), nnx.Rngs(0))
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="the model has adapters on"):
        load_peft_adapter(other, tmp_path / "a")
    with pytest.raises(ConfigError, match="checkpoint.adapter_only=true needs peft.method=lora"):
        load_run_config(REPO / "experiments" / "train_tiny.yaml", ["checkpoint.adapter_only=true"])


def test_convert_adapter_only_cli(trained_lora_run, tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app

    _, run = trained_lora_run
    result = CliRunner().invoke(app, ["convert", str(run), str(tmp_path / "adapter"), "--adapter-only", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["base_model_name_or_path"] == "tiny" and "adapter_model.safetensors" in summary["files"]
    trained, _ = load_from_run(run)
    base = load_base_model("tiny", param_dtype="float32", seed=0)  # the run's model.init and seed
    rebuilt = load_peft_adapter(base, tmp_path / "adapter")
    assert_trees_equal(nnx.state(rebuilt), nnx.state(trained))
    np.testing.assert_allclose(np.asarray(rebuilt(TOKENS)), np.asarray(trained(TOKENS)), atol=1e-5)
