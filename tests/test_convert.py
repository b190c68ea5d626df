"""save_hf / load_hf round trips, transformers loading, bad checkpoints, load_model, the CLI."""

from __future__ import annotations

import json
import logging
import shutil
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402

from harness.cli import main as cli_main  # noqa: E402
from harness.errors import CheckpointError, ConfigError  # noqa: E402
from harness.model.convert import load_hf, save_hf  # noqa: E402
from harness.model.convert_safetensors import SafetensorsReader  # noqa: E402
from harness.model.llama import Llama, get_config  # noqa: E402
from harness.model.loading import load_model  # noqa: E402
from harness.model.sharding import make_mesh  # noqa: E402
from harness.model.tokenizer import tiny_tokenizer  # noqa: E402

from test_model_parity import CASES, hf_logits, make_hf_model, random_tokens  # noqa: E402


def tensors_of(directory) -> dict[str, np.ndarray]:
    """Every tensor of a HF directory, read with the reference safetensors library."""
    out = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="numpy") as f:
            out.update({name: f.get_tensor(name) for name in f.keys()})
    return out


def transformers_load(directory):
    """from_pretrained with every log record and warning captured; returns (model, info, messages)."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, info = transformers.AutoModelForCausalLM.from_pretrained(str(directory), output_loading_info=True)
    finally:
        logger.removeHandler(handler)
    return model.eval(), info, records + [str(w.message) for w in caught]


def random_harness_model(seed=0, **overrides) -> Llama:
    model = Llama(get_config("tiny", **overrides), rngs=nnx.Rngs(seed))
    # Non-trivial norms, so a swapped or dropped norm shows in the logits.
    rng = np.random.RandomState(seed)
    for variable in (model.layers.attn_norm, model.layers.mlp_norm, model.final_norm):
        variable[...] = jnp.asarray(1.0 + 0.3 * rng.standard_normal(variable[...].shape), jnp.float32)
    return model


@pytest.mark.parametrize("tied", [False, True])
def test_save_hf_loads_in_transformers_without_warnings_and_same_logits(tmp_path, tied):
    model = random_harness_model(tie_embeddings=tied)
    tokenizer = tiny_tokenizer()
    save_hf(model, tmp_path, tokenizer=tokenizer)
    hf, info, messages = transformers_load(tmp_path)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert not [m for m in messages if "weight" in m.lower() or "key" in m.lower()], messages
    assert hf.config.tie_word_embeddings == tied
    tokens = random_tokens(512)
    np.testing.assert_array_less(np.abs(np.asarray(model(jnp.asarray(tokens))) - hf_logits(hf, tokens)).max(), 1e-4)
    loaded_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert loaded_tok.encode("Hello there 42", add_special_tokens=False) == tokenizer.encode("Hello there 42")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["eos_token_id"] == tokenizer.eos_id and config["torch_dtype"] == "float32"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_hf_harness_hf_round_trip_is_bitwise(tmp_path, dtype):
    hf = make_hf_model(**CASES["gqa-untied-odd-vocab-theta"]).to(getattr(torch, dtype))
    hf.save_pretrained(tmp_path / "in")
    model = load_hf(tmp_path / "in", dtype=dtype)
    save_hf(model, tmp_path / "out")
    before, after = tensors_of(tmp_path / "in"), tensors_of(tmp_path / "out")
    assert set(before) == set(after)
    for name in before:
        assert after[name].dtype == before[name].dtype, name
        np.testing.assert_array_equal(after[name].view(np.uint8), before[name].view(np.uint8), err_msg=name)


def test_save_hf_shards_with_index(tmp_path):
    model = random_harness_model()
    save_hf(model, tmp_path, max_shard_bytes=200_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and set(index["weight_map"].values()) == {s.name for s in shards}
    assert index["metadata"]["total_size"] == model.config.num_params() * 4
    for shard in shards:  # no shard over the limit unless it holds a single bigger tensor
        with safe_open(str(shard), framework="numpy") as f:
            assert len(list(f.keys())) == 1 or shard.stat().st_size <= 200_000 + 4096
    hf, info, _ = transformers_load(tmp_path)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    reloaded = load_hf(tmp_path)
    tokens = random_tokens(512)
    np.testing.assert_array_equal(np.asarray(reloaded(jnp.asarray(tokens))), np.asarray(model(jnp.asarray(tokens))))


def test_save_hf_merges_lora_without_changing_the_model(tmp_path):
    from harness.model.peft import LoraConfig, apply_lora

    model = random_harness_model()
    apply_lora(model, LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "down")), rngs=nnx.Rngs(1))
    rng = np.random.RandomState(0)
    for name in ("wq", "wv", "w_down"):  # B starts at zero; make the adapters matter
        b = getattr(model.layers, f"lora_b_{name}")
        b[...] = jnp.asarray(0.05 * rng.standard_normal(b[...].shape), jnp.float32)
    tokens = random_tokens(512)
    expected = np.asarray(model(jnp.asarray(tokens)))
    save_hf(model, tmp_path)
    assert hasattr(model.layers, "lora_a_wq")  # the caller's model still has its adapters
    hf, info, _ = transformers_load(tmp_path)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    np.testing.assert_array_less(np.abs(hf_logits(hf, tokens) - expected).max(), 1e-4)


def checkpoint(tmp_path, **case):
    hf = make_hf_model(**{**CASES["gqa-untied-odd-vocab-theta"], **case})
    hf.save_pretrained(tmp_path)
    return tmp_path


def rewrite(directory, transform):
    """Rewrite model.safetensors with ``transform(dict of tensors)``."""
    from safetensors.numpy import save_file

    tensors = transform(tensors_of(directory))
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def test_missing_tensor_is_named(tmp_path):
    directory = checkpoint(tmp_path)
    rewrite(directory, lambda t: {k: v for k, v in t.items() if k != "model.layers.1.mlp.up_proj.weight"})
    with pytest.raises(CheckpointError, match=r"missing tensor model\.layers\.1\.mlp\.up_proj\.weight"):
        load_hf(directory)


def test_wrong_shape_is_named(tmp_path):
    directory = checkpoint(tmp_path)
    rewrite(directory, lambda t: {**t, "model.layers.0.self_attn.k_proj.weight": np.zeros((16, 64), np.float32)})
    with pytest.raises(CheckpointError, match=r"k_proj\.weight has shape \[16, 64\], the config needs \[32, 64\]"):
        load_hf(directory)


def test_unexpected_tensor_is_named(tmp_path):
    directory = checkpoint(tmp_path)
    rewrite(directory, lambda t: {**t, "model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)})
    with pytest.raises(CheckpointError, match=r"unexpected tensor model\.layers\.0\.self_attn\.q_proj\.bias"):
        load_hf(directory)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"model_type": "mistral"}, "model_type"),
        ({"architectures": ["MistralForCausalLM"]}, "architectures"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"attention_bias": True}, "attention_bias"),
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 5e5}}, "rope_parameters"),
    ],
)
def test_other_architecture_config_names_the_field(tmp_path, change, field):
    directory = checkpoint(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=f"config.json: field '{field}'"):
        load_hf(directory)


def test_index_naming_a_missing_shard_fails(tmp_path):
    hf = make_hf_model(**CASES["mha-tied"])
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    next(iter(sorted(tmp_path.glob("model-*.safetensors")))).unlink()
    with pytest.raises(CheckpointError, match="lists shard model-00001"):
        load_hf(tmp_path)


def test_streaming_reader_blocks_match_reference(tmp_path):
    hf = make_hf_model(**CASES["mha-tied"]).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    reference = tensors_of(tmp_path)
    with SafetensorsReader([tmp_path / "model.safetensors"]) as reader:
        name = "model.layers.0.mlp.down_proj.weight"
        np.testing.assert_array_equal(reader.read(name, slice(3, 40), slice(5, 70)), reference[name][3:40, 5:70])
        np.testing.assert_array_equal(reader.read("model.norm.weight", slice(8, 24)), reference["model.norm.weight"][8:24])


def test_load_model_specs(tmp_path):
    plain, tok = load_model("tiny", seed=3)
    assert tok is None
    sharded, _ = load_model("tiny", seed=3, mesh=make_mesh({"data": 1, "fsdp": 4, "tensor": 2}))
    assert tuple(sharded.layers.w_up[...].sharding.spec) == (None, "fsdp", "tensor")
    np.testing.assert_allclose(np.asarray(sharded.layers.w_up[...]), np.asarray(plain.layers.w_up[...]), atol=1e-7, rtol=0)
    direct = Llama(get_config("tiny"), rngs=nnx.Rngs(3))
    np.testing.assert_array_equal(np.asarray(plain.layers.wq[...]), np.asarray(direct.layers.wq[...]))
    save_hf(plain, tmp_path / "hf", tokenizer=tiny_tokenizer())
    for spec in (f"hf:{tmp_path / 'hf'}", str(tmp_path / "hf")):
        model, tokenizer = load_model(spec)
        assert tokenizer is not None and tokenizer.vocab_size == tiny_tokenizer().vocab_size
        np.testing.assert_array_equal(np.asarray(model.embed[...]), np.asarray(plain.embed[...]))
    with pytest.raises(ConfigError, match="expected a preset"):
        load_model("no-such-model")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(f"hf:{tmp_path}")


def test_convert_command(tmp_path, capsys):
    source = checkpoint(tmp_path / "src")
    cli_main(["convert", f"hf:{source}", str(tmp_path / "dst"), "--dtype", "bfloat16", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["dtype"] == "bfloat16" and "model.safetensors" in summary["files"]
    hf, info, _ = transformers_load(tmp_path / "dst")
    assert hf.dtype == torch.bfloat16 and not info["missing_keys"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["convert", f"hf:{source}", str(tmp_path / "dst")])  # not empty, no --overwrite
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "dst")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["convert", f"hf:{tmp_path / 'nowhere'}", str(tmp_path / "dst")])
    assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err
