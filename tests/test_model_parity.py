"""Logits parity of ``load_hf`` models with transformers' LlamaForCausalLM (PyTorch CPU, float32).

Each case builds a random HF model (norm weights randomised too, so they matter), saves it with
``save_pretrained`` and loads the directory with ``harness.model.convert.load_hf``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from harness.model.convert import load_hf  # noqa: E402
from harness.model.sharding import make_mesh  # noqa: E402

BASE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, rms_norm_eps=1e-5, max_position_embeddings=256)
CASES = {
    "gqa-untied-odd-vocab-theta": dict(vocab_size=501, num_attention_heads=4, num_key_value_heads=2,
                                       tie_word_embeddings=False, rope_theta=500000.0),
    "mha-tied": dict(vocab_size=512, num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    "gqa-tied-wide-heads": dict(vocab_size=320, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                                tie_word_embeddings=True, rope_theta=1000.0),
    "mqa-three-layers": dict(vocab_size=257, num_attention_heads=8, num_key_value_heads=1, num_hidden_layers=3,
                             tie_word_embeddings=False),
}


def make_hf_model(seed: int = 0, **overrides):
    """A random LlamaForCausalLM (float32, eval mode) with randomised RMSNorm weights."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**{**BASE, **overrides})
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.3 * torch.randn_like(param))
    return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()


def random_tokens(vocab: int, shape=(2, 19), seed: int = 1) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, vocab, shape).astype(np.int32)


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_hf_logits_match_transformers(case, tmp_path):
    hf = make_hf_model(**CASES[case])
    hf.save_pretrained(tmp_path)
    model = load_hf(tmp_path)
    assert model.config.vocab_size == hf.config.vocab_size
    assert model.config.tie_embeddings == hf.config.tie_word_embeddings
    assert model.config.rope_theta == hf.config.rope_parameters["rope_theta"]
    assert model.config.dim_per_head == hf.config.head_dim
    tokens = random_tokens(hf.config.vocab_size)
    ours = np.asarray(model(jnp.asarray(tokens)))
    np.testing.assert_array_less(np.abs(ours - hf_logits(hf, tokens)).max(), 1e-4)


def test_bfloat16_checkpoint_and_sharded_index(tmp_path):
    """bf16 tensors (no numpy dtype) read bit-exactly; several shards are found through the index."""
    hf = make_hf_model(**CASES["gqa-untied-odd-vocab-theta"]).to(torch.bfloat16)
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    model = load_hf(tmp_path)  # float32 parameters from bf16 values: exact
    reference = hf.float()
    tokens = random_tokens(hf.config.vocab_size)
    ours = np.asarray(model(jnp.asarray(tokens)))
    np.testing.assert_array_less(np.abs(ours - hf_logits(reference, tokens)).max(), 1e-4)
    embed = reference.model.embed_tokens.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(model.embed[...]), embed)


def test_bfloat16_parameters_keep_checkpoint_values(tmp_path):
    hf = make_hf_model(**CASES["mha-tied"]).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    model = load_hf(tmp_path, dtype="bfloat16")
    assert model.layers.wq[...].dtype == jnp.bfloat16
    q0 = hf.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()
    d, heads, hd = 64, 4, 16
    np.testing.assert_array_equal(np.asarray(model.layers.wq[...][1], np.float32), q0.T.reshape(d, heads, hd))


def test_sharded_load_equals_unsharded_forward(tmp_path):
    """load_hf(mesh=fsdp 4 x tensor 2) places shards directly and computes the same logits."""
    hf = make_hf_model(**{**CASES["gqa-untied-odd-vocab-theta"], "vocab_size": 512})
    hf.save_pretrained(tmp_path)
    mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    sharded = load_hf(tmp_path, mesh=mesh)
    plain = load_hf(tmp_path)
    wq = sharded.layers.wq[...]
    assert tuple(wq.sharding.spec) == (None, "fsdp", "tensor", None)
    assert len(wq.addressable_shards) == 8 and wq.addressable_shards[0].data.shape == (2, 16, 2, 16)
    np.testing.assert_array_equal(np.asarray(wq), np.asarray(plain.layers.wq[...]))
    tokens = random_tokens(512, shape=(8, 16))
    with jax.set_mesh(mesh):
        out = np.asarray(jax.jit(lambda t: sharded(t))(jnp.asarray(tokens)))
    expected = np.asarray(plain(jnp.asarray(tokens)))
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)
    np.testing.assert_array_less(np.abs(out - hf_logits(hf, tokens)).max(), 1e-4)


def test_packed_rows_equal_each_example_alone(tmp_path):
    hf = make_hf_model(**CASES["gqa-untied-odd-vocab-theta"])
    hf.save_pretrained(tmp_path)
    model = load_hf(tmp_path)
    first, second = random_tokens(501, (1, 11), seed=2), random_tokens(501, (1, 8), seed=3)
    packed = np.concatenate([first, second, np.zeros((1, 3), np.int32)], axis=1)
    segments = np.array([[1] * 11 + [2] * 8 + [0] * 3], np.int32)
    positions = np.array([list(range(11)) + list(range(8)) + [0] * 3], np.int32)
    logits = np.asarray(model(jnp.asarray(packed), jnp.asarray(positions), jnp.asarray(segments)))
    np.testing.assert_allclose(logits[:, :11], hf_logits(hf, first), atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits[:, 11:19], hf_logits(hf, second), atol=1e-4, rtol=0)
