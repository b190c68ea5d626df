"""GGUF import: synthetic llama.cpp-layout files against transformers, and the embedded SmolLM2.

The synthetic files are written with the ``gguf`` package the way llama.cpp's converter writes
them (its q/k row permutation included), from a random transformers model, so the harness model
read back must give that model's logits. The embedded SmolLM2 GGUF is compared with transformers'
own GGUF loading of the same file (``from_pretrained(dir, gguf_file=name)``), loaded once.
"""

from __future__ import annotations

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from harness.errors import CheckpointError  # noqa: E402
from harness.model.assets import smollm2_gguf_path  # noqa: E402
from harness.model.convert import load_gguf  # noqa: E402
from harness.model.convert_gguf import unpermute_rows  # noqa: E402
from harness.model.loading import load_model  # noqa: E402

from test_model_parity import CASES, hf_logits, make_hf_model, random_tokens  # noqa: E402


def llama_cpp_permute(weights: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute, written out independently."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


_LAYER = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def write_gguf(path, hf, *, quant=None, arch="llama", drop=()):
    """A llama.cpp-style GGUF of ``hf`` (2-D tensors quantised with ``quant`` when given)."""
    c = hf.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    writer.add_rope_dimension_count(c.head_dim)
    for name, tensor in hf.state_dict().items():
        w = tensor.detach().float().numpy()
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            if c.tie_word_embeddings:
                continue
            gname = "output.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            gname = f"blk.{layer}.{_LAYER[rest.removesuffix('.weight')]}.weight"
            if rest.startswith("self_attn.q_proj"):
                w = llama_cpp_permute(w, c.num_attention_heads, c.num_attention_heads)
            elif rest.startswith("self_attn.k_proj"):
                w = llama_cpp_permute(w, c.num_attention_heads, c.num_key_value_heads)
        if gname in drop:
            continue
        if quant is not None and w.ndim == 2:
            writer.add_tensor(gname, gguf.quants.quantize(w, quant), raw_dtype=quant)
        else:
            writer.add_tensor(gname, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@settings(max_examples=25, deadline=None)
@given(heads=st.integers(1, 6), groups=st.integers(1, 3), half=st.integers(1, 4), cols=st.integers(1, 5))
def test_unpermute_inverts_llama_cpp_permute(heads, groups, half, cols):
    n_head = heads * groups
    rows = np.arange(heads * 2 * half * cols, dtype=np.float32).reshape(heads * 2 * half, cols)
    np.testing.assert_array_equal(unpermute_rows(llama_cpp_permute(rows, n_head, heads), heads), rows)


@pytest.mark.parametrize("quant", [None, gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F16])
@pytest.mark.parametrize("case", ["gqa-untied-odd-vocab-theta", "mha-tied"])
def test_synthetic_gguf_matches_transformers(tmp_path, case, quant):
    hf = make_hf_model(**CASES[case])
    if quant is not None:  # the reference holds exactly the values the file can represent
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if p.ndim == 2:
                    q = gguf.quants.quantize(p.detach().numpy(), quant)
                    p.copy_(torch.from_numpy(np.asarray(gguf.quants.dequantize(q, quant), np.float32)))
    model = load_gguf(write_gguf(tmp_path / "m.gguf", hf, quant=quant))
    assert model.config.tie_embeddings == hf.config.tie_word_embeddings
    assert model.config.num_kv_heads == hf.config.num_key_value_heads
    tokens = random_tokens(hf.config.vocab_size)
    np.testing.assert_array_less(np.abs(np.asarray(model(jnp.asarray(tokens))) - hf_logits(hf, tokens)).max(), 1e-4)


def test_gguf_of_another_architecture_names_the_field(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", make_hf_model(**CASES["mha-tied"]), arch="gpt2")
    with pytest.raises(CheckpointError, match="field 'general.architecture' is 'gpt2'"):
        load_gguf(path)


def test_gguf_missing_tensor_is_named(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", make_hf_model(**CASES["mha-tied"]), drop=("blk.1.ffn_up.weight",))
    with pytest.raises(CheckpointError, match=r"missing tensor model\.layers\.1\.mlp\.up_proj\.weight"):
        load_gguf(path)


@pytest.fixture(scope="module")
def smollm2():
    """(harness model, tokenizer, transformers model) of the embedded GGUF, loaded once."""
    model, tokenizer = load_model("smollm2-135m")
    path = smollm2_gguf_path()
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
    return model, tokenizer, reference


def test_smollm2_config_matches_transformers(smollm2):
    model, tokenizer, reference = smollm2
    c, r = model.config, reference.config
    assert (c.vocab_size, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.intermediate_size) == (
        r.vocab_size, r.hidden_size, r.num_hidden_layers, r.num_attention_heads, r.num_key_value_heads,
        r.intermediate_size)
    assert c.rope_theta == r.rope_parameters["rope_theta"] and c.norm_eps == r.rms_norm_eps
    assert c.tie_embeddings and r.tie_word_embeddings
    assert tokenizer is not None and tokenizer.vocab_size == c.vocab_size


def test_smollm2_logits_match_transformers_gguf_loading(smollm2):
    model, tokenizer, reference = smollm2
    text = ("<|im_start|>user\nWhat is the capital of France, and why do rivers bend?<|im_end|>\n"
            "<|im_start|>assistant\n")
    ids = np.asarray([tokenizer.encode(text)], np.int32)
    random_ids = random_tokens(model.config.vocab_size, shape=(1, 24))
    for tokens in (ids, random_ids):
        ours = np.asarray(model(jnp.asarray(tokens)))
        theirs = hf_logits(reference, tokens)
        np.testing.assert_array_less(np.abs(ours - theirs).max(), 1e-3)
        assert (ours[0, -1].argmax() == theirs[0, -1].argmax())
