"""LLaMA in Flax NNX: RMSNorm, RoPE (Hugging Face layout), grouped-query attention, SwiGLU.

The decoder layers are one stacked module whose parameters carry a leading ``layers`` axis and
are applied with ``jax.lax.scan``, so compile time does not grow with depth. Every parameter is an
``nnx.Param`` whose metadata ``axes`` holds its logical axis names; ``harness.model.sharding``
maps those names onto the ``data x fsdp x tensor`` mesh.

Weight layout (input dimension first, so ``x @ w`` needs no transpose):

==============  ==========================  ==========================================
parameter       shape                       logical axes
==============  ==========================  ==========================================
embed           [vocab, d]                  (vocab, embed)
layers.wq       [L, d, heads, head_dim]     (layers, embed, heads, head_dim)
layers.wk/wv    [L, d, kv_heads, head_dim]  (layers, embed, kv_heads, head_dim)
layers.wo       [L, heads, head_dim, d]     (layers, heads, head_dim, embed)
layers.w_gate   [L, d, mlp]                 (layers, embed, mlp)   (also w_up)
layers.w_down   [L, mlp, d]                 (layers, mlp, embed)
layers.*_norm   [L, d]                      (layers, norm)
final_norm      [d]                         (norm,)
lm_head         [d, vocab]                  (embed, vocab)   (absent when embeddings are tied)
==============  ==========================  ==========================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from harness.errors import ConfigError
from harness.model import attention
from harness.model.sharding import constrain

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = ("xla", "cudnn")


@dataclass(frozen=True)
class LlamaConfig:
    """Shape and numerics of a LLaMA-family decoder."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    head_dim: int | None = None
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    remat: str = "none"
    attention_impl: str = "xla"

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}"
            )
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"remat={self.remat!r}: expected one of {REMAT_POLICIES}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ConfigError(f"attention_impl={self.attention_impl!r}: expected one of {ATTENTION_IMPLS}")
        for name in ("param_dtype", "compute_dtype"):
            try:
                jnp.dtype(getattr(self, name))
            except TypeError as exc:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not a dtype") from exc

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def replace(self, **changes: Any) -> "LlamaConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count (embedding and head included)."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.dim_per_head
        attn = d * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
        per_layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_embeddings else d * self.vocab_size
        return self.vocab_size * d + self.num_layers * per_layer + d + head

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 x (non-embedding matmul params) + 12 x L x d_attn x seq.

        The convention of the PaLM paper (appendix B) as used by MaxText and nanoGPT: forward and
        backward of every matmul weight (the LM head included, the embedding lookup not) plus the
        attention score and value matmuls, counted over the full (non-causal) sequence.
        """
        matmul_params = self.num_params() - self.vocab_size * self.hidden_size
        if self.tie_embeddings:  # the tied embedding still does the LM-head matmul
            matmul_params += self.vocab_size * self.hidden_size
        attn = 12 * self.num_layers * self.num_heads * self.dim_per_head * seq_len
        return 6.0 * matmul_params + attn


PRESETS: dict[str, LlamaConfig] = {
    # A few thousand parameters' worth of LLaMA for tests: GQA, untied head, odd-ish vocab.
    "tiny": LlamaConfig(
        vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=128, rope_theta=10000.0, norm_eps=1e-5, max_seq_len=512,
    ),
    # HuggingFaceTB/SmolLM2-135M(-Instruct): config.json of the published checkpoint.
    "smollm2-135m": LlamaConfig(
        vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3,
        intermediate_size=1536, rope_theta=100000.0, norm_eps=1e-5, max_seq_len=8192,
        tie_embeddings=True,
    ),
    # LLaMA-1 (Touvron et al. 2023, table 2) and LLaMA-2 as published on the hub.
    "llama-7b": LlamaConfig(
        vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32,
        intermediate_size=11008, rope_theta=10000.0, norm_eps=1e-6, max_seq_len=2048,
    ),
    "llama-13b": LlamaConfig(
        vocab_size=32000, hidden_size=5120, num_layers=40, num_heads=40, num_kv_heads=40,
        intermediate_size=13824, rope_theta=10000.0, norm_eps=1e-6, max_seq_len=2048,
    ),
    "llama2-7b": LlamaConfig(
        vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32,
        intermediate_size=11008, rope_theta=10000.0, norm_eps=1e-5, max_seq_len=4096,
    ),
    "llama2-13b": LlamaConfig(
        vocab_size=32000, hidden_size=5120, num_layers=40, num_heads=40, num_kv_heads=40,
        intermediate_size=13824, rope_theta=10000.0, norm_eps=1e-5, max_seq_len=4096,
    ),
}


def get_config(name: str, **overrides: Any) -> LlamaConfig:
    """A named preset, optionally with fields replaced (e.g. ``compute_dtype="bfloat16"``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], dtype, scale: float) -> nnx.Param:
    key = rngs.params()
    if isinstance(key, jax.core.Tracer):  # under jit / eval_shape (sharded or abstract init)
        value = scale * jax.random.normal(key, shape, dtype=jnp.float32)
    else:
        # Eagerly, jax.random.normal compiles once per distinct shape (~0.4 s each on CPU);
        # numpy seeded from the same key is deterministic and costs no compilation.
        seed = np.asarray(jax.random.key_data(key)).astype(np.uint32).tolist()
        value = scale * np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    return nnx.Param(jnp.asarray(value, dtype=dtype), axes=axes)


