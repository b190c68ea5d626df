"""GGUF (llama.cpp) LLaMA files in: ``load_gguf``.

Read with the ``gguf`` package (no torch). Each tensor is dequantised with
``gguf.quants.dequantize`` (Q4_0, Q4_1, Q5_*, Q8_0, K-quants, F16, BF16, F32...) and renamed to
its Hugging Face name, then the model is filled by the same code as ``load_hf``.

llama.cpp's converter permutes the rows of the q and k projections so that RoPE rotates adjacent
pairs (GPT-J style) instead of the two halves of each head (the Hugging Face layout this model
uses). Within each head it interleaves the two halves: row ``(h, i, j)`` of a head split into
``[2, head_dim/2]`` moves to ``(h, j, i)``. Reading undoes that by viewing the rows as
``[heads, head_dim/2, 2]`` and swapping the last two axes, as transformers' GGUF loader does.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from harness.errors import CheckpointError
from harness.model.convert_weights import build_model
from harness.model.llama import Llama, LlamaConfig

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.([a-z_]+)\.weight")


def hf_name(gguf_name: str) -> str:
    """The Hugging Face name of a llama-architecture GGUF tensor (unknown names pass through)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_RE.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}.weight"
    return gguf_name


def field_value(reader, key: str, default=None):
    """A scalar, string or array metadata value of a GGUF file (``default`` when absent)."""
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def unpermute_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation of a ``[heads * head_dim, in]`` matrix."""
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def config_from_gguf(reader, where: str, *, dtype: str = "float32", compute_dtype: str | None = None) -> LlamaConfig:
    """The ``LlamaConfig`` of a GGUF file's metadata; another architecture fails naming the field."""
    arch = field_value(reader, "general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{where}: field 'general.architecture' is {arch!r}; only 'llama' is supported")

    def need(key: str):
        value = field_value(reader, f"llama.{key}")
        if value is None:
            raise CheckpointError(f"{where}: field 'llama.{key}' is missing")
        return value

    scaling = field_value(reader, "llama.rope.scaling.type")
    factor = field_value(reader, "llama.rope.scaling.factor", 1.0)
    if scaling not in (None, "none") and not (scaling == "linear" and factor == 1.0):
        raise CheckpointError(f"{where}: field 'llama.rope.scaling.type' is {scaling!r}; only unscaled RoPE is supported")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise CheckpointError(f"{where}: tensor rope_freqs.weight (llama3 RoPE scaling) is not supported")
    heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    vocab = field_value(reader, "llama.vocab_size")
    if vocab is None:
        tokens = field_value(reader, "tokenizer.ggml.tokens")
        vocab = len(tokens) if tokens is not None else None
    if vocab is None:
        raise CheckpointError(f"{where}: field 'llama.vocab_size' is missing (and there is no tokenizer.ggml.tokens)")
    head_dim = field_value(reader, "llama.attention.key_length", field_value(reader, "llama.rope.dimension_count"))
    try:
        return LlamaConfig(
            vocab_size=int(vocab),
            hidden_size=hidden,
            num_layers=int(need("block_count")),
            num_heads=heads,
            num_kv_heads=int(field_value(reader, "llama.attention.head_count_kv", heads)),
            intermediate_size=int(need("feed_forward_length")),
            rope_theta=float(field_value(reader, "llama.rope.freq_base", 10000.0)),
            norm_eps=float(field_value(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
            max_seq_len=int(field_value(reader, "llama.context_length", 2048)),
            tie_embeddings="output.weight" not in names,
            head_dim=None if head_dim in (None, hidden // heads) else int(head_dim),
            param_dtype=dtype,
            compute_dtype=compute_dtype or dtype,
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: {exc}") from None


class GGUFSource:
    """The tensors of a GGUF file under Hugging Face names, dequantised to float32 on read.

    The last dequantised tensor is kept, so the several device blocks of one parameter (or the
    rows of one tensor read in pieces) dequantise it once.
    """

    def __init__(self, reader, config: LlamaConfig):
        self.config = config
        self.tensors = {hf_name(t.name): t for t in reader.tensors}
        self._cached: tuple[str, np.ndarray] | None = None

    def names(self) -> set[str]:
        return set(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        # GGUF lists dimensions innermost first; numpy (and HF) order is the reverse.
        return tuple(int(n) for n in reversed(self.tensors[name].shape))

    def _full(self, name: str) -> np.ndarray:
        if self._cached is not None and self._cached[0] == name:
            return self._cached[1]
        from gguf.quants import dequantize

        tensor = self.tensors[name]
        weight = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(self.shape(name))
        if name.endswith("self_attn.q_proj.weight"):
            weight = unpermute_rows(weight, self.config.num_heads)
        elif name.endswith("self_attn.k_proj.weight"):
            weight = unpermute_rows(weight, self.config.num_kv_heads)
        self._cached = (name, weight)
        return weight

    def read(self, name: str, rows: slice | None = None, cols: slice | None = None) -> np.ndarray:
        weight = self._full(name)
        rows = rows or slice(None)
        return weight[rows] if cols is None or weight.ndim == 1 else weight[rows, cols]


def open_gguf(path: str | os.PathLike):
    """A ``gguf.GGUFReader`` for ``path``; a file that is not GGUF is a CheckpointError."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such GGUF file")
    try:
        return GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable GGUF file ({exc})") from None


def load_gguf(path: str | os.PathLike, *, dtype: str = "float32", mesh=None, compute_dtype: str | None = None) -> Llama:
    """A ``Llama`` from a llama-architecture GGUF file, dequantised to ``dtype``.

    Tensor names and shapes are checked against the metadata's config before any data is read;
    a missing, unexpected or wrongly shaped tensor raises CheckpointError naming it.
    """
    reader = open_gguf(path)
    config = config_from_gguf(reader, str(path), dtype=dtype, compute_dtype=compute_dtype)
    return build_model(config, GGUFSource(reader, config), str(path), mesh=mesh)