def _ones(shape: tuple[int, ...], axes: tuple[str, ...], dtype) -> nnx.Param:
    return nnx.Param(jnp.ones(shape, dtype), axes=axes)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm computed in float32, as Hugging Face's LlamaRMSNorm does."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (scale.astype(jnp.float32) * normed).astype(x.dtype)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables [B, L, head_dim] for integer positions, Hugging Face (rotate-half) layout."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [B, L, H, hd] by the tables [B, L, hd] (rotate_half convention)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = x.astype(jnp.float32) * cos[:, :, None, :] + rotated.astype(jnp.float32) * sin[:, :, None, :]
    return out.astype(x.dtype)


class DecoderStack(nnx.Module):
    """All decoder layers as stacked parameters, applied by a scan over the ``layers`` axis.

    Optional LoRA parameters (added by ``harness.model.peft``) live on this module as
    ``lora_a_<target>`` / ``lora_b_<target>`` and are picked up by name in ``__call__``.
    """

    PROJECTIONS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        c = config
        n, d, f, hd = c.num_layers, c.hidden_size, c.intermediate_size, c.dim_per_head
        dt = jnp.dtype(c.param_dtype)
        std = 0.02
        self.wq = _param(rngs, (n, d, c.num_heads, hd), ("layers", "embed", "heads", "head_dim"), dt, std)
        self.wk = _param(rngs, (n, d, c.num_kv_heads, hd), ("layers", "embed", "kv_heads", "head_dim"), dt, std)
        self.wv = _param(rngs, (n, d, c.num_kv_heads, hd), ("layers", "embed", "kv_heads", "head_dim"), dt, std)
        self.wo = _param(rngs, (n, c.num_heads, hd, d), ("layers", "heads", "head_dim", "embed"), dt, std)
        self.w_gate = _param(rngs, (n, d, f), ("layers", "embed", "mlp"), dt, std)
        self.w_up = _param(rngs, (n, d, f), ("layers", "embed", "mlp"), dt, std)
        self.w_down = _param(rngs, (n, f, d), ("layers", "mlp", "embed"), dt, std)
        self.attn_norm = _ones((n, d), ("layers", "norm"), dt)
        self.mlp_norm = _ones((n, d), ("layers", "norm"), dt)
        self.config = config
        self.lora_scale = 0.0  # set by harness.model.peft.apply_lora
        self.lora_dropout = 0.0  # dropout on the adapters' input only (PEFT's convention)

    def layer_weights(self) -> dict[str, jax.Array]:
        """The per-layer arrays handed to the scan body (stacked on axis 0)."""
        names = (*self.PROJECTIONS, "attn_norm", "mlp_norm")
        weights = {name: getattr(self, name)[...] for name in names}
        for name in self.PROJECTIONS:
            if hasattr(self, f"lora_a_{name}"):
                weights[f"lora_a_{name}"] = getattr(self, f"lora_a_{name}")[...]
                weights[f"lora_b_{name}"] = getattr(self, f"lora_b_{name}")[...]
        return weights

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        mask: jax.Array,
        cache: dict[str, jax.Array] | None = None,
        cache_index: jax.Array | None = None,
        dropout_key: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
        c = self.config
        cdt = jnp.dtype(c.compute_dtype)
        lora_scale = self.lora_scale
        rate = self.lora_dropout if dropout_key is not None else 0.0

        def project(h, name, spec, weights):
            out = jnp.einsum(spec, h, weights[name].astype(cdt))
            if f"lora_a_{name}" in weights:
                a_spec, b_spec = lora_specs(spec)
                h_a = h
                if rate > 0.0:
                    index = DecoderStack.PROJECTIONS.index(name)
                    keep = jax.random.bernoulli(jax.random.fold_in(weights["dropout_key"], index), 1.0 - rate, h.shape)
                    h_a = jnp.where(keep, h / (1.0 - rate), 0.0).astype(h.dtype)
                low = jnp.einsum(a_spec, h_a, weights[f"lora_a_{name}"].astype(cdt))
                out = out + lora_scale * jnp.einsum(b_spec, low, weights[f"lora_b_{name}"].astype(cdt))
            return out

        # The stacked cache rides in the scan carry and is updated in place at [layer, :, index]:
        # as a scanned input/output it would be copied whole at every decode step.
        def body(carry, layer):
            h, cache_kv = carry
            weights, layer_index = layer
            normed = rms_norm(h, weights["attn_norm"], c.norm_eps)
            q = project(normed, "wq", "bld,dhk->blhk", weights)
            k = project(normed, "wk", "bld,dhk->blhk", weights)
            v = project(normed, "wv", "bld,dhk->blhk", weights)
            q = constrain(apply_rope(q, cos, sin), ("batch", "length", "act_heads", None))
            k = constrain(apply_rope(k, cos, sin), ("batch", "length", "act_kv_heads", None))
            v = constrain(v, ("batch", "length", "act_kv_heads", None))
            if cache_kv is not None:
                start = (layer_index, 0, cache_index, 0, 0)
                cache_k = jax.lax.dynamic_update_slice(cache_kv["k"], k[None].astype(cache_kv["k"].dtype), start)
                cache_v = jax.lax.dynamic_update_slice(cache_kv["v"], v[None].astype(cache_kv["v"].dtype), start)
                cache_kv = {"k": cache_k, "v": cache_v}
                k = jax.lax.dynamic_index_in_dim(cache_k, layer_index, 0, keepdims=False).astype(cdt)
                v = jax.lax.dynamic_index_in_dim(cache_v, layer_index, 0, keepdims=False).astype(cdt)
            attn = attention.attend(q, k, v, mask, impl=c.attention_impl)
            out = project(attn, "wo", "blhk,hkd->bld", weights)
            h = constrain(h + out.astype(h.dtype), ("batch", "length", "act_embed"))
            normed = rms_norm(h, weights["mlp_norm"], c.norm_eps)
            gate = project(normed, "w_gate", "bld,df->blf", weights)
            up = project(normed, "w_up", "bld,df->blf", weights)
            hidden = constrain(jax.nn.silu(gate) * up, ("batch", "length", "act_mlp"))
            down = project(hidden, "w_down", "blf,fd->bld", weights)
            h = constrain(h + down.astype(h.dtype), ("batch", "length", "act_embed"))
            return (h, cache_kv), None

        body = _remat(body, c.remat)
        weights = self.layer_weights()
        if rate > 0.0:
            weights["dropout_key"] = jax.random.split(dropout_key, c.num_layers)
        layer_indices = jnp.arange(c.num_layers, dtype=jnp.int32)
        (x, new_cache), _ = jax.lax.scan(body, (x, cache), (weights, layer_indices))
        return x, new_cache


def lora_specs(spec: str) -> tuple[str, str]:
    """einsum specs of LoRA's A and B for a base projection spec such as ``bld,dhk->blhk``.

    A maps the contracted input dims to the rank ``r`` (``bld,dr->blr``); B maps ``r`` to the
    base projection's output dims (``blr,rhk->blhk``), so A has the base weight's input shape and
    B its output shape, and both shard like it.
    """
    lhs, out = spec.split("->")
    x_spec, w_spec = lhs.split(",")
    contracted = "".join(ch for ch in w_spec if ch in x_spec)
    kept = "".join(ch for ch in x_spec if ch not in contracted)
    produced = "".join(ch for ch in w_spec if ch not in x_spec)
    return f"{x_spec},{contracted}r->{kept}r", f"{kept}r,r{produced}->{out}"


def _remat(body, policy: str):
    if policy == "none":
        return body
    policies = {
        "full": jax.checkpoint_policies.nothing_saveable,
        "dots": jax.checkpoint_policies.checkpoint_dots,
        "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }
    return jax.checkpoint(body, policy=policies[policy], prevent_cse=False)


class Llama(nnx.Module):
    """A LLaMA decoder: ``model(tokens, positions=None, segment_ids=None) -> logits [B, L, V]``.

    With ``cache=`` (from ``init_cache``) it returns ``(logits, cache)`` and writes the new keys
    and values at ``cache["index"]``; the prompt and generated tokens then attend to every valid
    earlier slot. Positions restart per segment, and attention never crosses a segment.
    """

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        c = config
        dt = jnp.dtype(c.param_dtype)
        self.config = config
        self.embed = _param(rngs, (c.vocab_size, c.hidden_size), ("vocab", "embed"), dt, 0.02)
        self.layers = DecoderStack(config, rngs=rngs)
        self.final_norm = _ones((c.hidden_size,), ("norm",), dt)
        if not c.tie_embeddings:
            self.lm_head = _param(rngs, (c.hidden_size, c.vocab_size), ("embed", "vocab"), dt, 0.02)

    def init_cache(self, batch: int, max_len: int, dtype: str | None = None) -> dict[str, jax.Array]:
        """An empty KV cache for ``batch`` rows of up to ``max_len`` tokens."""
        c = self.config
        dt = jnp.dtype(dtype or c.compute_dtype)
        shape = (c.num_layers, batch, max_len, c.num_kv_heads, c.dim_per_head)
        return {
            "k": jnp.zeros(shape, dt),
            "v": jnp.zeros(shape, dt),
            "positions": jnp.zeros((batch, max_len), jnp.int32),
            "segment_ids": jnp.zeros((batch, max_len), jnp.int32),  # 0 = empty slot
            "index": jnp.zeros((), jnp.int32),
        }

    def hidden_states(self, tokens, positions=None, segment_ids=None, cache=None, dropout_key=None):
        """Final normed hidden states [B, L, d] (and the updated cache when one is given).

        ``dropout_key`` turns on training-time LoRA dropout (when the adapters have a rate).
        """
        c = self.config
        batch, length = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        if segment_ids is None:
            segment_ids = jnp.ones((batch, length), jnp.int32)
        cdt = jnp.dtype(c.compute_dtype)
        x = jnp.take(self.embed[...], tokens, axis=0).astype(cdt)
        x = constrain(x, ("batch", "length", "act_embed"))
        cos, sin = rope_tables(positions, c.dim_per_head, c.rope_theta)

        layer_cache = None
        index = None
        if cache is None:
            mask = attention.make_mask(positions, segment_ids, positions, segment_ids)
        else:
            index = cache["index"]
            kv_positions = jax.lax.dynamic_update_slice_in_dim(cache["positions"], positions, index, axis=1)
            kv_segments = jax.lax.dynamic_update_slice_in_dim(cache["segment_ids"], segment_ids, index, axis=1)
            mask = attention.make_mask(positions, segment_ids, kv_positions, kv_segments)
            layer_cache = {"k": cache["k"], "v": cache["v"]}

        x, new_layer_cache = self.layers(
            x, cos, sin, mask, cache=layer_cache, cache_index=index, dropout_key=dropout_key
        )
        x = rms_norm(x, self.final_norm[...], c.norm_eps)
        if cache is None:
            return x, None
        new_cache = {
            "k": new_layer_cache["k"],
            "v": new_layer_cache["v"],
            "positions": kv_positions,
            "segment_ids": kv_segments,
            "index": index + length,
        }
        return x, new_cache

    def logits_from_hidden(self, x: jax.Array) -> jax.Array:
        """Project hidden states onto the vocabulary (float32 logits)."""
        cdt = jnp.dtype(self.config.compute_dtype)
        if self.config.tie_embeddings:
            head = self.embed[...].astype(cdt).T
        else:
            head = self.lm_head[...].astype(cdt)
        logits = jnp.einsum("bld,dv->blv", x, head, preferred_element_type=jnp.float32)
        return constrain(logits, ("batch", "length", "act_vocab"))

    def __call__(self, tokens, positions=None, segment_ids=None, cache=None, dropout_key=None):
        x, new_cache = self.hidden_states(tokens, positions, segment_ids, cache, dropout_key)
        logits = self.logits_from_hidden(x)
        if cache is None:
            return logits
        return logits, new_cache
